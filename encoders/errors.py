"""Typed media errors. `field` names the upload (e.g. "image[1]") so the client knows which file failed."""

from __future__ import annotations


class MediaError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str]]:
        # Raised in a decode worker process and pickled back: rebuild from (field, problem).
        return type(self), (self.field, self.problem)


class MediaTooLarge(MediaError):
    """Bytes, pixels or duration over a configured limit."""

    @classmethod
    def bytes_over(cls, field: str, limit: int) -> MediaTooLarge:
        return cls(field, f"the file is larger than the limit of {limit} bytes")


class UnsupportedMediaType(MediaError):
    """The bytes are not a format this modality accepts."""


class InvalidMedia(MediaError):
    """The format is right but the content cannot be used (truncated, corrupt, empty)."""


class PoolFull(Exception):
    """The encoders' queues are full: the request is refused at once rather than queued without bound."""

    retry_after_s = 1
