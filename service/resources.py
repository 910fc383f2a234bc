"""Everything a server needs, built once at start-up (in the app's lifespan) and closed at shutdown.

`build_resources` makes the embedded default: ImageBind and vLLM in this process, sessions in memory
or, with REDIS_URL, in Redis (one client shared by sessions, rate limits and the embedding cache).
PANDASERVE_ENGINE_URL and PANDASERVE_ENCODER_URL put either seam in a process of its own (a stock
vLLM server; `pandaserve encoders serve`), which makes the API a stateless replica. The app takes
any `Resources`, so tests build them with fakes at the two seams instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch
from opentelemetry.trace import Tracer

from encoders.cache import EmbeddingCache, namespace
from encoders.imagebind import ImageBindConfig, load_imagebind
from encoders.media import Encoder
from encoders.pool import EncoderPool
from encoders.projector import ProjectedEncoder, load_projector
from encoders.videollama import VideoLlamaConfig
from encoders.videollama.pool import VideoLlamaEncoder, VideoLlamaPool, load_branches
from service.bundle import Bundle, load_bundle
from service.core.api_keys import ApiKeys, read_keys
from service.core.chat_service import ChatService
from service.core.embedding_store import RedisEmbeddingStore
from service.core.engine_admission import EngineAdmission
from service.core.prompt import PromptAssembler
from service.core.rate_limit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from service.core.session_store import MemorySessionStore, RedisSessionStore, SessionStore, connect_redis
from service.core.turn_limits import TurnLimits
from service.engines.base import Engine, EngineConfig
from service.engines.vllm_remote import RemoteEngineConfig, RemoteVLLMEngine
from service.engines.vllm_settings import ADAPTER
from service.errors import NotReady
from service.families import generation_defaults, load_family
from service.families.base import Family
from service.metrics import Metrics
from service.remote_encoder import RemoteEncoder
from service.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    """The model as /v1/models shows it."""

    id: str
    created: int


@dataclass
class Resources:
    chat: ChatService
    encoder: Encoder
    engine: Engine
    store: SessionStore
    keys: ApiKeys
    limiter: RateLimiter
    limits: TurnLimits
    model: ServedModel
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in self.on_close:
            await close()


def engine_config(bundle: Bundle, family: Family, settings: Settings) -> EngineConfig:
    return EngineConfig(
        model_dir=bundle.llm_dir,
        lora_dir=bundle.lora_dir,
        lora_targets=family.lora.targets if family.lora else (),
        kv_cache_gib=settings.kv_cache_gib,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )


def served_model(bundle: Bundle, settings: Settings) -> ServedModel:
    created = int((bundle.root / "manifest.json").stat().st_mtime)
    return ServedModel(settings.served_model_name or bundle.root.name, created)


async def start_encoders(
    bundle: Bundle, settings: Settings, metrics: Metrics, shared: RedisEmbeddingStore | None
) -> Encoder:
    """The bundle's encoders and their batched pool in this process, decode workers started: ImageBind
    behind PandaGPT's projector, or Video-LLaMA's branches (on ImageBind for audio)."""
    # On a GPU in half precision (the originals ran their encoders in fp16); fp32 on CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, settings.encoder_gpu_dtype) if device == "cuda" else torch.float32
    imagebind = None
    if bundle.manifest.imagebind is not None:
        imagebind = load_imagebind(bundle.imagebind_path, ImageBindConfig(**bundle.imagebind.config), device, dtype)
    limits = settings.media_limits()
    weights = [bundle.imagebind_path] if imagebind is not None else []
    spec = bundle.manifest.videollama
    if spec is not None:
        weights += [bundle.path(spec.vision), *([bundle.path(spec.audio)] if spec.audio else [])]
    cache_namespace = await asyncio.to_thread(namespace, [str(path) for path in weights], limits)
    cache = EmbeddingCache(cache_namespace, settings.embedding_cache_bytes, shared, observer=metrics)
    batching = settings.batching()
    if spec is not None:
        config = VideoLlamaConfig(**spec.config)
        audio_path = bundle.path(spec.audio) if spec.audio else None
        vision, audio = load_branches(config, bundle.path(spec.vision), audio_path, device)
        videollama = VideoLlamaPool(
            vision, audio, imagebind, limits, batching=batching, cache=cache, device=device, observer=metrics
        )
        await videollama.start()
        return VideoLlamaEncoder(videollama)
    assert imagebind is not None  # the manifest's rule for PandaGPT
    pool = EncoderPool(
        imagebind, limits, bundle.manifest.modalities, batching=batching, cache=cache, device=device, observer=metrics
    )
    await pool.start()
    return ProjectedEncoder(pool, load_projector(bundle.projector_path))


async def start_engine(bundle: Bundle, family: Family, settings: Settings) -> Engine:
    """The stock vLLM server at PANDASERVE_ENGINE_URL, or vLLM in this process."""
    if settings.engine_url:
        model = settings.engine_model or (ADAPTER if bundle.lora_dir else served_model(bundle, settings).id)
        config = RemoteEngineConfig(settings.engine_url, model)
        return await RemoteVLLMEngine.connect(config, wait_s=settings.engine_wait_s)
    # Imported here: vllm is heavy and only this path needs it.
    from service.engines.vllm_local import LocalVLLMEngine

    return await asyncio.to_thread(LocalVLLMEngine.start, engine_config(bundle, family, settings))


async def build_resources(settings: Settings, metrics: Metrics, tracer: Tracer) -> Resources:
    if settings.bundle is None:
        raise NotReady("no model bundle configured: set PANDASERVE_BUNDLE or pass --bundle")
    keys = ApiKeys(read_keys(settings.api_keys, settings.api_keys_file))
    if not keys.enabled and settings.redis_url:
        raise NotReady(
            "set PANDASERVE_API_KEYS or PANDASERVE_API_KEYS_FILE: only the embedded default "
            "(sessions in memory, no REDIS_URL) runs without API keys"
        )
    bundle = load_bundle(settings.bundle)
    family = load_family(bundle)
    on_close: list[Callable[[], Awaitable[None]]] = []

    client = connect_redis(settings.redis_url) if settings.redis_url else None
    store: SessionStore
    limiter: RateLimiter
    rpm, concurrency, failures = (
        settings.rate_limit_rpm,
        settings.rate_limit_concurrency,
        settings.auth_failures_per_minute,
    )
    if client is None:
        store, shared = MemorySessionStore(settings.session_ttl_s, settings.max_sessions_per_key), None
        limiter = MemoryRateLimiter(rpm, concurrency, failures)
    else:
        on_close.append(client.aclose)
        store = RedisSessionStore(client, settings.session_ttl_s, settings.max_sessions_per_key)
        limiter = RedisRateLimiter(client, rpm, concurrency, failures, settings.in_flight_deadline_s)
        shared = RedisEmbeddingStore(client, settings.embedding_cache_ttl_s)
    await store.ping()

    if settings.encoder_url and settings.engine_url:
        # A stateless replica's tensor work is tiny (a table lookup, a serialization): torch's
        # intra-op threads would only spin between ops, costing CPU per turn (measured: 31 -> 23 ms).
        torch.set_num_threads(1)
    encoder: Encoder
    if settings.encoder_url:
        encoder = RemoteEncoder(settings.encoder_url)
    else:
        encoder = await start_encoders(bundle, settings, metrics, shared)
    on_close.insert(0, encoder.close)

    engine = await start_engine(bundle, family, settings)
    on_close.append(engine.close)
    chat = ChatService(
        encoder=encoder,
        family=family,
        prompts=PromptAssembler.load(bundle.llm_dir),
        engine=engine,
        store=store,
        metrics=metrics,
        generation=generation_defaults(family, bundle),
        tracer=tracer,
        admission=EngineAdmission(
            settings.max_engine_requests, settings.max_queued_prompt_tokens, settings.tenant_queue_share
        ),
        lock_ttl_s=settings.session_lock_ttl_s,
        max_session_media=settings.max_session_media,
    )
    return Resources(
        chat=chat,
        encoder=encoder,
        engine=engine,
        store=store,
        keys=keys,
        limiter=limiter,
        limits=settings.turn_limits(),
        model=served_model(bundle, settings),
        on_close=on_close,
    )
