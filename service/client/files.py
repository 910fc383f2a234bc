"""Files to upload, and the form field (modality) each goes in.

The server sniffs each file's type from its bytes, but which of the six fields a file is sent in is
the caller's choice: `thermal` and `image` both take PNGs, `depth` and `imu` both take `.npy`. So the
modality comes from the file's extension where that is unambiguous, and can always be given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The API's six upload fields, in the order the server sums them (openapi.yaml, Body_chat_chat_post).
MODALITIES = ("image", "audio", "video", "thermal", "depth", "imu")

EXTENSIONS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"), "image"),
    **dict.fromkeys((".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus"), "audio"),
    **dict.fromkeys((".mp4", ".mov", ".webm", ".mkv", ".m4v"), "video"),
    ".csv": "imu",
}
# Deliberately absent: `.npy` (a depth map or IMU samples), so it needs its modality named.


@dataclass(frozen=True)
class Attachment:
    """One file: its name (shown in errors, never trusted by the server), bytes, and field."""

    name: str
    data: bytes
    modality: str

    @classmethod
    def open(cls, path: str | os.PathLike[str], modality: str | None = None) -> Attachment:
        p = Path(path)
        return cls(p.name, p.read_bytes(), resolve_modality(p.name, modality))

    @classmethod
    def of(cls, name: str, data: bytes, modality: str | None = None) -> Attachment:
        return cls(name, data, resolve_modality(name, modality))


# What `files=` accepts: a path; (name, bytes); (name, bytes, modality); or an Attachment.
FileInput = str | os.PathLike[str] | tuple[str, bytes] | tuple[str, bytes, str] | Attachment


def resolve_modality(name: str, modality: str | None = None) -> str:
    if modality is not None:
        if modality not in MODALITIES:
            raise ValueError(f"{name}: unknown modality {modality!r} (one of {', '.join(MODALITIES)})")
        return modality
    suffix = Path(name).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    raise ValueError(f"{name}: cannot tell the modality from the extension; name one of {', '.join(MODALITIES)}")


def attachment(item: FileInput) -> Attachment:
    if isinstance(item, Attachment):
        return item
    if isinstance(item, tuple):
        name, data, *rest = item
        return Attachment.of(name, data, rest[0] if rest else None)
    return Attachment.open(item)


def multipart(files: list[Attachment]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx's `files=`: one part per file, in the field of its modality."""
    return [(f.modality, (f.name, f.data, "application/octet-stream")) for f in files]
