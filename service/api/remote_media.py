"""Media URLs of /v1/chat/completions content parts: `data:` URLs decoded, `http(s)://` URLs fetched.

A data: URL may be base64 or percent-encoded; its declared type must fit the part (see MIME_KINDS).
Remote fetching is off unless `PANDASERVE_REMOTE_MEDIA_HOSTS` names hosts (comma-separated). Then
only those hosts are fetched (exact host match, case-insensitive), on the scheme's own port unless
the entry names one (`host:port`), over http or https only. A name is resolved once, and fetched
only if every address it resolves to is public (not loopback, private, link-local, ...: an
allow-listed name must not lead inside), by connecting to that checked address (the name still in
the Host header and TLS); an IP literal in the list is fetched as the operator wrote it. Redirects
are not followed; connecting, each read, and the whole fetch are bounded by
`remote_media_timeout_s`; the body, decompressed if the server compressed it anyway, is dropped as
soon as it passes the size cap (`max_file_bytes`). Proxy settings from the environment are not
used. Every way a fetch can fail says the same thing (the reason goes to the log): the answers
must not map the network behind the allow-list (open or closed ports, internal names).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import socket
from urllib.parse import unquote_to_bytes

import httpx

from encoders.errors import MediaTooLarge, UnsupportedMediaType
from service.errors import BadRequest

log = logging.getLogger(__name__)

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
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
    """The allow-list from its comma-separated setting (`host` or `host:port`); empty: remote URLs off."""
    return frozenset(h.strip().lower() for h in setting.split(",") if h.strip())


def is_remote(url: str) -> bool:
    return url.split(":", 1)[0].lower() in SCHEMES


class FetchFailed(Exception):
    """Why a fetch failed, for the log; the caller only ever reads `unfetchable`."""


def unfetchable(field: str) -> BadRequest:
    return BadRequest(f"{field}: the URL could not be fetched", param=field)


def check_url(url: str, hosts: frozenset[str], field: str) -> httpx.URL:
    """The parsed URL if its host and port are allowed; BadRequest naming `field` otherwise."""
    if not hosts:
        raise BadRequest(f"{field}: remote media URLs are disabled; send the file as a data: URL", param=field)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadRequest(f"{field}: invalid URL ({exc})", param=field) from exc
    if parsed.scheme not in SCHEMES:
        raise BadRequest(f"{field}: only http and https URLs can be fetched", param=field)
    host, port = parsed.host.lower(), parsed.port or DEFAULT_PORTS[parsed.scheme]
    entry = f"[{host}]" if ":" in host else host  # an IPv6 literal is written in brackets with a port
    allowed = f"{entry}:{port}" in hosts or (host in hosts and port == DEFAULT_PORTS[parsed.scheme])
    if not allowed:
        raise BadRequest(f"{field}: {entry}:{port} is not in the remote media allow-list", param=field)
    return parsed


async def checked_address(url: httpx.URL) -> str:
    """The address to connect to: an IP literal as written; a name resolved once, every address public."""
    try:
        return str(ipaddress.ip_address(url.host))
    except ValueError:
        pass
    port = url.port or DEFAULT_PORTS[url.scheme]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchFailed(f"{url.host} does not resolve ({exc})") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    inside = [a for a in addresses if not a.is_global]
    if inside or not addresses:
        raise FetchFailed(f"{url.host} resolves to non-public addresses {inside}")
    return str(addresses[0])


async def fetch(url: str, *, hosts: frozenset[str], timeout_s: float, max_bytes: int, field: str) -> bytes:
    """The body of `url`, at most `max_bytes` long; BadRequest (400) or MediaTooLarge (413) naming `field`."""
    parsed = check_url(url, hosts, field)
    try:
        async with asyncio.timeout(timeout_s):
            return await _get(parsed, await checked_address(parsed), timeout_s, max_bytes, field)
    except (TimeoutError, httpx.HTTPError, FetchFailed) as exc:
        log.info("remote media %s not fetched: %s", url, exc or type(exc).__name__)
        raise unfetchable(field) from exc


async def _get(url: httpx.URL, address: str, timeout_s: float, max_bytes: int, field: str) -> bytes:
    # To the checked address, with the name where the server looks for it: Host, and TLS's SNI and
    # certificate check.
    host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    headers = {"accept-encoding": "identity", "host": host_header}
    async with (
        httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False) as client,
        client.stream("GET", url.copy_with(host=address), headers=headers, extensions=extensions) as response,
    ):
        if response.status_code != 200:  # a redirect too: not followed, it could lead anywhere
            raise FetchFailed(f"HTTP {response.status_code}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise MediaTooLarge.bytes_over(field, max_bytes)
        body = bytearray()
        async for chunk in response.aiter_bytes():  # decoded if the server compressed anyway; capped all the same
            body += chunk
            if len(body) > max_bytes:
                raise MediaTooLarge.bytes_over(field, max_bytes)
        return bytes(body)
