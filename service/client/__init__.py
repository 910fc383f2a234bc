"""The Python client of PandaServe's REST API (openapi.yaml): `Client` (blocking) and `AsyncClient`.

It depends on httpx and the standard library only, and on nothing else of the server (a contract in
pyproject.toml keeps it so): an application imports it without torch, vLLM or the encoders.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key=KEY) as client:
        first = client.chat("What is in this image?", ["photo.jpg"], temperature=0)
        for delta in client.chat("And the colour?", session=first.session_id, stream=True):
            print(delta.text, end="", flush=True)
"""

from service.client.aio import AsyncChatStream, AsyncClient
from service.client.errors import PandaServeError
from service.client.files import MODALITIES, Attachment
from service.client.protocol import NO_RETRY, Retry
from service.client.sync import ChatStream, Client
from service.client.types import ChatReply, Delta, Embedding, Embeddings, MediaView, Model, Session, TurnView, Usage

__all__ = [
    "MODALITIES",
    "NO_RETRY",
    "AsyncChatStream",
    "AsyncClient",
    "Attachment",
    "ChatReply",
    "ChatStream",
    "Client",
    "Delta",
    "Embedding",
    "Embeddings",
    "MediaView",
    "Model",
    "PandaServeError",
    "Retry",
    "Session",
    "TurnView",
    "Usage",
]
