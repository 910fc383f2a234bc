"""Our own ImageBind implementation, checkpoint-compatible with ``imagebind_huge.pth``."""

from __future__ import annotations

from .config import PRESETS, ImageBindConfig
from .model import MODALITIES, ImageBindModel, load_imagebind

__all__ = ["MODALITIES", "PRESETS", "ImageBindConfig", "ImageBindModel", "load_imagebind"]
