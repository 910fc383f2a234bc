"""Multipart media uploads: one repeatable file field per modality of the registry, read under the limits."""

from __future__ import annotations

import inspect
from typing import Annotated

from fastapi import Depends, File, UploadFile
from starlette.datastructures import UploadFile as StarletteUploadFile

from encoders.errors import MediaTooLarge
from encoders.media import MediaInput
from encoders.modalities import MODALITIES
from service.api.deps import LimitsDep, SettingsDep, TenantDep


async def read_upload(upload: StarletteUploadFile, field: str, limit: int) -> bytes:
    # Read one byte past the limit: enough to know it is too large without reading it all.
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise MediaTooLarge.bytes_over(field, limit)
    return data


async def media_uploads(
    settings: SettingsDep, limits: LimitsDep, tenant: TenantDep, **files: list[UploadFile] | None
) -> list[MediaInput]:
    """Every uploaded file, modality by modality in the registry's order, as the tenant's."""
    media = []
    for modality, uploads in files.items():
        uploads = uploads or []
        limits.check_file_count(modality, len(uploads), modality)
        for i, upload in enumerate(uploads):
            field = f"{modality}[{i}]"
            data = await read_upload(upload, field, settings.max_file_bytes)
            media.append(MediaInput(modality, data, field, tenant))
    return media


# The signature FastAPI reads: a file field per modality, from the registry.
media_uploads.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("settings", inspect.Parameter.KEYWORD_ONLY, annotation=SettingsDep),
        inspect.Parameter("limits", inspect.Parameter.KEYWORD_ONLY, annotation=LimitsDep),
        inspect.Parameter("tenant", inspect.Parameter.KEYWORD_ONLY, annotation=TenantDep),
        *(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[list[UploadFile] | None, File(description=modality.accepts)],
            )
            for name, modality in MODALITIES.items()
        ),
    ]
)

MediaUploads = Annotated[list[MediaInput], Depends(media_uploads)]
