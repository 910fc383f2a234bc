"""Response bodies of the HTTP API (request bodies are multipart forms, declared on the routes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from service.core.session_store import SESSION_ID_PATTERN, MediaRecord, Session

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]

# Sampling parameters, bounded to what the engine accepts (vLLM's SamplingParams, a 64-bit seed):
# out of range is the caller's 422 naming the field, never a request the engine fails on. top_k's
# upper bound is the vocabulary, checked by the chat core.
MaxTokens = Annotated[int, Field(ge=1, le=2**31 - 1)]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=-1, le=2**31 - 1, description="top-k sampling (-1: off)")]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class MediaView(BaseModel):
    modality: str
    sha256: str
    bytes: int
    # Video-LLaMA, a video: whether its sound went into the prompt (false: it had none that could be
    # read, and was served as a video alone, as the original demo fell back); null otherwise.
    sound: bool | None = None

    @classmethod
    def of(cls, record: MediaRecord) -> MediaView:
        # Only Video-LLaMA's videos carry a timestamp sentence.
        sound = record.audio_track is not None if record.timestamps else None
        return cls(modality=record.modality, sha256=record.sha256, bytes=record.bytes, sound=sound)


class ChatResponse(BaseModel):
    session_id: str
    reply: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    token_ids: list[int] | None = None
    media: list[MediaView] = Field(default_factory=list, description="this turn's files, as they were served")


class TurnView(BaseModel):
    message: str
    reply: str
    finish_reason: str
    media: list[MediaView]
    created_at: float


# Labels are stored with the session for its lifetime, in the Redis every tenant shares: bounded
# (32 entries of at most 64 + 512 characters, about 18 KB).
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class SessionCreate(BaseModel):
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=32, description="your labels, returned as given"
    )


class SessionView(BaseModel):
    session_id: str
    created_at: float
    metadata: dict[str, str]
    turns: list[TurnView]
    model: str | None = Field(description="the served model whose conversation it is; null before its first turn")

    @classmethod
    def of(cls, session: Session) -> SessionView:
        # Never the raw bytes nor the soft prompts: a summary of each medium.
        turns = [
            TurnView(**turn.model_dump(exclude={"media"}), media=[MediaView.of(m) for m in turn.media])
            for turn in session.turns
        ]
        return cls(
            session_id=session.session_id,
            created_at=session.created_at,
            metadata=session.metadata,
            turns=turns,
            model=session.model,
        )


class Embedding(BaseModel):
    field: str  # the upload it came from, e.g. "audio[0]"
    modality: str
    sha256: str
    embedding: list[float]  # ImageBind's joint space, as PandaGPT's path computes it before projection


class EmbeddingsResponse(BaseModel):
    data: list[Embedding]
    dimensions: int


class Health(BaseModel):
    status: Literal["ok"]


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
