"""Fakes at the two seams only (the engine and the encoder), for the unit tier: everything between
them (the chat core, the family, the stores, the HTTP edge) is the real code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path

import torch
from opentelemetry import trace

from encoders.media import MediaInput, SoftPrompt
from service.bundle import load_bundle
from service.core.api_keys import ApiKeys
from service.core.chat_service import ChatService
from service.core.engine_admission import EngineAdmission
from service.core.prompt import PromptAssembler
from service.core.rate_limit import MemoryRateLimiter
from service.core.session_store import MemorySessionStore
from service.engines.base import Delta, Sampling
from service.families import load_family
from service.families.base import GenerationDefaults
from service.metrics import Metrics
from service.resources import Resources, ServedModel
from service.settings import Settings


class ScriptedEngine:
    """Replays a script of token chunks, like vLLM's DELTA outputs; records aborted requests."""

    max_model_len = 2048

    def __init__(self, chunks: list[list[int]], eos: int = 2, gate: asyncio.Event | None = None) -> None:
        self.chunks = chunks
        self.eos = eos
        self.gate = gate
        self.aborted: list[str] = []
        self.prompts: list[torch.Tensor] = []
        self.affinities: list[str | None] = []
        self.cache_salts: list[str | None] = []  # what each request asked a router to key its engine on

    async def generate(
        self,
        request_id: str,
        prompt: torch.Tensor,
        sampling: Sampling,
        affinity: str | None = None,
        cache_salt: str | None = None,
        adapter: bool = True,
    ) -> AsyncGenerator[Delta, None]:
        self.prompts.append(prompt)
        self.affinities.append(affinity)
        self.cache_salts.append(cache_salt)
        finished = False
        try:
            for i, chunk in enumerate(self.chunks):
                if self.gate is not None and i == 2:  # after one token could be released
                    await self.gate.wait()
                last = chunk[-1]
                stop = last in sampling.stop_token_ids or last == self.eos
                done = i == len(self.chunks) - 1 or stop
                yield Delta(chunk, ("stop" if stop else "length") if done else None)
                if done:
                    finished = True
                    return
        finally:
            if not finished:
                self.aborted.append(request_id)

    async def check_health(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FixedEncoder:
    """Every file's embedding and soft prompt are constant vectors (its position in the request, scaled)."""

    def __init__(self, hidden: int = 8) -> None:
        self.hidden = hidden
        self.encoded: list[MediaInput] = []

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        self.encoded += items
        return [torch.full((1024,), 0.01 * (i + 1)) for i, _ in enumerate(items)]

    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        self.encoded += items
        return [SoftPrompt(torch.full((1, self.hidden), 0.01 * (i + 1))) for i, _ in enumerate(items)]

    async def check_health(self) -> None:
        return None

    async def close(self) -> None:
        return None


def videollama_bundle(demo_bundle: Path, root: Path, **fields: object) -> Path:
    """A Video-LLaMA manifest over the demo bundle's LLM (its tokenizer and embedding table): what the
    family and the chat core read. `fields` replace the manifest's (e.g. template="llama2")."""
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    manifest.update(llm=str(demo_bundle / "llm"), imagebind={**manifest["imagebind"], "checkpoint": "x.pth"})
    manifest.update(family="videollama", lora=None, stop_token_ids=[], modalities=["image", "video", "audio"])
    manifest.update(fields)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def chat_service(bundle_dir: Path, engine: ScriptedEngine, encoder: FixedEncoder | None = None) -> ChatService:
    """The real chat core on the demo bundle's tokenizer and embedding table, between the two fakes."""
    bundle = load_bundle(bundle_dir)
    prompts = PromptAssembler.load(bundle.llm_dir)
    return ChatService(
        encoder=encoder or FixedEncoder(prompts.hidden_size),
        family=load_family(bundle),
        prompts=prompts,
        engine=engine,
        store=MemorySessionStore(ttl_s=60),
        metrics=Metrics(),
        generation=GenerationDefaults(max_tokens=64, temperature=0.0, top_p=1.0, top_k=-1),
        tracer=trace.NoOpTracer(),
        admission=EngineAdmission(max_requests=8, max_queued_prompt_tokens=10_000),
    )


def resources(chat: ChatService, keys: list[str] | None = None, rpm: int = 600) -> Resources:
    """What `create_app` serves, around a chat core made by `chat_service`."""
    assert isinstance(chat.engine, ScriptedEngine) and isinstance(chat.encoder, FixedEncoder)
    return Resources(
        chats={"demo": chat},
        models=[ServedModel("demo", 0)],
        engine=chat.engine,
        store=chat.store,
        keys=ApiKeys(keys or []),
        limiter=MemoryRateLimiter(rpm, concurrency=4),
        limits=Settings().turn_limits(),
    )
