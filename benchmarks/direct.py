"""(b) The direct engine: the service's own engine (LocalVLLMEngine, vLLM AsyncLLM in this process,
engine core in a child) fed the same prompt embeddings straight, with no HTTP, sessions or encoding.

Every conversation's media slots are computed before the clock starts (the encoder pool and the
projector, as the service computes them), so what the run measures is the engine alone; the
service's output token throughput over this one is what the API layer leaves of the engine.
A second turn's prompt needs the first turn's reply: it is built (tokenizing, a table lookup) as
its turn starts, as the service does.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import aclosing
from pathlib import Path

import torch

from benchmarks.load import Run, closed_loop
from benchmarks.metrics import RequestRecord
from benchmarks.parts import Parts
from benchmarks.server import cpu_split, machine_busy_seconds
from benchmarks.workload import Conversation
from encoders.media import MediaInput
from encoders.pool import EncoderPool
from service.engines.base import Engine

# At import, not inside direct_run: importing vLLM keeps the importing frames alive (an exception it
# catches keeps its traceback), and a direct_run frame kept alive would keep the engine alive until
# interpreter exit, when AsyncLLM.__del__ fails. benchmarks.direct is itself imported lazily.
from service.engines.vllm_local import LocalVLLMEngine
from service.families.base import Medium
from service.resources import engine_config
from service.settings import Settings


async def slots(parts: Parts, conversations: list[Conversation]) -> dict[int, list[list[Medium]]]:
    """id(conversation) -> for each of its turns, the projected media of every turn so far."""
    pool = EncoderPool(parts.imagebind, parts.limits, parts.bundle.manifest.modalities)
    out: dict[int, list[list[Medium]]] = {}
    try:
        for conversation in conversations:
            embeddings: list[torch.Tensor] = []
            modalities: list[str] = []
            per_turn = []
            for turn in conversation.turns:
                items = [MediaInput(m.modality, m.data, f"{m.modality}[{k}]") for k, m in enumerate(turn.media)]
                embeddings += await pool.encode(items) if items else []
                modalities += [m.modality for m in turn.media]
                per_turn.append(parts.media_rows(modalities, embeddings))
            out[id(conversation)] = per_turn
    finally:
        await pool.close()
    return out


class DirectTarget:
    def __init__(self, engine: Engine, parts: Parts, slots: dict[int, list[list[Medium]]]) -> None:
        self.engine = engine
        self.parts = parts
        self.slots = slots

    async def conversation(self, conversation: Conversation, t0: float) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        history: list[tuple[str, str]] = []
        for i, turn in enumerate(conversation.turns):
            started = time.perf_counter()
            record = RequestRecord(kind=conversation.kind, turn=i, start=started - t0)
            prompt = self.parts.prompt(history, turn.message, self.slots[id(conversation)][i])
            ids: list[int] = []
            last: float | None = None
            try:
                stream = self.engine.generate(uuid.uuid4().hex, prompt, self.parts.sampling(turn.max_tokens))
                async with aclosing(stream) as deltas:
                    async for delta in deltas:
                        if not delta.token_ids:
                            continue
                        now = time.perf_counter()
                        if last is None:
                            record.ttft = now - started
                        else:
                            record.itl.append(now - last)
                        last = now
                        ids += delta.token_ids
            except Exception as exc:  # a failed request is a record, as over HTTP
                record.error = f"{type(exc).__name__}: {exc}"
                records.append(record)
                break
            record.e2el = (last or time.perf_counter()) - started
            record.output_tokens, record.prompt_tokens, record.ok = len(ids), len(prompt), True
            records.append(record)
            history.append((turn.message, self.parts.reply_text(ids)))
        return records


async def direct_run(
    bundle: Path, conversations: list[Conversation], concurrency: int, warm: Conversation
) -> tuple[Run, dict[str, float]]:
    """The run, and the CPU seconds it took: this process (AsyncLLM's front end, the load generator) and the
    engine core's processes."""
    parts = Parts.load(bundle)
    computed = await slots(parts, [warm, *conversations])
    config = engine_config(parts.bundle, parts.family, Settings(bundle=bundle))
    engine = await asyncio.to_thread(LocalVLLMEngine.start, config)
    try:
        target = DirectTarget(engine, parts, computed)
        await target.conversation(warm, time.perf_counter())  # untimed: first-step costs
        before, client, machine = cpu_split(os.getpid()), time.process_time(), machine_busy_seconds()
        run = await closed_loop(target.conversation, conversations, concurrency)
        after = cpu_split(os.getpid())
        cpu = {"frontend_and_client": time.process_time() - client, "engine": after["children"] - before["children"]}
        cpu["other"] = max(machine_busy_seconds() - machine - sum(cpu.values()), 0.0)
        return run, cpu
    finally:
        await engine.close()
