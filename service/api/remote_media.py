"""Media URLs of /v1/chat/completions content parts: `data:` URLs decoded, `http(s)://` URLs fetched.

A data: URL may be base64 or percent-encoded; its declared type must fit the part (see MIME_KINDS).
Remote fetching is off unless `PANDASERVE_REMOTE_MEDIA_HOSTS` names hosts (comma-separated). Then
only those hosts are fetched (exact host match, any port, case-insensitive), over http or https
only; redirects are not followed (a 3xx is an error: it could lead anywhere); connecting, each
read, and the whole fetch are bounded by `remote_media_timeout_s`; the body is streamed and dropped
as soon as it passes the size cap (`max_file_bytes`). Proxy settings from the environment are not
used: allow-listed hosts are reached directly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

import httpx

from encoders.errors import MediaTooLarge, UnsupportedMediaType
from service.errors import BadRequest

SCHEMES = ("http", "https")
# A data URL's declared type must fit the part; application/* (e.g. octet-stream) and no type fit all.
MIME_KINDS = {
    "image": {"image"},
    "audio": {"audio", "video"},  # a video's audio track is read too
    "video": {"video"},
    "thermal": {"image"},
    "depth": {"image"},
    "imu": {"text"},  # CSV
}
DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*),", re.IGNORECASE)


def decode_base64(data: str, field: str, limit: int) -> bytes:
    data = "".join(data.split())  # line breaks are common in base64
    if len(data) // 4 * 3 - 2 > limit:  # decoded size, before decoding
        raise MediaTooLarge.bytes_over(field, limit)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{field}: invalid base64 data ({exc})", param=field) from exc


def decode_data_url(url: str, modality: str, field: str, limit: int) -> bytes:
    match = DATA_URL.match(url)
    if match is None:
        raise BadRequest(f"{field}: malformed data URL (expected data:<type>;base64,<data>)", param=field)
    mime = match["type"].strip().lower()
    if mime and mime.split("/")[0] not in MIME_KINDS[modality] | {"application"}:
        raise UnsupportedMediaType(field, f"a data URL of type {mime!r} cannot be {modality}")
    payload = url[match.end() :]
    if match["params"].lower().endswith(";base64"):
        return decode_base64(payload, field, limit)
    return unquote_to_bytes(payload)


def allowed_hosts(setting: str) -> frozenset[str]:
    """The allow-list from its comma-separated setting; empty means remote URLs are disabled."""
    return frozenset(h.strip().lower() for h in setting.split(",") if h.strip())


def is_remote(url: str) -> bool:
    return url.split(":", 1)[0].lower() in SCHEMES


def check_url(url: str, hosts: frozenset[str], field: str) -> httpx.URL:
    """The parsed URL if it may be fetched; BadRequest naming `field` otherwise."""
    if not hosts:
        raise BadRequest(f"{field}: remote media URLs are disabled; send the file as a data: URL", param=field)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadRequest(f"{field}: invalid URL ({exc})", param=field) from exc
    if parsed.scheme not in SCHEMES:
        raise BadRequest(f"{field}: only http and https URLs can be fetched", param=field)
    if parsed.host.lower() not in hosts:
        raise BadRequest(f"{field}: host {parsed.host!r} is not in the remote media allow-list", param=field)
    return parsed


async def fetch(url: str, *, hosts: frozenset[str], timeout_s: float, max_bytes: int, field: str) -> bytes:
    """The body of `url`, at most `max_bytes` long; BadRequest (400) or MediaTooLarge (413) naming `field`."""
    parsed = check_url(url, hosts, field)
    try:
        async with asyncio.timeout(timeout_s):
            return await _get(parsed, timeout_s, max_bytes, field)
    except TimeoutError as exc:
        raise BadRequest(f"{field}: fetching the URL took longer than {timeout_s:g} s", param=field) from exc
    except httpx.HTTPError as exc:
        raise BadRequest(f"{field}: fetching the URL failed ({type(exc).__name__})", param=field) from exc


async def _get(url: httpx.URL, timeout_s: float, max_bytes: int, field: str) -> bytes:
    async with (
        httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client,
        client.stream("GET", url, headers={"accept-encoding": "identity"}) as response,
    ):
        if response.is_redirect or 300 <= response.status_code < 400:
            raise BadRequest(f"{field}: the URL answered a redirect, which is not followed", param=field)
        if response.status_code != 200:
            raise BadRequest(f"{field}: the URL answered HTTP {response.status_code}", param=field)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise MediaTooLarge.bytes_over(field, max_bytes)
        body = bytearray()
        async for chunk in response.aiter_bytes():  # decoded if the server compressed anyway; capped all the same
            body += chunk
            if len(body) > max_bytes:
                raise MediaTooLarge.bytes_over(field, max_bytes)
        return bytes(body)
