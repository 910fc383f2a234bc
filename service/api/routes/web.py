"""The web chat page: a few small files in service/api/static, served at `/` and `/ui/...`.

They are public (the page holds no data; the API calls it makes carry the key) and kept out of the
OpenAPI contract (they are not API). Bounded: a fixed list of files, read once into memory, so no
request names a path on disk. Cached: the page itself is revalidated on every load (`no-cache` with
an ETag), and it links its assets with their content's digest in the URL, so the browser keeps an
asset for a year and a new release is never mixed with an old script.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response

from service.errors import NotFound

STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# What the admission middleware lets through without a key.
PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})

# Nothing but this origin: no inline script or style, no frames, no plugins. Previews of the files a
# person attaches are blob: URLs made by the page itself.
CSP = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' blob:",
        "media-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class File:
    body: bytes
    media_type: str
    digest: str  # of the body: the ETag, and the version in the asset's URL

    @classmethod
    def of(cls, body: bytes, media_type: str) -> File:
        return cls(body, media_type, hashlib.sha256(body).hexdigest()[:16])


def load(static: Path = STATIC) -> tuple[File, dict[str, File]]:
    """The page, its links rewritten to carry each asset's digest, and the assets."""
    assets = {name: File.of((static / name).read_bytes(), kind) for name, kind in ASSETS.items()}
    page = (static / "index.html").read_text()
    for name, asset in assets.items():
        page = page.replace(f'"/ui/{name}"', f'"/ui/{name}?v={asset.digest}"')
    return File.of(page.encode(), "text/html; charset=utf-8"), assets


PAGE, FILES = load()
router = APIRouter(include_in_schema=False)


def serve(request: Request, file: File, cache: str) -> Response:
    headers = SECURITY_HEADERS | {"cache-control": cache, "etag": f'"{file.digest}"'}
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    return serve(request, PAGE, REVALIDATE)


@router.get("/ui/{name}")
async def asset(name: str, request: Request) -> Response:
    file = FILES.get(name)
    if file is None:  # only a keyed request gets here: the admission middleware lets PATHS alone through
        raise NotFound("there is no such file")
    # Only the URL the page links (the current digest) may be kept for good.
    return serve(request, file, IMMUTABLE if request.query_params.get("v") == file.digest else REVALIDATE)
