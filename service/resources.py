"""Everything a server needs, built once at start-up (in the app's lifespan) and closed at shutdown.

`build_resources` makes the embedded default: ImageBind and vLLM in this process, sessions in memory
or, with REDIS_URL, in Redis (one client shared by sessions, rate limits and the embedding cache).
PANDASERVE_ENGINE_URL and PANDASERVE_ENCODER_URL put either seam in a process of its own (a stock
vLLM server; `pandaserve encoders serve`), which makes the API a stateless replica. The app takes
any `Resources`, so tests build them with fakes at the two seams instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from opentelemetry.trace import Tracer

from encoders.cache import EmbeddingCache, namespace
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
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
from service.errors import BadRequest, NotFound, NotReady
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
    # Each served model's chat core, by its id (the first is the default): one engine behind them all.
    chats: dict[str, ChatService]
    models: list[ServedModel]
    engine: Engine
    store: SessionStore
    keys: ApiKeys
    limiter: RateLimiter
    limits: TurnLimits
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def chat(self) -> ChatService:
        """The default model's."""
        return next(iter(self.chats.values()))

    def served(self, asked: str | None) -> tuple[ServedModel, ChatService]:
        """The model a request names (None: the default); NotFound naming `model` for one not served."""
        model = self.models[0] if asked is None else next((m for m in self.models if m.id == asked), None)
        if model is None:
            names = ", ".join(repr(m.id) for m in self.models)
            raise NotFound(f"the model {asked!r} does not exist; this server serves {names}", param="model")
        return model, self.chats[model.id]

    async def chat_for_turn(self, tenant: str | None, session_id: str | None, asked: str | None) -> ChatService:
        """Where a turn goes: the model asked for (None: the default); a session goes on with its own
        model, which a request may name but not change."""
        if session_id is not None and len(self.models) > 1:
            session = await self.store.get(session_id)
            own = session.model if session is not None and session.tenant == tenant else None
            if own in self.chats:  # (a model no longer served: the one asked for takes the session on)
                if asked is not None and asked != own:
                    raise BadRequest(
                        f"the session is a conversation with the model {own!r}, not {asked!r}", param="model"
                    )
                return self.chats[own]
        return self.served(asked)[1]

    async def close(self) -> None:
        for close in self.on_close:
            await close()


def engine_config(bundle: Bundle, family: Family, settings: Settings, bare_requests: bool = False) -> EngineConfig:
    return EngineConfig(
        model_dir=bundle.llm_dir,
        lora_dir=bundle.lora_dir,
        lora_targets=family.lora.targets if family.lora else (),
        bare_requests=bare_requests,
        kv_cache_gib=settings.kv_cache_gib,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )


def served_model(bundle: Bundle, name: str | None = None) -> ServedModel:
    """The bundle as clients name it: `name` (PANDASERVE_SERVED_MODEL_NAME), or its directory's name."""
    created = int((bundle.root / "manifest.json").stat().st_mtime)
    return ServedModel(name or bundle.root.name, created)


async def start_encoders(
    bundle: Bundle,
    settings: Settings,
    metrics: Metrics,
    shared: RedisEmbeddingStore | None,
    imagebinds: dict[Path, ImageBindModel] | None = None,
) -> Encoder:
    """The bundle's encoders and their batched pool in this process, decode workers started: ImageBind
    behind PandaGPT's projector, or Video-LLaMA's branches (on ImageBind for audio). `imagebinds`:
    checkpoints already loaded, by path (bundles served together share one copy)."""
    # On a GPU in half precision (the originals ran their encoders in fp16); fp32 on CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, settings.encoder_gpu_dtype) if device == "cuda" else torch.float32
    imagebind = None
    imagebinds = {} if imagebinds is None else imagebinds
    if bundle.manifest.imagebind is not None:
        path = bundle.imagebind_path.resolve()
        if path not in imagebinds:
            imagebinds[path] = load_imagebind(path, ImageBindConfig(**bundle.imagebind.config), device, dtype)
        imagebind = imagebinds[path]
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


async def start_engine(bundle: Bundle, family: Family, settings: Settings, bare_requests: bool = False) -> Engine:
    """The stock vLLM server at PANDASERVE_ENGINE_URL, or vLLM in this process."""
    if settings.engine_url:
        model = settings.engine_model or (
            ADAPTER if bundle.lora_dir else served_model(bundle, settings.served_model_name).id
        )
        config = RemoteEngineConfig(settings.engine_url, model)
        return await RemoteVLLMEngine.connect(config, wait_s=settings.engine_wait_s)
    # Imported here: vllm is heavy and only this path needs it.
    from service.engines.vllm_local import LocalVLLMEngine

    return await asyncio.to_thread(LocalVLLMEngine.start, engine_config(bundle, family, settings, bare_requests))


def check_served_together(bundles: list[Bundle], settings: Settings) -> None:
    """Bundles served together share one engine, so one base LLM (and at most one adapter on it), and
    the embedded engine and encoders (a remote engine or encoder service serves one bundle)."""
    first = bundles[0]
    for other in bundles[1:]:
        widths = [json.loads((b.llm_dir / "config.json").read_text())["hidden_size"] for b in (first, other)]
        if widths[0] != widths[1]:
            raise NotReady(
                f"the bundles {first.root} and {other.root} are on different LLMs (hidden size {widths[0]} and "
                f"{widths[1]}): one engine serves one base LLM"
            )
        if other.llm_dir.resolve() != first.llm_dir.resolve():
            raise NotReady(
                f"the bundles {first.root} and {other.root} name different LLM directories ({first.llm_dir} and "
                f"{other.llm_dir}): bundles served together name the same one"
            )
    if len(bundles) > 1 and sum(b.lora_dir is not None for b in bundles) > 1:
        raise NotReady("of the bundles served together, at most one may carry a LoRA adapter")
    if len(bundles) > 1 and (settings.engine_url or settings.encoder_url):
        raise NotReady(
            "several bundles are served by the embedded engine and encoders: unset PANDASERVE_ENGINE_URL and "
            "PANDASERVE_ENCODER_URL, or serve one bundle"
        )


async def build_resources(settings: Settings, metrics: Metrics, tracer: Tracer) -> Resources:
    if settings.bundle is None:
        raise NotReady("no model bundle configured: set PANDASERVE_BUNDLE or pass --bundle")
    keys = ApiKeys(read_keys(settings.api_keys, settings.api_keys_file))
    if not keys.enabled and settings.redis_url:
        raise NotReady(
            "set PANDASERVE_API_KEYS or PANDASERVE_API_KEYS_FILE: only the embedded default "
            "(sessions in memory, no REDIS_URL) runs without API keys"
        )
    bundles = [load_bundle(path) for path in [settings.bundle, *settings.more_bundles]]
    check_served_together(bundles, settings)
    families = [load_family(bundle) for bundle in bundles]
    # The first is named as PANDASERVE_SERVED_MODEL_NAME says; the others by their directories.
    models = [served_model(bundles[0], settings.served_model_name), *(served_model(b) for b in bundles[1:])]
    if len({m.id for m in models}) < len(models):
        raise NotReady(f"the bundles served together need different names, not {[m.id for m in models]}")
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
    encoders: list[Encoder] = []
    imagebinds: dict[Path, ImageBindModel] = {}  # ImageBind loaded once for the bundles that share it
    for bundle in bundles:
        if settings.encoder_url:
            encoders.append(RemoteEncoder(settings.encoder_url))
        else:
            encoders.append(await start_encoders(bundle, settings, metrics, shared, imagebinds))
        on_close.insert(0, encoders[-1].close)

    # The engine is built from the bundle with the adapter, if one has it: the LLM is every bundle's.
    engine_bundle, engine_family = next(
        ((b, f) for b, f in zip(bundles, families, strict=True) if f.lora), (bundles[0], families[0])
    )
    # Another bundle's requests run without the adapter beside requests with it.
    bare_requests = engine_family.lora is not None and any(f.lora is None for f in families)
    engine = await start_engine(engine_bundle, engine_family, settings, bare_requests)
    on_close.append(engine.close)
    prompts = PromptAssembler.load(bundles[0].llm_dir)
    admission = EngineAdmission(
        settings.max_engine_requests, settings.max_queued_prompt_tokens, settings.tenant_queue_share
    )
    chats = {
        model.id: ChatService(
            model=model.id,
            encoder=encoder,
            family=family,
            prompts=prompts,
            engine=engine,
            store=store,
            metrics=metrics,
            generation=generation_defaults(family, bundle),
            tracer=tracer,
            admission=admission,
            lock_ttl_s=settings.session_lock_ttl_s,
            max_session_media=settings.max_session_media,
        )
        for model, bundle, family, encoder in zip(models, bundles, families, encoders, strict=True)
    }
    return Resources(
        chats=chats,
        models=models,
        engine=engine,
        store=store,
        keys=keys,
        limiter=limiter,
        limits=settings.turn_limits(),
        on_close=on_close,
    )
