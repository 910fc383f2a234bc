"""Image and thermal decoding and preprocessing, exact to the original loaders.

Image (ImageBind's `load_and_transform_vision_data`): RGB, Resize(224, BICUBIC) -> CenterCrop(224)
-> ToTensor -> Normalize(CLIP mean, std). Thermal (PandaGPT's `load_and_transform_thermal_data`):
grayscale "L", the same resize and crop, ToTensor, no normalisation. The original used torchvision
on PIL images; the same steps are written here with Pillow and NumPy, because torchvision cannot
be installed beside the CPU torch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from encoders.bicubic import resize_window
from encoders.errors import InvalidMedia, MediaTooLarge, UnsupportedMediaType
from encoders.limits import MediaLimits

SIZE = 224
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
# Leading bytes of each accepted format: a file that starts like one is that format, so a
# failure to decode it afterwards is corrupt content (422), not a wrong type (415).
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_image(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in SIGNATURES.items() if data.startswith(magic)), None)


def check_aspect_ratio(field: str, what: str, width: int, height: int, limits: MediaLimits) -> None:
    """The short side is scaled to 224 before the crops: the long side grows by the same factor, so
    an extreme ratio would cost ratio x 224 x 224 pixels of resizing for 224 x 224 kept (video frames;
    images are cropped first instead)."""
    short, long = min(width, height), max(width, height)
    if short < 1 or long > limits.max_aspect_ratio * short:
        raise MediaTooLarge(
            field,
            f"{what} is {width}x{height}, an aspect ratio over the limit of {limits.max_aspect_ratio:g}:1",
        )


def decode_image(data: bytes, field: str, limits: MediaLimits, mode: str | None = "RGB") -> Image.Image:
    """Sniff the format from the bytes (never from names or content types), decode fully, convert to `mode`."""
    if not data:
        raise InvalidMedia(field, "the file is empty")
    fmt = sniff_image(data)
    if fmt is None:
        raise UnsupportedMediaType(field, "not an image in a supported format (PNG, JPEG, WebP, BMP, TIFF)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) before it errors; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            if image.width * image.height > limits.max_pixels:
                raise MediaTooLarge(
                    field, f"image is {image.width}x{image.height} pixels, over the limit of {limits.max_pixels}"
                )
            if max(image.size) > limits.max_side:
                raise MediaTooLarge(
                    field, f"image is {image.width}x{image.height}, a side over the limit of {limits.max_side}"
                )
            image.load()
            return image.convert(mode) if mode else image
    except Image.DecompressionBombError as exc:
        raise MediaTooLarge(field, f"image is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidMedia(field, f"the {fmt} image is truncated or corrupt ({exc})") from exc


def resize_and_crop(image: Image.Image, size: int = SIZE, crop_first_over: float = 4.0) -> Image.Image:
    """Short side to `size` with bicubic, then the centre `size` x `size` crop (torchvision's rules).

    Past an aspect ratio of `crop_first_over` the long axis is resized for the crop's positions only
    (`encoders.bicubic`, bit for bit Pillow's pass): the work stays ~size x size however long the image
    is. Below it, Pillow resizes the whole image, as the original did (no more work than that)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if (new_w, new_h) == (w, h):
        return image.crop((left, top, left + size, top + size))
    if max(new_w, new_h) <= crop_first_over * size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        return image.crop((left, top, left + size, top + size))
    # Pillow resizes columns (horizontal) first, then rows, rounding to the mode in between: the same
    # order here, with the long axis' pass computed for the crop only.
    if w <= h:  # the rows are the long axis
        if w > size:  # both axes shrink: Pillow (13) resizes the rows first here, so do we
            tall = Image.fromarray(resize_window(np.asarray(image), 0, new_h, top, size))
            return tall.resize((size, size), Image.Resampling.BICUBIC)
        narrow = image.resize((size, h), Image.Resampling.BICUBIC)
        return Image.fromarray(resize_window(np.asarray(narrow), 0, new_h, top, size))
    wide = Image.fromarray(resize_window(np.asarray(image), 1, new_w, left, size))
    return wide.resize((size, size), Image.Resampling.BICUBIC)


def preprocess_image(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 (3, 224, 224), CLIP-normalised."""
    pixels = np.asarray(resize_and_crop(image), dtype=np.float32) / 255.0
    return ((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy()


def load_image(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    return preprocess_image(decode_image(data, field, limits))


def load_thermal(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    """Any supported image -> grayscale -> float32 (1, 224, 224) in [0, 1]."""
    pixels = np.asarray(resize_and_crop(decode_image(data, field, limits, mode="L")), dtype=np.float32)
    return (pixels / 255.0)[None]
