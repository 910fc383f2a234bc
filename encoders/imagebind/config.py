"""ImageBind hyper-parameters.

The field names and defaults are exactly those of the original
``ImageBindModel.__init__`` so that a config can be read side by side with the
upstream code and so that the huge preset reproduces ``imagebind_huge.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Input geometry that is not an upstream constructor argument: upstream hard-codes
# these values inside ``_create_modality_preprocessors``; we keep them as constants
# (every preset, tiny included, uses the same geometry so inputs are interchangeable).
IMAGE_SIZE = 224
TEXT_CONTEXT_LENGTH = 77
TEXT_VOCAB_SIZE = 49408
IMU_CHANNELS = 6
IMU_LENGTH = 2000


@dataclass(frozen=True)
class ImageBindConfig:
    video_frames: int = 2
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    audio_kernel_size: int = 16
    audio_stride: int = 10
    out_embed_dim: int = 768
    vision_embed_dim: int = 1024
    vision_num_blocks: int = 24
    vision_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1
    text_embed_dim: int = 768
    text_num_blocks: int = 12
    text_num_heads: int = 12
    depth_embed_dim: int = 384
    depth_kernel_size: int = 16
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_drop_path: float = 0.0
    thermal_embed_dim: int = 768
    thermal_kernel_size: int = 16
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_drop_path: float = 0.0
    imu_embed_dim: int = 512
    imu_kernel_size: int = 8
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7

    def __post_init__(self) -> None:
        # The config is stored as JSON (manifest.json), which turns tuples into
        # lists; normalise back so equality and hashing keep working.
        ks = tuple(int(k) for k in self.kernel_size)
        if len(ks) != 3:
            raise ValueError(f"kernel_size must have 3 entries (t, h, w), got {self.kernel_size!r}")
        object.__setattr__(self, "kernel_size", ks)
        for name in ("vision", "text", "audio", "depth", "thermal", "imu"):
            dim = getattr(self, f"{name}_embed_dim")
            heads = getattr(self, f"{name}_num_heads")
            if dim % heads:
                raise ValueError(f"{name}_embed_dim={dim} is not divisible by {name}_num_heads={heads}")


PRESETS: dict[str, ImageBindConfig] = {
    # The released imagebind_huge.pth (ViT-H vision, OpenCLIP-H text).
    "huge": ImageBindConfig(
        vision_embed_dim=1280,
        vision_num_blocks=32,
        vision_num_heads=16,
        text_embed_dim=1024,
        text_num_blocks=24,
        text_num_heads=16,
        out_embed_dim=1024,
        audio_drop_path=0.1,
        imu_drop_path=0.7,
    ),
    # A few-MB stand-in for tests and CPU smoke runs: same input geometry and the
    # same 1024-d output (so the PandaGPT projector shape is unchanged), tiny trunks.
    # The text width is the smallest because its 49408-row embedding dominates size.
    "tiny": ImageBindConfig(
        out_embed_dim=1024,
        vision_embed_dim=64,
        vision_num_blocks=2,
        vision_num_heads=4,
        audio_embed_dim=64,
        audio_num_blocks=2,
        audio_num_heads=4,
        text_embed_dim=32,
        text_num_blocks=2,
        text_num_heads=4,
        depth_embed_dim=32,
        depth_num_blocks=2,
        depth_num_heads=4,
        thermal_embed_dim=32,
        thermal_num_blocks=1,
        thermal_num_heads=4,
        imu_embed_dim=32,
        imu_num_blocks=2,
        imu_num_heads=4,
    ),
}
