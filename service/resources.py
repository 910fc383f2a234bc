"""Everything the app builds once at start-up (in the lifespan) and closes at shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch
from opentelemetry.trace import Tracer

from encoders.cache import EmbeddingCache, namespace
from encoders.imagebind import ImageBindConfig, load_imagebind
from encoders.pool import EncoderPool
from encoders.projector import load_projector
from service.auth import ApiKeys, read_keys
from service.bundle import Bundle, load_bundle
from service.chat import ChatService, EngineAdmission
from service.embedding_store import RedisEmbeddingStore
from service.engines.base import Engine, Sampling
from service.errors import NotReady
from service.metrics import Metrics
from service.prompt import PromptBuilder
from service.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from service.sessions import RedisSessionStore, SessionStore, open_session_store
from service.settings import Settings


@dataclass
class Resources:
    bundle: Bundle
    engine: Engine
    store: SessionStore
    pool: EncoderPool
    chat: ChatService
    keys: ApiKeys
    limiter: RateLimiter

    @classmethod
    async def build(cls, settings: Settings, metrics: Metrics, tracer: Tracer) -> Resources:
        if settings.bundle is None:
            raise NotReady("no model bundle configured: set PANDASERVE_BUNDLE or pass --bundle")
        keys = ApiKeys(read_keys(settings.api_keys, settings.api_keys_file))
        if not keys.enabled and settings.redis_url:
            raise NotReady(
                "set PANDASERVE_API_KEYS or PANDASERVE_API_KEYS_FILE: only the embedded default "
                "(sessions in memory, no REDIS_URL) runs without API keys"
            )
        bundle = load_bundle(settings.bundle)
        manifest = bundle.manifest
        # On a GPU in half precision (the original ran ImageBind in fp16); fp32 on CPU.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = getattr(torch, settings.encoder_gpu_dtype) if device == "cuda" else torch.float32
        config = ImageBindConfig(**manifest.imagebind.config)
        imagebind = load_imagebind(bundle.imagebind_path, config, device, dtype)
        prompts = PromptBuilder.load(bundle.tokenizer_path, bundle.llm_dir)
        store = open_session_store(settings.redis_url, settings.session_ttl_s)
        await store.ping()
        shared = (
            RedisEmbeddingStore(store.client, settings.embedding_cache_ttl_s)
            if isinstance(store, RedisSessionStore)
            else None
        )
        limits = settings.media_limits()
        cache_namespace = await asyncio.to_thread(namespace, str(bundle.imagebind_path), limits)
        cache = EmbeddingCache(cache_namespace, settings.embedding_cache_bytes, shared, observer=metrics)
        pool = EncoderPool(
            imagebind,
            limits,
            manifest.modalities,
            batching=settings.batching(),
            cache=cache,
            device=device,
            observer=metrics,
        )
        await pool.start()
        rpm, concurrency = settings.rate_limit_rpm, settings.rate_limit_concurrency
        limiter: RateLimiter = (
            RedisRateLimiter(store.client, rpm, concurrency)
            if isinstance(store, RedisSessionStore)
            else MemoryRateLimiter(rpm, concurrency)
        )
        # Imported here: vllm is heavy and only this path needs it (tests of the HTTP layer use fakes).
        from service.engines.vllm_local import LocalVLLMEngine

        engine = await asyncio.to_thread(LocalVLLMEngine.start, bundle, settings)
        gen = manifest.generation
        defaults = Sampling(
            max_tokens=gen.max_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            seed=None,
            stop_token_ids=tuple(manifest.stop_token_ids),
        )
        chat = ChatService(
            pool=pool,
            projector=load_projector(bundle.projector_path),
            prompts=prompts,
            engine=engine,
            store=store,
            metrics=metrics,
            defaults=defaults,
            tracer=tracer,
            admission=EngineAdmission(settings.max_engine_requests, settings.max_queued_prompt_tokens),
        )
        return cls(bundle=bundle, engine=engine, store=store, pool=pool, chat=chat, keys=keys, limiter=limiter)

    async def close(self) -> None:
        await self.pool.close()
        await self.store.close()
        self.engine.shutdown()
