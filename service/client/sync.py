"""The blocking client. Everything but sending, sleeping and reading is in service/client/protocol.py,
shared with the async client."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Literal, overload

import httpx

from service.client.errors import PandaServeError
from service.client.files import FileInput
from service.client.protocol import Call, Retry, TurnReader, UploadProgress, build, chat_call, embed_call, error
from service.client.sse import iter_events
from service.client.types import ChatReply, Delta, Embeddings, Model, Session

DEFAULT_URL = "http://127.0.0.1:8000"
# Generous reads: a non-streamed turn answers only when its last token is out.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


def auth_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    return ({"Authorization": f"Bearer {api_key}"} if api_key else {}) | dict(headers or {})


class ChatStream:
    """A streamed turn: iterate it for its `Delta`s; `reply` is the whole turn once it is done.
    The connection is closed when the stream ends, when `close()` is called, or on leaving `with`;
    a stream closed early abandons the turn (the server aborts it and commits nothing)."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response, self._url = response, url
        self._reader = TurnReader()
        # One generator for the stream's life: iterating again, or asking for `reply`, goes on from
        # where the last loop stopped (the response can be read only once).
        self._deltas = self._read()

    def _read(self) -> Generator[Delta, None, None]:
        try:
            for event in iter_events(self._response.iter_lines()):
                delta = self._reader.feed(event)
                if delta is not None:
                    yield delta
                if self._reader.result is not None:
                    return
            self._reader.finish()
        except httpx.TransportError as exc:
            raise PandaServeError.from_transport(exc, self._url) from exc
        finally:
            self._response.close()

    def __iter__(self) -> Iterator[Delta]:
        return self._deltas

    @property
    def reply(self) -> ChatReply:
        """The finished turn (what /chat answers unstreamed); reads the rest of the stream if need be."""
        for _ in self._deltas:
            pass
        return self._reader.finish()

    def close(self) -> None:
        self._deltas.close()
        self._response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """PandaServe over HTTP: `chat`, `embed`, sessions and models. Errors raise PandaServeError;
    429 and 503 are retried as `retry` says (Retry-After honoured)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        self._http = httpx.Client(
            base_url=self.url, headers=auth_headers(api_key, headers), timeout=timeout, transport=transport
        )

    def _send(self, call: Call, stream: bool = False, on_upload: UploadProgress | None = None) -> httpx.Response:
        """The response to `call`, retried while the retry rule allows; its body read unless `stream`."""
        attempt = 0
        while True:
            try:
                response = self._http.send(build(self._http, call, on_upload), stream=True)
            except httpx.TransportError as exc:
                raise PandaServeError.from_transport(exc, self.url) from exc
            if response.is_success and stream:
                return response
            try:
                response.read()
            except httpx.TransportError as exc:
                raise PandaServeError.from_transport(exc, self.url) from exc
            finally:
                response.close()
            if response.is_success:
                return response
            wait = self.retry.wait_s(response, attempt)
            if wait is None:
                raise error(response)
            time.sleep(wait)
            attempt += 1

    @overload
    def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> ChatReply: ...

    @overload
    def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> ChatStream: ...

    def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> ChatReply | ChatStream:
        """One turn: a new session unless `session` names one. With `stream=True` a ChatStream, returned
        once the server has accepted the turn (its refusals raise here, as plain HTTP errors)."""
        sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
        call = chat_call(message, files, session, stream, sampling, return_token_ids)
        response = self._send(call, stream, on_upload)
        return ChatStream(response, self.url) if stream else ChatReply.from_json(response.json())

    def embed(self, files: Iterable[FileInput], on_upload: UploadProgress | None = None) -> Embeddings:
        """ImageBind's embedding of each file, in the order of the fields (image, audio, ...), then sent."""
        return Embeddings.from_json(self._send(embed_call(files), on_upload=on_upload).json())

    def create_session(self, metadata: Mapping[str, str] | None = None) -> Session:
        return Session.from_json(self._send(Call("POST", "/sessions", json={"metadata": dict(metadata or {})})).json())

    def get_session(self, session_id: str) -> Session:
        return Session.from_json(self._send(Call("GET", f"/sessions/{session_id}")).json())

    def delete_session(self, session_id: str) -> None:
        self._send(Call("DELETE", f"/sessions/{session_id}"))

    def models(self) -> list[Model]:
        return [Model.from_json(m) for m in self._send(Call("GET", "/v1/models")).json()["data"]]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
