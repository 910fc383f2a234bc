"""The hostile corpus (issue 14, item 7): files and requests an attacker would send, generated here
(nothing is downloaded), one class per kind of finding of issue 14. tests/service/test_hostile.py
sends each to a live server; each must be answered, within a time bound, with the status its case
accepts, a refusal naming the field at fault, and never a 5xx but 503.

A case is data: the request (lazy: files are made when it is sent) and what may answer it. Cases
that HTTP clients refuse to send (a broken Content-Length, a header with a line break) are raw bytes
written on a socket.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import SERVER_LIMITS
from tests.media import (
    csv_rows,
    depth_png16,
    imu_npy,
    npy,
    one_keyframe_video,
    picture,
    png,
    video,
    wav,
    wav_channels,
    wav_samples,
)

# The classes of issue 14's findings, in the order RELIABILITY.md lists them.
CLASSES = {
    "bad-file": "bad files of every modality (test_bad_inputs' corpus, here on /embeddings)",
    "bomb": "resource bombs within every limit (tall/wide images, thin videos, many channels at odd rates, "
    "skip-frame H.264 at high declared fps, one-huge-line CSV, lying .npy headers)",
    "container": "truncated and corrupt containers",
    "polyglot": "polyglots and mislabelled types (the name and content type lie; the bytes decide)",
    "number": "numbers at the edges of their types on /chat and /v1 (inf, nan, beyond 64 bits, negative)",
    "conversation": "too many messages, huge conversations and messages, bad parts on /v1",
    "metadata": "oversized or malformed session metadata",
    "session-id": "bad session ids (lock keys, path traversal, globs, huge, unicode) on every route",
    "auth": "unauthenticated and badly authenticated requests, large bodies among them",
    "header": "fuzzed headers: content types, boundaries, lengths, huge and many headers, bad framing",
    "json": "bad JSON: truncated, deep, huge numbers, wrong encodings and types",
}

MB = 2**20
MAX_FILE = int(SERVER_LIMITS["PANDASERVE_MAX_FILE_BYTES"])
SESSION = "{session}"  # replaced by the module's live session id when the case is sent
MULTIPART = "Content-Type: multipart/form-data; boundary=b\n"  # a raw request's header line
FILE_PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="f"\r\n\r\n'  # then the bytes


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # a key of CLASSES
    method: str
    path: str  # SESSION in it is replaced
    accept: frozenset[int]  # the statuses that may answer it (0: the server closed the connection)
    names: str | None  # the field a refusal names (its `param`, or the message when param is null)
    request: Callable[[], dict[str, Any]] = field(default=lambda: {})  # httpx keywords, made when sent
    auth: bool = True  # send the tenant's key
    raw: Callable[[], bytes] | None = None  # bytes to write on a socket instead (SESSION not replaced)
    half_close: bool = False  # raw: shut the sending side after the bytes (the server sees the end)


def refused(*statuses: int) -> frozenset[int]:
    return frozenset(statuses)


SERVED = refused(200)  # a costly file within every limit, now cheap: served within the time bound


# -- files --------------------------------------------------------------------------------------------


def embed(name: str, kind: str, modality: str, make: Callable[[], bytes], accept: frozenset[int]) -> Case:
    """One file on /embeddings (the decode path without the engine), named `f`."""
    return Case(name, kind, "POST", "/embeddings", accept, modality, lambda: {"files": [(modality, ("f", make()))]})


def image_of(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format=fmt)
    return buf.getvalue()


def csv_one_line(width: int) -> bytes:
    """One sample of 6 numbers, the first zero-padded so the line is exactly `width` bytes."""
    tail = ",0.2,9.8,0,0,0"
    return ("1.5".rjust(width - len(tail), "0") + tail + "\n").encode()


def npy_header(shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"") -> bytes:
    """A .npy whose header declares `shape`, followed by `payload` only (a header that lies)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def npy_version(major: int) -> bytes:
    return b"\x93NUMPY" + bytes([major, 0]) + npy(np.zeros((10, 6), np.float32))[8:]


def png_ihdr(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR chunk declaring `width` x `height`, then nothing."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def bmp_header(width: int, height: int) -> bytes:
    """A BMP header declaring `width` x `height` at 24 bits, with 16 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + bytes(16)


def wav_lying_size(channels: int) -> bytes:
    """A WAV whose RIFF and data sizes claim 4 GiB, followed by 0.5 s of samples."""
    data = bytearray(wav(7, 0.5, channels=channels))
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(data)


def flipped(data: bytes, every: int = 97) -> bytes:
    """The file with one byte in every `every` inverted past its first 64 (a corrupt body, a sound header)."""
    out = bytearray(data)
    for i in range(64, len(out), every):
        out[i] ^= 0xFF
    return bytes(out)


def zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def flac(seconds: float) -> bytes:
    import soundfile as sf

    from tests.media import tone

    buf = io.BytesIO()
    sf.write(buf, tone(3, seconds), 16_000, format="FLAC")
    return buf.getvalue()


def ogg(seconds: float) -> bytes:
    import soundfile as sf

    from tests.media import tone

    buf = io.BytesIO()
    sf.write(buf, tone(4, seconds), 16_000, format="OGG", subtype="VORBIS")
    return buf.getvalue()


# test_bad_inputs' corpus: (field, file maker, status, words in the message). Makers are lazy.
BAD_FILES: dict[str, tuple[str, Callable[[], bytes], int, str]] = {
    "image-empty": ("image", lambda: b"", 422, "empty"),
    "image-text": ("image", lambda: b"hello world", 415, "not an image"),
    "image-pdf": ("image", lambda: b"%PDF-1.7\n%\xe2\xe3", 415, "not an image"),
    "image-gif": ("image", lambda: b"GIF89a" + b"\0" * 64, 415, "not an image"),
    "image-png-signature-only": ("image", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "corrupt"),
    "image-truncated-png": ("image", lambda: picture(1, (300, 300))[:300], 422, "corrupt"),
    "image-truncated-jpeg": ("image", lambda: picture(1, (300, 300), "JPEG")[:-400], 422, "corrupt"),
    "image-bomb": ("image", lambda: png((10_000, 5_000), "1"), 413, "pixels"),
    "image-long-side": ("image", lambda: png((9_000, 10)), 413, "side"),
    "image-too-many-bytes": ("image", lambda: b"\x89PNG\r\n\x1a\n" + bytes(4 * 2**20), 413, "limit"),
    "thermal-empty": ("thermal", lambda: b"", 422, "empty"),
    "thermal-text": ("thermal", lambda: b"42 degrees", 415, "not an image"),
    "thermal-truncated": ("thermal", lambda: picture(2, (200, 200), "JPEG", "L")[:-300], 422, "corrupt"),
    "thermal-bomb": ("thermal", lambda: png((10_000, 5_000), "1"), 413, "pixels"),
    "depth-empty": ("depth", lambda: b"", 422, "empty"),
    "depth-text": ("depth", lambda: b"depth,map", 415, "not an image"),
    "depth-3d-npy": ("depth", lambda: npy(np.zeros((2, 3, 4))), 422, "2-D"),
    "depth-object-npy": ("depth", lambda: npy(np.array(["x"], dtype=object)), 422, "numeric"),
    "depth-truncated-npy": ("depth", lambda: npy(np.ones((100, 100)))[:500], 422, "corrupt"),
    "depth-wide-npy": ("depth", lambda: npy(np.ones((2, 9_000), np.float32)), 413, "side"),
    "depth-truncated-png16": ("depth", lambda: depth_png16(1)[:2000], 422, "corrupt"),
    "imu-empty": ("imu", lambda: b"", 422, "empty"),
    "imu-binary": ("imu", lambda: b"\xff\xfe\xfd\x00\x01", 415, "not a .npy array nor CSV"),
    "imu-header-only": ("imu", lambda: b"ax,ay,az,gx,gy,gz\n", 422, "no rows"),
    "imu-ragged": ("imu", lambda: b"1,2,3,4,5,6\n1,2,3\n", 422, "same number of columns"),
    "imu-wrong-shape": ("imu", lambda: npy(np.zeros((5, 7))), 422, "(N, 6) or (6, N)"),
    "imu-nan": ("imu", lambda: npy(np.full((100, 6), np.nan)), 422, "NaN"),
    "imu-no-samples": ("imu", lambda: npy(np.zeros((0, 6))), 422, "no samples"),
    "imu-too-long": ("imu", lambda: csv_rows(20_001), 413, "limit"),
    "audio-empty": ("audio", lambda: b"", 422, "empty"),
    "audio-random": ("audio", lambda: np.random.default_rng(0).bytes(2000), 415, ""),
    "audio-png": ("audio", lambda: picture(3, (64, 64)), 415, ""),
    "audio-no-samples": ("audio", lambda: wav_samples(0), 422, ""),
    "audio-too-short": ("audio", lambda: wav_samples(100), 422, "short"),
    "audio-too-long": ("audio", lambda: wav(1, 31, rate=8_000), 413, ""),
    "audio-corrupt-flac": ("audio", lambda: b"fLaC" + bytes(200), 422, ""),
    "audio-video-without-sound": ("audio", lambda: video(1, 1.0), 422, ""),
    "video-empty": ("video", lambda: b"", 422, "empty"),
    "video-random": ("video", lambda: np.random.default_rng(1).bytes(3000), 415, ""),
    "video-png": ("video", lambda: picture(4, (64, 64)), 415, ""),
    "video-wav": ("video", lambda: wav(2, 1.0), 415, ""),
    "video-truncated-mp4": ("video", lambda: video(2, 2.0)[:600], 422, ""),
    "video-corrupt-webm": ("video", lambda: b"\x1a\x45\xdf\xa3" + bytes(300), 422, ""),
    "video-too-long": ("video", lambda: video(3, 21.0, fps=2, size=(64, 48)), 413, ""),
    "video-frame-too-large": ("video", lambda: video(4, 0.5, fps=2, size=(1296, 736)), 413, ""),
    # Resource bombs within every size limit (issue 14): refused before the costly work.
    # (A 1 x 2048 image is no bomb any more: it is cropped before it is resized, tests/encoders.)
    "audio-1024-channels-at-32-hz": ("audio", lambda: wav_channels(1024, 32, 64), 422, "below the minimum"),
    "audio-too-many-channels": ("audio", lambda: wav_channels(32, 16_000, 1600), 413, "channels"),
    "imu-one-long-row": ("imu", lambda: ",".join(["1.5"] * 2**20).encode(), 413, "a line of"),
    "video-aspect-bomb": ("video", lambda: video(5, 1.0, fps=2, size=(16, 2048)), 413, "aspect ratio"),
    "video-declared-fps-bomb": ("video", lambda: video(6, 0.1, fps=1000, size=(64, 48)), 413, "fps"),
    "video-one-keyframe-bomb": ("video", lambda: one_keyframe_video(240, 19.0), 413, "frames must be decoded"),
}
assert len(BAD_FILES) >= 40


def bad_files() -> list[Case]:
    """test_bad_inputs' corpus (sent there on /chat with a session), here on /embeddings."""
    return [
        embed(f"embed-{name}", "bad-file", f, make, refused(status)) for name, (f, make, status, _) in BAD_FILES.items()
    ]


def bombs() -> list[Case]:
    side = int(SERVER_LIMITS["PANDASERVE_MAX_IMAGE_SIDE"])
    rows = int(SERVER_LIMITS["PANDASERVE_MAX_IMU_SAMPLES"])
    return [
        # Cropped before they are resized: cheap now, served (the original scaled 1 x 2048 to 224 x 458,752).
        embed("image-1x2048", "bomb", "image", lambda: image_of((1, 2048)), SERVED),
        embed("image-2048x1", "bomb", "image", lambda: image_of((2048, 1)), SERVED),
        embed("image-1xmax-side", "bomb", "image", lambda: image_of((1, side)), SERVED),
        embed("image-max-sidex2", "bomb", "image", lambda: image_of((side, 2)), SERVED),
        embed("thermal-1xmax-side", "bomb", "thermal", lambda: image_of((1, side), "L"), SERVED),
        embed("depth16-1xmax-side", "bomb", "depth", lambda: image_of((1, side), "I;16", value=900), SERVED),
        embed("depth-npy-2xmax-side", "bomb", "depth", lambda: npy(np.ones((2, side), np.float32)), SERVED),
        embed("image-near-pixel-limit-1bit", "bomb", "image", lambda: image_of((6000, 6000), "1", value=1), SERVED),
        embed("image-max-side-square-1bit", "bomb", "image", lambda: image_of((side, 4000), "1", value=1), SERVED),
        # Thin videos: refused from the header past 50:1; just under it, served.
        embed("video-2048x16", "bomb", "video", lambda: video(11, 1.0, fps=2, size=(2048, 16)), refused(413)),
        embed("video-16x784-under-the-ratio", "bomb", "video", lambda: video(12, 1.0, fps=2, size=(16, 784)), SERVED),
        # Many channels at odd rates: only two rows are ever resampled; a rate coprime with 16 kHz
        # would need a resampling kernel of millions of taps, and is refused before decoding.
        embed("audio-16ch-at-4001hz", "bomb", "audio", lambda: wav_channels(16, 4001, 8002), refused(422)),
        embed("audio-16ch-at-7919hz", "bomb", "audio", lambda: wav(5, 2.0, rate=7919, channels=16), refused(422)),
        embed("audio-16ch-at-11025hz", "bomb", "audio", lambda: wav(5, 2.0, rate=11_025, channels=16), SERVED),
        embed("audio-16ch-at-384khz", "bomb", "audio", lambda: wav(6, 0.25, rate=384_000, channels=16), SERVED),
        embed("audio-2ch-at-383999hz", "bomb", "audio", lambda: wav(7, 0.5, rate=383_999, channels=2), refused(422)),
        embed("audio-17-channels", "bomb", "audio", lambda: wav_channels(17, 16_000, 1600), refused(413)),
        embed("audio-1024ch-at-4khz", "bomb", "audio", lambda: wav_channels(1024, 4000, 400), refused(413)),
        embed("audio-above-max-rate", "bomb", "audio", lambda: wav_channels(1, 384_001, 4000), refused(413, 422)),
        embed("audio-at-3999hz", "bomb", "audio", lambda: wav_channels(1, 3999, 4000), refused(422)),
        embed("audio-float64-16ch", "bomb", "audio", lambda: wav(8, 1.0, channels=16, subtype="DOUBLE"), SERVED),
        # Keyframe then skip frames at a high declared rate.
        embed("video-keyframe-240fps-2s", "bomb", "video", lambda: one_keyframe_video(240, 2.0), SERVED),
        # 10 s: every sampled frame within PANDASERVE_MAX_VIDEO_FRAMES_PER_SAMPLE (200 here) of the last: served.
        embed("video-keyframe-240fps-10s", "bomb", "video", lambda: one_keyframe_video(240, 10.0), SERVED),
        embed("video-declared-241fps", "bomb", "video", lambda: video(13, 0.5, fps=241, size=(32, 32)), refused(413)),
        # IMU: lines measured and counted before parsing; .npy headers checked before any data is read.
        embed("imu-csv-line-at-limit", "bomb", "imu", lambda: csv_one_line(4096), SERVED),
        embed("imu-csv-line-over-limit", "bomb", "imu", lambda: csv_one_line(4098), refused(413)),
        embed("imu-csv-20mib-of-newlines", "bomb", "imu", lambda: b"\n" * (MAX_FILE - 1), refused(413)),
        embed("imu-csv-max-rows", "bomb", "imu", lambda: csv_rows(rows), SERVED),
        embed("imu-npy-6xmax", "bomb", "imu", lambda: npy(np.zeros((6, rows), np.float32)), SERVED),
        embed("imu-npy-6xmax+1", "bomb", "imu", lambda: npy(np.zeros((6, rows + 1), np.float32)), refused(413)),
        embed("imu-npy-header-2^40-rows", "bomb", "imu", lambda: npy_header((2**40, 6)), refused(413)),
        embed("depth-npy-header-1e5-square", "bomb", "depth", lambda: npy_header((100_000, 100_000)), refused(413)),
        embed("depth-npy-header-negative", "bomb", "depth", lambda: npy_header((-1, 100)), refused(413, 422)),
        embed("image-png-ihdr-65535-square", "bomb", "image", lambda: png_ihdr(65535, 65535), refused(413, 422)),
        embed("image-png-ihdr-2^31-wide", "bomb", "image", lambda: png_ihdr(2**31 - 1, 1), refused(413, 422)),
        embed("image-bmp-100k-square", "bomb", "image", lambda: bmp_header(100_000, 100_000), refused(413, 422)),
        embed("image-bmp-negative-height", "bomb", "image", lambda: bmp_header(64, -(2**31)), refused(413, 422)),
    ]


def containers() -> list[Case]:
    mp4 = lambda: video(21, 2.0)  # noqa: E731 (made when sent)
    webm = lambda: video(22, 2.0, container="webm")  # noqa: E731
    unsure = refused(200, 422)  # a stream cut late may still hold every sampled frame or sample
    return [
        embed("mp4-cut-at-10pc", "container", "video", lambda: mp4()[: len(mp4()) // 10], refused(422)),
        embed("mp4-cut-at-50pc", "container", "video", lambda: mp4()[: len(mp4()) // 2], refused(422)),
        embed("mp4-cut-at-95pc", "container", "video", lambda: mp4()[: len(mp4()) * 95 // 100], refused(422)),
        embed("mp4-ftyp-only", "container", "video", lambda: mp4()[:32], refused(422)),
        embed("mp4-flipped-bytes", "container", "video", lambda: flipped(mp4()), refused(200, 422)),
        embed("webm-cut-at-50pc", "container", "video", lambda: webm()[: len(webm()) // 2], unsure),
        embed("webm-flipped-bytes", "container", "video", lambda: flipped(webm()), unsure),
        embed(
            "mkv-ebml-garbage",
            "container",
            "video",
            lambda: b"\x1a\x45\xdf\xa3\x9f" + bytes(range(256)) * 8,
            refused(422),
        ),
        embed("wav-lying-sizes", "container", "audio", lambda: wav_lying_size(2), refused(200, 422)),
        embed("wav-cut-in-header", "container", "audio", lambda: wav(9, 1.0)[:30], refused(415, 422)),
        embed("wav-flipped-bytes", "container", "audio", lambda: flipped(wav(10, 1.0)), refused(200, 422)),
        embed("flac-cut-at-50pc", "container", "audio", lambda: flac(2.0)[: len(flac(2.0)) // 2], unsure),
        embed("flac-flipped-bytes", "container", "audio", lambda: flipped(flac(2.0)), unsure),
        embed("ogg-cut-at-50pc", "container", "audio", lambda: ogg(2.0)[: len(ogg(2.0)) // 2], unsure),
        embed("jpeg-flipped-bytes", "container", "image", lambda: flipped(picture(23, (320, 240), "JPEG")), unsure),
        embed("webp-cut-at-50pc", "container", "image", lambda: picture(24, (320, 240), "WEBP")[:400], refused(422)),
        embed("tiff-cut-at-50pc", "container", "image", lambda: picture(25, (64, 64), "TIFF")[:2000], refused(422)),
        embed("bmp-cut", "container", "thermal", lambda: picture(26, (64, 64), "BMP")[:500], refused(422)),
        embed("png16-flipped-bytes", "container", "depth", lambda: flipped(depth_png16(27)), refused(422)),
        embed("imu-npy-cut", "container", "imu", lambda: imu_npy(28)[:300], refused(422)),
        embed("imu-npy-version-3", "container", "imu", lambda: npy_version(3), refused(422)),
        embed("imu-npy-complex", "container", "imu", lambda: npy(np.zeros((100, 6), np.complex64)), refused(422)),
        embed(
            "imu-npy-header-garbage",
            "container",
            "imu",
            lambda: b"\x93NUMPY\x01\x00\x10\x00{'descr': ??? }\n",
            refused(422),
        ),
        embed("imu-csv-invalid-utf8", "container", "imu", lambda: b"1,2,3,4,5,\xff\n" * 3, refused(415, 422)),
    ]


def polyglots() -> list[Case]:
    jpeg = picture(31, (320, 240), "JPEG")
    return [
        Case(
            "jpeg-named-wav-typed-audio",
            "polyglot",
            "POST",
            "/embeddings",
            SERVED,
            "image",
            lambda: {"files": [("image", ("clip.wav", jpeg, "audio/wav"))]},
        ),
        embed(
            "png-then-zip", "polyglot", "image", lambda: picture(32, (64, 64)) + zip_of("x.txt", b"x" * 1000), SERVED
        ),
        embed("zip-then-png", "polyglot", "image", lambda: zip_of("a.png", picture(33, (64, 64))), refused(415)),
        embed("html-as-image", "polyglot", "image", lambda: b"<html><script>alert(1)</script></html>", refused(415)),
        embed("svg-as-image", "polyglot", "image", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', refused(415)),
        embed("png-magic-wav-body", "polyglot", "image", lambda: b"\x89PNG\r\n\x1a\n" + wav(34, 0.5), refused(422)),
        embed("wav-as-image", "polyglot", "image", lambda: wav(35, 0.5), refused(415)),
        embed("npy-as-image", "polyglot", "image", lambda: imu_npy(36), refused(415)),
        embed("png-as-imu", "polyglot", "imu", lambda: picture(37, (64, 64)), refused(415)),
        embed("json-as-imu", "polyglot", "imu", lambda: b"[[1,2,3,4,5,6]]", refused(415, 422)),
        embed("jpeg-as-depth", "polyglot", "depth", lambda: jpeg, SERVED),  # 8-bit: disparity already
        embed("png16-as-image", "polyglot", "image", lambda: depth_png16(38), SERVED),
        embed("mp4-as-image", "polyglot", "image", lambda: video(39, 0.5), refused(415)),
        embed("wav-in-mp4-magic", "polyglot", "video", lambda: b"\0\0\0\x18ftypmp42" + wav(40, 0.5), refused(415, 422)),
    ]


# -- requests -----------------------------------------------------------------------------------------


def chat_form(field_name: str, value: str) -> Case:
    """A /chat turn on the module's session whose one sampling field holds `value`."""
    form = {"message": "Hi", "session_id": SESSION, field_name: value}
    accept = refused(400) if value in ("2147483647", "1000000") else refused(422)
    return Case(
        f"chat-{field_name}={value[:24]}", "number", "POST", "/chat", accept, field_name, lambda: {"data": form}
    )


def v1(body: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A valid /v1 request (one image, one question) with `fields` added or replaced."""
    image = base64.b64encode(picture(41, (64, 64))).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            {"type": "text", "text": "What?"},
        ],
    }
    return (body or {"model": "demo", "messages": [message], "max_tokens": 1}) | fields


def v1_case(name: str, kind: str, accept: frozenset[int], names: str | None, make: Callable[[], Any]) -> Case:
    return Case(name, kind, "POST", "/v1/chat/completions", accept, names, lambda: {"json": make()})


def v1_text(name: str, kind: str, accept: frozenset[int], names: str | None, text: Callable[[], str]) -> Case:
    """JSON the encoder would not write (NaN, 1e400, duplicate keys): sent as the text."""
    headers = {"content-type": "application/json"}
    return Case(
        name, kind, "POST", "/v1/chat/completions", accept, names, lambda: {"content": text(), "headers": headers}
    )


# Within the type, past the model: the vocabulary (top_k), n (only 1): 400 from the chat core.
PAST_THE_MODEL = {("top_k", 2**31 - 1), ("n", 10**30)}


def numbers() -> list[Case]:
    chat = [
        chat_form(name, value)
        for name, values in {
            "temperature": ["inf", "-inf", "nan", "3", "-0.01", "1e309", "abc"],
            "top_p": ["0", "-1", "1.0001", "nan"],
            "top_k": ["-2", str(2**63), str(2**64), str(10**40), "2147483647"],
            "seed": [str(2**63), str(-(2**63) - 1), str(2**64), str(10**30)],
            "max_tokens": ["-1", "0", str(2**31), str(10**20), "1000000"],
        }.items()
        for value in values
    ]
    json_ = [
        v1_case(
            f"v1-{k}={v}",
            "number",
            refused(400 if (k, v) in PAST_THE_MODEL else 422),
            k,
            lambda k=k, v=v: v1(**{k: v}),
        )
        for k, v in [
            ("temperature", 3),
            ("temperature", -1),
            ("top_p", 0),
            ("top_k", -2),
            ("top_k", 2**64),
            ("top_k", 2**31 - 1),
            ("seed", 2**63),
            ("seed", -(2**63) - 1),
            ("max_tokens", -1),
            ("max_completion_tokens", 0),
            ("max_tokens", 10**20),
            ("top_logprobs", 21),
            ("n", 10**30),
        ]
    ]
    raw_numbers = [
        v1_text(
            "v1-temperature-1e400",
            "number",
            refused(422),
            "temperature",
            lambda: json.dumps(v1())[:-1] + ', "temperature": 1e400}',
        ),
        v1_text(
            "v1-temperature-NaN",
            "number",
            refused(422),
            "temperature",
            lambda: json.dumps(v1())[:-1] + ', "temperature": NaN}',
        ),
        v1_text(
            "v1-top-p-Infinity",
            "number",
            refused(422),
            "top_p",
            lambda: json.dumps(v1())[:-1] + ', "top_p": -Infinity}',
        ),
        v1_case("v1-n=2", "number", refused(400, 422), "n", lambda: v1(n=2)),
    ]
    return chat + json_ + raw_numbers


def conversations() -> list[Case]:
    def turns(count: int, chars: int = 5) -> list[dict[str, str]]:
        return [{"role": ("user", "assistant")[i % 2], "content": "x" * chars} for i in range(count)]

    def image_parts(n: int) -> list[dict[str, Any]]:
        return v1()["messages"][0]["content"][:1] * n

    return [
        v1_case("v1-257-messages", "conversation", refused(400, 422), "messages", lambda: v1(messages=turns(257))),
        v1_case("v1-20001-messages", "conversation", refused(400, 422), "messages", lambda: v1(messages=turns(20_001))),
        v1_case(
            "v1-128001-chars",
            "conversation",
            refused(400, 422),
            "messages",
            lambda: v1(messages=turns(9, 15_000)[:8] + turns(1, 8_001)),
        ),
        v1_case(
            "v1-message-of-16001", "conversation", refused(400, 422), "messages", lambda: v1(messages=turns(1, 16_001))
        ),
        v1_case(
            "v1-message-of-8mib", "conversation", refused(400, 422), "messages", lambda: v1(messages=turns(1, 8 * MB))
        ),
        v1_case(
            "v1-5000-text-parts",
            "conversation",
            refused(400, 422),
            "messages",
            lambda: v1(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * 5000}]),
        ),
        v1_case(
            "v1-5-images-in-a-message",
            "conversation",
            refused(400),
            "image",
            lambda: v1(messages=[{"role": "user", "content": image_parts(5)}]),
        ),
        v1_case("v1-no-messages", "conversation", refused(422), "messages", lambda: v1(messages=[])),
        v1_case("v1-assistant-last", "conversation", refused(400, 422), "messages", lambda: v1(messages=turns(2))),
        v1_case(
            "v1-role-tool",
            "conversation",
            refused(422),
            "messages",
            lambda: v1(messages=[{"role": "tool", "content": "x"}]),
        ),
        v1_case(
            "v1-unknown-part",
            "conversation",
            refused(422),
            "messages",
            lambda: v1(messages=[{"role": "user", "content": [{"type": "file", "file": {}}]}]),
        ),
        v1_case(
            "v1-bad-base64",
            "conversation",
            refused(400, 422),
            "messages",
            lambda: v1(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@="}}],
                    }
                ]
            ),
        ),
        v1_case(
            "v1-data-url-over-file-cap",
            "conversation",
            refused(413),
            "messages",
            lambda: v1(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {
                                    "url": "data:image/png;base64," + base64.b64encode(bytes(MAX_FILE + 1)).decode()
                                },
                            }
                        ],
                    }
                ]
            ),
        ),
        v1_case(
            "v1-remote-loopback-url",
            "conversation",
            refused(400),
            "messages",
            lambda: v1(
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:6379/"}}]}
                ]
            ),
        ),
        v1_case(
            "v1-file-url",
            "conversation",
            refused(400),
            "messages",
            lambda: v1(
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}
                ]
            ),
        ),
        v1_case("v1-stop-5-strings", "conversation", refused(422), "stop", lambda: v1(stop=["a", "b", "c", "d", "e"])),
        v1_case("v1-stop-1mib", "conversation", refused(422), "stop", lambda: v1(stop="x" * MB)),
        v1_case("v1-unknown-model", "conversation", refused(404), "model", lambda: v1(model="../../etc/passwd")),
        Case(
            "chat-message-of-1mib",
            "conversation",
            "POST",
            "/chat",
            refused(400),
            None,  # open (RELIABILITY.md): the form parser's own 400, "Field exceeded maximum size", unnamed
            lambda: {"data": {"message": "x" * MB, "session_id": SESSION}},
        ),
        Case(
            "chat-5-imu-files",
            "conversation",
            "POST",
            "/chat",
            refused(400),
            "imu",
            lambda: {
                "data": {"message": "x", "session_id": SESSION},
                "files": [("imu", (f"{i}", imu_npy(i))) for i in range(5)],
            },
        ),
        Case(
            "chat-no-message",
            "conversation",
            "POST",
            "/chat",
            refused(422),
            "message",
            lambda: {"data": {"session_id": SESSION}},
        ),
        Case(
            "chat-first-turn-only-an-unknown-file-field",
            "conversation",
            "POST",
            "/chat",
            refused(422),
            None,
            lambda: {
                "data": {"message": "x", "max_tokens": "1"},
                "files": [("exe", ("a.exe", b"MZ" + bytes(1000)))],
            },
        ),
    ]


def session_json(metadata: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"json": {"metadata": metadata}}


def metadata() -> list[Case]:
    def meta(name: str, value: Any) -> Case:
        return Case(f"metadata-{name}", "metadata", "POST", "/sessions", refused(422), "metadata", session_json(value))

    return [
        meta("33-labels", {f"k{i}": "v" for i in range(33)}),
        meta("10000-labels", {f"k{i}": "v" for i in range(10_000)}),
        meta("key-of-65", {"k" * 65: "v"}),
        meta("empty-key", {"": "v"}),
        meta("value-of-513", {"k": "v" * 513}),
        meta("value-of-2mib", {"k": "v" * (2 * MB)}),
        meta("nested-value", {"k": {"a": {"b": "c"}}}),
        meta("number-value", {"k": 1e308}),
        meta("a-list", ["a", "b"]),
        meta("a-string", "x" * 1000),
    ]


def session_ids() -> list[Case]:
    hexid = "0123456789abcdef" * 2
    bad = {
        "lock-suffix": "sess_x:lock",
        "valid-then-lock": f"sess_{hexid}:lock",
        "traversal": "..%2F..%2Fetc%2Fpasswd",
        "redis-glob": "sess_*",
        "upper-hex": f"sess_{hexid.upper()}",
        "10k-chars": "sess_" + "a" * 10_000,
        "unicode": "sess_\u00e9\u00e9\u00e9",
        "nul": "sess_%00",
        "newline": "sess_%0d%0aX-Injected:%201",
    }
    cases = []
    for name, sid in bad.items():
        # An escaped slash is a slash to the router: no route, 404 (and nothing reaches the store).
        accept, names = (refused(404), None) if "%2F" in sid else (refused(422), "session_id")
        cases.append(Case(f"get-session-{name}", "session-id", "GET", f"/sessions/{sid}", accept, names))
        cases.append(Case(f"delete-session-{name}", "session-id", "DELETE", f"/sessions/{sid}", accept, names))
    for name in ("lock-suffix", "valid-then-lock", "redis-glob", "upper-hex"):
        form = {"message": "x", "session_id": bad[name]}
        cases.append(
            Case(
                f"chat-session-{name}",
                "session-id",
                "POST",
                "/chat",
                refused(422),
                "session_id",
                lambda f=form: {"data": f},
            )
        )
    return cases


def unauthenticated(name: str, headers: dict[str, Any], request: Callable[[], dict[str, Any]] | None = None) -> Case:
    make = request or (lambda: {"files": [("image", ("big", bytes(MAX_FILE)))], "data": {"message": "x"}})
    return Case(
        name, "auth", "POST", "/chat", refused(401), "API key", lambda: make() | {"headers": headers}, auth=False
    )


def slow_unauthenticated_body() -> bytes:
    """Headers declaring an 8 MiB multipart body, then 64 KiB of it: the 401 must come without the rest."""
    head = (
        "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f'Content-Length: {8 * MB}\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; filename="f"\r\n\r\n'
    )
    return head.encode() + bytes(64 * 1024)


def auth() -> list[Case]:
    return [
        unauthenticated("no-key-4mib-upload", {}),
        unauthenticated("wrong-key-4mib-upload", {"Authorization": "Bearer nope"}),
        unauthenticated("basic-scheme", {"Authorization": "Basic dGVzdC1rZXktMTo="}),
        unauthenticated("empty-bearer", {"Authorization": "Bearer"}),
        unauthenticated("key-with-a-latin-1-byte", {"Authorization": b"Bearer test-key-1\xe9"}),
        unauthenticated("key-prefix", {"Authorization": "Bearer test-key-"}),
        unauthenticated("8kib-key", {"Authorization": "Bearer " + "k" * 8192}),
        unauthenticated(
            "v1-no-key-8mib-json", {}, lambda: {"json": v1(messages=[{"role": "user", "content": "x" * 8 * MB}])}
        ),
        Case(
            "raw-no-key-slow-8mib-body",
            "auth",
            "POST",
            "/chat",
            refused(401),
            None,
            auth=False,
            raw=slow_unauthenticated_body,
        ),
    ]


def raw_request(head: str, body: bytes = b"") -> Callable[[], bytes]:
    return lambda: head.replace("\n", "\r\n").encode() + b"\r\n" + body


def headers() -> list[Case]:
    form = b'--b\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n--b--\r\n'
    key = "Authorization: Bearer test-key-1\n"

    def multipart(name: str, content_type: str, body: bytes, accept: frozenset[int], names: str | None) -> Case:
        return Case(
            name,
            "header",
            "POST",
            "/chat",
            accept,
            names,
            lambda: {"content": body, "headers": {"content-type": content_type}},
        )

    def raw(
        name: str,
        method: str,
        path: str,
        accept: frozenset[int],
        head: str,
        body: bytes = b"",
        half_close: bool = False,
    ) -> Case:
        """Bytes no HTTP client would send, written to a socket as they are."""
        return Case(name, "header", method, path, accept, None, raw=raw_request(head, body), half_close=half_close)

    return [
        multipart("multipart-no-boundary", "multipart/form-data", form, refused(400, 422), None),
        multipart("multipart-empty-boundary", "multipart/form-data; boundary=", form, refused(400, 422), None),
        multipart(
            "multipart-4kib-boundary", "multipart/form-data; boundary=" + "b" * 4096, form, refused(400, 422), None
        ),
        multipart("multipart-boundary-mismatch", "multipart/form-data; boundary=zz", form, refused(400, 422), None),
        multipart("multipart-unclosed-quote", 'multipart/form-data; boundary="b', form, refused(400, 422), None),
        multipart(
            "multipart-garbage-params",
            "multipart/form-data; ;;;=;boundary=b;charset=\x7f",
            form,
            refused(400, 422),
            None,
        ),
        multipart("multipart-no-end", "multipart/form-data; boundary=b", form[:-8], refused(400, 422), None),
        multipart(
            "multipart-10k-parts",
            "multipart/form-data; boundary=b",
            form[:-4] + b"\r\n" + form[:-6] * 10_000 + b"--b--\r\n",
            refused(400, 413, 422),
            None,
        ),
        multipart("json-body-on-chat", "application/json", b'{"message": "hi"}', refused(422), "message"),
        Case(
            "form-body-on-v1",
            "header",
            "POST",
            "/v1/chat/completions",
            refused(422),
            None,
            lambda: {"data": {"model": "demo"}},
        ),
        Case(
            "64kib-header-value",
            "header",
            "GET",
            "/v1/models",
            refused(200, 400, 431, 0),
            None,
            lambda: {"headers": {"x-filler": "a" * 65_536}},
        ),
        Case(
            "500-headers",
            "header",
            "GET",
            "/v1/models",
            refused(200, 400, 431),
            None,
            lambda: {"headers": {f"x-h{i}": "v" for i in range(500)}},
        ),
        Case(
            "10kib-request-id",
            "header",
            "GET",
            "/v1/models",
            SERVED,
            None,
            lambda: {"headers": {"x-request-id": "r" * 10_240}},
        ),
        Case(
            "garbage-traceparent",
            "header",
            "GET",
            "/v1/models",
            SERVED,
            None,
            lambda: {"headers": {"traceparent": "00-zz-zz-zz" + "f" * 4000}},
        ),
        raw(
            "raw-content-length-abc",
            "POST",
            "/chat",
            refused(400, 0),
            f"POST /chat HTTP/1.1\nHost: x\n{key}Content-Length: abc\n",
        ),
        raw(
            "raw-content-length-negative",
            "POST",
            "/chat",
            refused(400, 0),
            f"POST /chat HTTP/1.1\nHost: x\n{key}Content-Length: -5\n",
        ),
        raw(
            "raw-content-length-and-chunked",
            "POST",
            "/chat",
            refused(400, 0),
            f"POST /chat HTTP/1.1\nHost: x\n{key}Content-Length: 5\nTransfer-Encoding: chunked\n",
            b"0\r\n\r\n",
        ),
        raw(
            "raw-content-length-over-body-cap",
            "POST",
            "/chat",
            refused(413),
            f"POST /chat HTTP/1.1\nHost: x\n{key}{MULTIPART}Content-Length: {200 * MB}\n",
        ),
        raw(
            "raw-content-length-over-the-bytes-sent",
            "POST",
            "/chat",
            refused(400, 422, 0),
            f"POST /chat HTTP/1.1\nHost: x\n{key}{MULTIPART}Content-Length: 100000\n",
            form,
            half_close=True,
        ),
        raw(
            "raw-bad-chunk-size",
            "POST",
            "/chat",
            refused(400, 0),
            f"POST /chat HTTP/1.1\nHost: x\n{key}Transfer-Encoding: chunked\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            half_close=True,
        ),
        raw(
            "raw-header-line-break",
            "GET",
            "/v1/models",
            refused(400, 0),
            f"GET /v1/models HTTP/1.1\nHost: x\n{key}X-A: a\rX-B: b\n",
        ),
        raw("raw-no-host-http11", "GET", "/v1/models", refused(200, 400, 0), f"GET /v1/models HTTP/1.1\n{key}"),
        raw(
            "raw-garbage-method",
            "GET",
            "/v1/models",
            refused(400, 405, 0),
            f"F\x00O /v1/models HTTP/1.1\nHost: x\n{key}",
        ),
        raw(
            "raw-64kib-path",
            "GET",
            "/v1/models",
            refused(400, 404, 414, 0),
            f"GET /{'a' * 65_536} HTTP/1.1\nHost: x\n{key}",
        ),
        Case("raw-http-0.9", "header", "GET", "/", refused(400, 401, 0), None, raw=lambda: b"GET /v1/models\r\n\r\n"),
        Case(
            "raw-body-over-cap-chunked",
            "header",
            "POST",
            "/embeddings",
            refused(413, 0),
            None,
            raw=lambda: (
                raw_request(f"POST /embeddings HTTP/1.1\nHost: x\n{key}{MULTIPART}Transfer-Encoding: chunked\n")()
                + b"%x\r\n%s\r\n" % (len(FILE_PART), FILE_PART)
                + (b"100000\r\n" + bytes(MB) + b"\r\n") * 101
                + b"0\r\n\r\n"
            ),
        ),
    ]


def bad_json() -> list[Case]:
    def body(
        name: str,
        path: str,
        text: Callable[[], bytes],
        accept: frozenset[int] = refused(400, 422),
        ctype: str = "application/json",
    ) -> Case:
        return Case(
            f"json-{name}",
            "json",
            "POST",
            path,
            accept,
            None,
            lambda: {"content": text(), "headers": {"content-type": ctype}},
        )

    deep = lambda n: b"[" * n + b"]" * n  # noqa: E731
    return [
        body("truncated-v1", "/v1/chat/completions", lambda: json.dumps(v1()).encode()[:-20]),
        body("truncated-sessions", "/sessions", lambda: b'{"metadata": {"a": "b"'),
        body("depth-100k-v1", "/v1/chat/completions", lambda: deep(100_000)),
        body("depth-100k-sessions", "/sessions", lambda: b'{"metadata": ' + deep(100_000) + b"}"),
        body(
            "depth-100k-in-a-message",
            "/v1/chat/completions",
            lambda: json.dumps(v1()).encode()[:-1] + b', "x": ' + deep(100_000) + b"}",
        ),
        body(
            "int-of-5000-digits-v1",
            "/v1/chat/completions",
            lambda: json.dumps(v1()).encode()[:-1] + b', "seed": ' + b"9" * 5000 + b"}",
        ),
        body("int-of-5000-digits-sessions", "/sessions", lambda: b'{"metadata": {"a": ' + b"9" * 5000 + b"}}"),
        body(
            "invalid-utf8", "/v1/chat/completions", lambda: json.dumps(v1()).encode().replace(b"What?", b"Wh\xff\xfe?")
        ),
        body(
            "utf16", "/v1/chat/completions", lambda: json.dumps(v1()).encode("utf-16"), refused(200, 400, 422)
        ),  # RFC 4627
        body("utf8-bom", "/sessions", lambda: b"\xef\xbb\xbf{}", refused(201, 400, 422)),
        body("top-level-array", "/v1/chat/completions", lambda: b"[]"),
        body("top-level-null", "/sessions", lambda: b"null", refused(201, 422)),  # no body: no metadata
        body("top-level-string", "/sessions", lambda: b'"x"'),
        body("empty", "/v1/chat/completions", lambda: b""),
        body("nul-bytes", "/v1/chat/completions", lambda: b"\x00" * 1000),
        body("messages-a-string", "/v1/chat/completions", lambda: json.dumps(v1(messages="hi")).encode()),
        body("model-a-number", "/v1/chat/completions", lambda: json.dumps(v1(model=1e308)).encode()),
        body("40mib-of-whitespace", "/sessions", lambda: b" " * (40 * MB) + b"{}", refused(201, 400, 413, 422)),
        body(
            "json-as-text-plain",
            "/v1/chat/completions",
            lambda: json.dumps(v1()).encode(),
            refused(415, 422),
            "text/plain",
        ),
    ]


def corpus() -> list[Case]:
    cases = [
        *bad_files(), *bombs(), *containers(), *polyglots(), *numbers(), *conversations(),
        *metadata(), *session_ids(), *auth(), *headers(), *bad_json(),
    ]  # fmt: skip
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names are ids: unique"
    assert {c.kind for c in cases} == set(CLASSES)
    return cases


# -- sending raw bytes --------------------------------------------------------------------------------


def send_raw(host: str, port: int, data: bytes, half_close: bool, timeout_s: float) -> tuple[int, bytes]:
    """Write `data` and read the answer: (status, body); status 0 when the server closed the
    connection without one. A server that neither answers nor closes within `timeout_s` raises
    TimeoutError: a hang."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request was read: what it answered is below
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise TimeoutError("no answer and no close: a hang") from None
    if not answer.startswith(b"HTTP/"):
        return 0, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
