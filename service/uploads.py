"""Multipart media uploads: one file field per modality, read under the configured limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, UploadFile

from encoders.errors import MediaTooLarge
from encoders.pool import MediaInput
from service.deps import SettingsDep
from service.errors import BadRequest


async def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    # Read one byte past the limit: enough to know it is too large without reading it all.
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise MediaTooLarge.bytes_over(field, limit)
    return data


async def media_uploads(
    settings: SettingsDep,
    image: Annotated[list[UploadFile] | None, File(description="PNG, JPEG, WebP, BMP or TIFF")] = None,
    audio: Annotated[
        list[UploadFile] | None, File(description="WAV, FLAC, OGG, MP3, M4A, WebM, or a video's audio track")
    ] = None,
    video: Annotated[list[UploadFile] | None, File(description="MP4, MOV, WebM or MKV (frames only)")] = None,
    thermal: Annotated[list[UploadFile] | None, File(description="a thermal image in any image format")] = None,
    depth: Annotated[
        list[UploadFile] | None, File(description="16-bit PNG (mm), .npy (m or mm), or 8-bit disparity")
    ] = None,
    imu: Annotated[
        list[UploadFile] | None, File(description=".npy or CSV, 6 channels: accelerometer xyz, gyroscope xyz")
    ] = None,
) -> list[MediaInput]:
    """Every uploaded file in PandaGPT's slot order: image, audio, video, thermal, depth, imu."""
    fields = {"image": image, "audio": audio, "video": video, "thermal": thermal, "depth": depth, "imu": imu}
    media = []
    for modality, files in fields.items():
        files = files or []
        if len(files) > settings.max_files_per_modality:
            raise BadRequest(f"at most {settings.max_files_per_modality} {modality} files per request", param=modality)
        for i, upload in enumerate(files):
            field = f"{modality}[{i}]"
            media.append(MediaInput(modality, await read_upload(upload, field, settings.max_file_bytes), field))
    return media


MediaUploads = Annotated[list[MediaInput], Depends(media_uploads)]
