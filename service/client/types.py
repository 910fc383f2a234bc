"""Typed results, mirroring openapi.yaml's schemas. Plain dataclasses: the client needs no pydantic,
and each `from_json` reads only the fields the contract requires (others a newer server adds are
ignored, so an older client keeps working)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Usage:
        return cls(int(body["prompt_tokens"]), int(body["completion_tokens"]))


@dataclass(frozen=True)
class MediaView:
    modality: str
    sha256: str
    bytes: int
    sound: bool | None = None  # a Video-LLaMA video: whether its sound was heard

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MediaView:
        sound = body.get("sound")
        return cls(
            str(body["modality"]), str(body["sha256"]), int(body["bytes"]), None if sound is None else bool(sound)
        )


@dataclass(frozen=True)
class ChatReply:
    """ChatResponse: one turn's answer (the body of `/chat`, or of a stream's `done` event)."""

    session_id: str
    reply: str
    finish_reason: str  # "stop" | "length"
    usage: Usage
    token_ids: list[int] | None = None
    media: list[MediaView] = field(default_factory=list)  # this turn's files, as they were served

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ChatReply:
        ids = body.get("token_ids")
        return cls(
            str(body["session_id"]),
            str(body["reply"]),
            str(body["finish_reason"]),
            Usage.from_json(body["usage"]),
            None if ids is None else [int(i) for i in ids],
            [MediaView.from_json(m) for m in body.get("media") or []],
        )


@dataclass(frozen=True)
class Delta:
    """A streamed piece of the reply (`event: delta`)."""

    text: str
    token_ids: list[int] | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Delta:
        ids = body.get("token_ids")
        return cls(str(body.get("text", "")), None if ids is None else [int(i) for i in ids])


@dataclass(frozen=True)
class TurnView:
    message: str
    reply: str
    finish_reason: str
    created_at: float
    media: list[MediaView] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TurnView:
        media = [MediaView.from_json(m) for m in body.get("media") or []]
        created = float(body["created_at"])
        return cls(str(body["message"]), str(body["reply"]), str(body["finish_reason"]), created, media)


@dataclass(frozen=True)
class Session:
    """SessionView: a conversation as the server keeps it (never the media's bytes)."""

    session_id: str
    created_at: float
    metadata: dict[str, str]
    turns: list[TurnView]
    model: str | None = None  # the served model whose conversation it is

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Session:
        return cls(
            str(body["session_id"]),
            float(body["created_at"]),
            {str(k): str(v) for k, v in (body.get("metadata") or {}).items()},
            [TurnView.from_json(t) for t in body.get("turns") or []],
            None if body.get("model") is None else str(body["model"]),
        )


@dataclass(frozen=True)
class Embedding:
    field: str  # which upload: its form field and index, e.g. "image[0]"
    modality: str
    sha256: str
    embedding: list[float]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Embedding:
        vector = [float(x) for x in body["embedding"]]
        return cls(str(body["field"]), str(body["modality"]), str(body["sha256"]), vector)


@dataclass(frozen=True)
class Embeddings:
    data: list[Embedding]
    dimensions: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Embeddings:
        return cls([Embedding.from_json(e) for e in body["data"]], int(body["dimensions"]))


@dataclass(frozen=True)
class Model:
    id: str
    created: int
    owned_by: str = "pandaserve"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Model:
        return cls(str(body["id"]), int(body["created"]), str(body.get("owned_by") or "pandaserve"))
