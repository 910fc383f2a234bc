"""POST /embeddings: ImageBind embeddings of uploaded files, without the LLM.

Retrieval users want ImageBind's joint space on its own, and it makes every modality's path
checkable from outside: the vectors are exactly what the chat path projects into the slot.
"""

from __future__ import annotations

from fastapi import APIRouter

from encoders.media import Embedder, MediaInput
from encoders.modalities import MODALITIES
from service.api.deps import ResourcesDep
from service.api.routes.chat import ERRORS
from service.api.schemas import Embedding, EmbeddingsResponse
from service.api.uploads import MediaUploads
from service.errors import Unprocessable

router = APIRouter(tags=["embeddings"])


async def embed(encoder: Embedder, media: list[MediaInput]) -> EmbeddingsResponse:
    if not media:
        raise Unprocessable(f"send at least one file in a modality field ({', '.join(MODALITIES)})")
    vectors = await encoder.encode(media)
    data = [
        Embedding(
            field=item.field,
            modality=item.modality,
            sha256=item.sha256,
            embedding=vector.tolist(),
        )
        for item, vector in zip(media, vectors, strict=True)
    ]
    return EmbeddingsResponse(data=data, dimensions=len(data[0].embedding))


@router.post("/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(resources: ResourcesDep, media: MediaUploads) -> EmbeddingsResponse:
    return await embed(resources.chat.encoder, media)  # the default model's: ImageBind's for PandaGPT
