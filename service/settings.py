"""Settings from the environment (PANDASERVE_*), read once when the app is made (routes get them from
app.state); the parts get narrow configs made from them (engine, encoder pool, media and turn limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from encoders.limits import MediaLimits
from encoders.pool import Batching
from service.core.turn_limits import TurnLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PANDASERVE_", extra="ignore")

    bundle: Path | None = None
    # Bundles served beside `bundle` on the same engine (comma-separated directories): the same base
    # LLM, e.g. PandaGPT (Vicuna v0 + its LoRA) and Video-LLaMA (the same Vicuna v0). Requests choose
    # one by `model`, its directory's name; `bundle` is the default.
    more_bundles: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Tenants: comma-separated keys and/or a mounted file with one key per line. None: auth off,
    # allowed only for the embedded default (sessions in memory).
    api_keys: str = ""
    api_keys_file: Path | None = None
    rate_limit_rpm: int = Field(default=600, gt=0, description="requests per minute per API key")
    rate_limit_concurrency: int = Field(default=32, gt=0, description="requests in flight per API key")
    auth_failures_per_minute: int = Field(default=20, gt=0, description="per client address, then 429")
    public_metrics_and_docs: bool = Field(default=True, description="false: /metrics and /docs need a key too")
    # Fair sharing: the most of each queue (decode, engine turns, engine prompt tokens) one API key may
    # hold, so one key cannot fill them for every other; with auth off every caller is one tenant.
    tenant_queue_share: float = Field(default=0.5, gt=0, le=1, description="of each queue, per API key")
    max_sessions_per_key: int = Field(default=10_000, gt=0, description="live sessions one API key may hold")
    # The in-flight cap counts a request for at most this long: a slot a failed replica never gave
    # back frees itself then.
    in_flight_deadline_s: float = Field(default=600.0, gt=0, description="how long the in-flight cap counts a request")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="on SIGTERM, how long in-flight work may finish")
    # OpenTelemetry: spans are exported over OTLP/HTTP to this URL (e.g. http://collector:4318/v1/traces).
    otlp_traces_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    # Sessions: in memory unless a Redis URL is given (REDIS_URL is the conventional name).
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("PANDASERVE_REDIS_URL", "REDIS_URL"))
    session_ttl_s: int = Field(default=24 * 3600, gt=0)
    # A turn holds its session's lock as a lease renewed every third of this: a replica that dies
    # mid-turn blocks its session for at most this long.
    session_lock_ttl_s: float = Field(default=30.0, ge=1.0)

    # Engine: a stock vLLM OpenAI server (or a router in front of several) when a URL is given;
    # otherwise vLLM in this process.
    engine_url: str | None = None
    engine_model: str | None = Field(default=None, description="the model requests name there; default: the adapter")
    engine_wait_s: float = Field(default=300.0, ge=0, description="at start, how long to wait for the engine")
    # Encoders: an encoder service (`pandaserve encoders serve`) when a URL is given; otherwise in this process.
    encoder_url: str | None = None
    # In-process vLLM.
    kv_cache_gib: int = Field(default=1, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU (whole GiB)")
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int = Field(default=32, gt=0)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)

    # Encoder pool: micro-batches across concurrent requests, decode worker processes, bounded queues.
    encoder_max_batch_size: int = Field(default=32, gt=0, description="files per ImageBind forward")
    encoder_max_wait_ms: float = Field(default=5.0, ge=0, description="how long a batch waits to fill")
    decode_workers: int = Field(default=2, gt=0, description="processes decoding and preprocessing media")
    encoder_gpu_dtype: Literal["float16", "bfloat16"] = "float16"  # ImageBind on a GPU; fp32 on CPU
    max_decode_queue: int = Field(default=256, gt=0, description="files decoding or waiting to; more: 503")
    max_encode_queue: int = Field(default=256, gt=0, description="decoded files waiting for ImageBind; more: 503")
    # Every decode runs under these in its worker process: past them the file fails alone (413) and
    # the worker goes on, or (stuck, killed) is replaced.
    decode_deadline_s: float = Field(default=60.0, ge=0, description="wall clock per file decoded; 0: none")
    decode_memory_bytes: int = Field(
        default=4 * 2**30, ge=0, description="a decode worker's memory beyond its own at start (RLIMIT_AS); 0: none"
    )
    # Embedding cache: in-process LRU, in front of Redis (when REDIS_URL is set) shared by replicas.
    embedding_cache_bytes: int = Field(default=256 * 2**20, ge=0)
    embedding_cache_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # Engine admission: beyond these, a turn is refused at once (503 + Retry-After).
    max_engine_requests: int = Field(default=256, gt=0, description="turns generating or queued in the engine")
    max_queued_prompt_tokens: int = Field(default=65_536, gt=0, description="prompt tokens not yet prefilled")

    # Request limits.
    max_file_bytes: int = Field(default=20 * 2**20, gt=0)
    max_body_bytes: int = Field(default=100 * 2**20, gt=0, description="a whole request, enforced while it streams in")
    max_files_per_modality: int = Field(default=4, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="image, thermal, depth: width x height")
    max_image_side: int = Field(default=16_384, gt=0)
    max_audio_seconds: float = Field(default=600.0, gt=0)
    max_audio_channels: int = Field(default=16, gt=0)
    min_audio_sample_rate: int = Field(default=4_000, gt=0, description="Hz")
    max_audio_sample_rate: int = Field(default=384_000, gt=0, description="Hz")
    max_video_seconds: float = Field(default=600.0, gt=0)
    max_video_pixels: int = Field(default=4096 * 2160, gt=0, description="one video frame: width x height")
    max_video_aspect_ratio: float = Field(default=50.0, ge=1, description="video frames: long side / short side")
    max_video_frames: int = Field(default=60_000, gt=0, description="frames in the video stream")
    max_video_fps: float = Field(default=240.0, gt=0, description="declared and real frame rate")
    max_video_frames_per_sample: int = Field(
        default=1_000, gt=0, description="frames decoded to reach one sampled frame (keyframe distance)"
    )
    max_imu_samples: int = Field(default=100_000, gt=0)
    max_csv_line_bytes: int = Field(default=4_096, gt=0, description="one line of an IMU CSV")
    max_message_chars: int = Field(default=16_000, gt=0)
    max_session_media: int = Field(default=64, gt=0, description="media files a session holds, all turns together")
    # /v1 sends the whole conversation with every request: bounded before anything is tokenized.
    max_messages: int = Field(default=256, gt=0, description="messages in one /v1 request")
    max_conversation_chars: int = Field(default=128_000, gt=0, description="their text, all together")

    # OpenAI-compatible API (/v1). The model name clients send; default: the bundle directory's name.
    served_model_name: str | None = None
    # Remote media URLs in /v1 content parts: comma-separated hosts allowed (exact match); empty = off.
    # Their size cap is max_file_bytes.
    remote_media_hosts: str = ""
    remote_media_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("more_bundles", mode="before")
    @classmethod
    def comma_separated(cls, value: object) -> object:
        return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value

    def batching(self) -> Batching:
        return Batching(
            max_batch_size=self.encoder_max_batch_size,
            max_wait_ms=self.encoder_max_wait_ms,
            decode_workers=self.decode_workers,
            max_decode_queue=self.max_decode_queue,
            max_encode_queue=self.max_encode_queue,
            decode_deadline_s=self.decode_deadline_s,
            decode_memory_bytes=self.decode_memory_bytes,
            tenant_share=self.tenant_queue_share,
        )

    def turn_limits(self) -> TurnLimits:
        return TurnLimits(
            max_message_chars=self.max_message_chars,
            max_files_per_modality=self.max_files_per_modality,
            max_messages=self.max_messages,
            max_conversation_chars=self.max_conversation_chars,
        )

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_pixels=self.max_image_pixels,
            max_side=self.max_image_side,
            max_aspect_ratio=self.max_video_aspect_ratio,
            max_audio_seconds=self.max_audio_seconds,
            max_audio_channels=self.max_audio_channels,
            min_audio_sample_rate=self.min_audio_sample_rate,
            max_audio_sample_rate=self.max_audio_sample_rate,
            max_video_seconds=self.max_video_seconds,
            max_video_pixels=self.max_video_pixels,
            max_video_frames=self.max_video_frames,
            max_video_fps=self.max_video_fps,
            max_video_frames_per_sample=self.max_video_frames_per_sample,
            max_imu_samples=self.max_imu_samples,
            max_csv_line_bytes=self.max_csv_line_bytes,
        )
