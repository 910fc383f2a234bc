"""The engine seam: prompt embeddings in, token deltas out. The HTTP layer never sees vLLM."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass(frozen=True)
class EngineConfig:
    """What an in-process engine is built from (the bundle's LLM and adapter, and the engine's limits)."""

    model_dir: Path
    lora_dir: Path | None  # a PEFT adapter applied to every request that asks for it, or none
    lora_targets: tuple[str, ...]  # the adapter's target modules, named as in the HF model
    # Some requests run without the adapter (another family on the same base LLM): see vllm_local.
    bare_requests: bool = False
    kv_cache_gib: int = 1  # on CPU
    max_model_len: int | None = None  # None: the model's own
    max_num_seqs: int = 32
    gpu_memory_utilization: float = 0.85


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop_token_ids: tuple[int, ...]
    logprobs: int | None = None  # how many top alternatives per token, beside the sampled one


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass(frozen=True)
class Delta:
    """New tokens since the last delta; `finish_reason` ("stop" | "length") on the last one."""

    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token, when asked for
    queued_s: float | None = None  # on the first delta: how long the request waited for the scheduler


class Engine(Protocol):
    max_model_len: int

    def generate(
        self,
        request_id: str,
        prompt_embeds: torch.Tensor,
        sampling: Sampling,
        affinity: str | None = None,
        cache_salt: str | None = None,
        adapter: bool = True,
    ) -> AsyncGenerator[Delta, None]:
        """Stream deltas; closing the iterator early aborts the request in the engine.

        `affinity` (a session's id) keys the engine choice where a router spreads requests over
        several engines, so a conversation's later turns find their prefix in one engine's cache.
        An engine in this process has no choice to make and ignores it. `cache_salt` (one per
        tenant) keeps prefix-cache hits within requests of the same salt: a tenant cannot time
        whether another tenant sent the same prompt. `adapter=False` runs the base LLM without the
        engine's LoRA adapter: a model served on the bare base beside one that has it (Video-LLaMA
        beside PandaGPT). A remote engine serves the one model it was connected for, and ignores it.
        """
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    async def close(self) -> None:
        """Stop the engine (in-process) or let go of it (remote)."""
        ...
