"""The encoder service (`pandaserve encoders serve`): the bundle's batched encoder pool (decode
workers, batches across every API replica's requests, the embedding cache in Redis) behind HTTP, so
API replicas load no encoders of their own.

POST /v1/encode: multipart, one part per file, named by its modality; a part's filename names the
file in errors (API replicas send their own field names, e.g. `image[0]`, `messages[0].content[1]`).
Answers, in the order sent, each file's soft prompt ([n, hidden]: what the LLM's media slot holds,
projected here; for a Video-LLaMA video also its audio track's and its timestamp sentence) or, with
`?output=embedding`, its ImageBind embedding ([1024], for /embeddings): shape + float32
little-endian values, base64. Errors: the API's envelope (413/415/422 naming the file, 503
`overloaded_error` when the pool is full).
No API keys: like the engine, it is reached only by the API replicas (a NetworkPolicy's job).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import torch
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from encoders.media import TENANT_HEADER, Encoder, MediaInput, SoftPrompt, tensor_to_base64
from encoders.modalities import MODALITIES
from service.api.error_handlers import install_error_handlers
from service.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from service.api.schemas import Health
from service.api.uploads import read_upload
from service.bundle import load_bundle
from service.core.embedding_store import RedisEmbeddingStore
from service.core.session_store import connect_redis
from service.errors import BadRequest, NotReady
from service.metrics import Metrics
from service.resources import start_encoders
from service.settings import Settings


class EncodedTensor(BaseModel):
    shape: list[int]
    data: str  # float32 little-endian, row-major, base64

    @classmethod
    def of(cls, tensor: torch.Tensor) -> EncodedTensor:
        return cls(shape=list(tensor.shape), data=tensor_to_base64(tensor))


class EncodedFile(EncodedTensor):
    field: str
    modality: str
    sha256: str
    # Video-LLaMA, a video (encoders.media.SoftPrompt): its audio track's vectors and its timestamp sentence.
    audio_track: EncodedTensor | None = None
    timestamps: str = ""


class Encoded(BaseModel):
    data: list[EncodedFile]


async def read_media(request: Request, settings: Settings) -> list[MediaInput]:
    """The request's files, as its tenant's (the API replica says whose in a header)."""
    media = []
    tenant = request.headers.get(TENANT_HEADER)
    max_files = settings.max_files_per_modality * len(MODALITIES)
    async with request.form(max_files=max_files, max_fields=0) as form:  # closes the spooled files
        for i, (modality, upload) in enumerate(form.multi_items()):
            if modality not in MODALITIES or isinstance(upload, str):
                raise BadRequest(f"part {i}: expected a file in a part named by its modality ({', '.join(MODALITIES)})")
            field = upload.filename or f"{modality}[{i}]"
            data = await read_upload(upload, field, settings.max_file_bytes)
            media.append(MediaInput(modality, data, field, tenant))
    return media


def create_encoder_app(settings: Settings, encoder: Encoder | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = None
        if app.state.encoder is None:
            if settings.bundle is None:
                raise NotReady("no model bundle configured: set PANDASERVE_BUNDLE or pass --bundle")
            client = connect_redis(settings.redis_url) if settings.redis_url else None
            shared = RedisEmbeddingStore(client, settings.embedding_cache_ttl_s) if client else None
            app.state.encoder = await start_encoders(load_bundle(settings.bundle), settings, metrics, shared)
        try:
            yield
        finally:
            await app.state.encoder.close()
            if client is not None:
                await client.aclose()

    app = FastAPI(title="PandaServe encoders", lifespan=lifespan)
    app.state.encoder = encoder
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)

    @app.post("/v1/encode", response_model=Encoded)
    async def encode(request: Request, output: Literal["soft_prompt", "embedding"] = "soft_prompt") -> Encoded:
        media = await read_media(request, settings)
        encoder: Encoder = app.state.encoder
        if output == "embedding":
            encoded = [SoftPrompt(t) for t in await encoder.encode(media)]
        else:
            encoded = await encoder.soft_prompts(media)
        data = [
            EncodedFile(
                field=m.field,
                modality=m.modality,
                sha256=m.sha256,
                **EncodedTensor.of(e.vectors).model_dump(),
                audio_track=None if e.audio_track is None else EncodedTensor.of(e.audio_track),
                timestamps=e.timestamps,
            )
            for m, e in zip(media, encoded, strict=True)
        ]
        return Encoded(data=data)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    async def readyz() -> Health:
        if app.state.encoder is None:
            raise NotReady("the encoders are starting")
        await app.state.encoder.check_health()
        return Health(status="ok")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=Metrics.CONTENT_TYPE)

    return app
