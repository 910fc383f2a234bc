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


class MediaTooCostly(MediaTooLarge):
    """Within every declared limit, but decoding it costs more than a bound allows: the decode deadline,
    the decode worker's memory cap, or the frames decoded to reach one sampled video frame."""


class DecoderLost(MediaError):
    """The decode worker died while decoding this file (killed from outside, e.g. by the OOM killer),
    with nothing to show the file caused it: 503, the client may retry. The worker is replaced."""

    retry_after_s = 1


class UnsupportedMediaType(MediaError):
    """The bytes are not a format this modality accepts."""


class InvalidMedia(MediaError):
    """The format is right but the content cannot be used (truncated, corrupt, empty)."""


class DecodersRebuilding(Exception):
    """A decode worker that died or overran is being replaced: the pool is not ready until it is back."""

    retry_after_s = 1


class PoolFull(Exception):
    """The encoders' queues are full: the request is refused at once rather than queued without bound."""

    retry_after_s = 1
