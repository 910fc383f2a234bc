"""`python -m benchmarks --scaled`: the scaled topology beside the embedded default and the stock vLLM
server, on the same workload, in one report.

Three runs, one after another (2 cores: never two engines at once), each at the top concurrency
on the same conversations (a prefix of the workload's sequence):

1. **embedded**: `pandaserve serve` with vLLM and ImageBind in its process (the default);
2. **scaled**: a stock vLLM server (the command `pandaserve engine command` prints), vllm-router in
   front of it keyed on the session, the encoder service, and one API replica pointed at both;
3. **stock**: the same stock server, after the scaled run, fed the same prompt embeddings directly
   over HTTP (our remote engine's client, no API, no router, no encoding) by the same load
   generator: the peer a user would otherwise build on. Its media slots are computed before its
   clock starts, as the direct engine's are.

The embedded and scaled runs each take an untimed warm-up, then the conversations with every file
new (**cold**), then the same conversations again (**warm**: the embedding cache can hit every
file, and the engine's prefix cache holds what the cold pass left, as it does for the stock run
after them). Each run records CPU seconds by process (`api`: the API process alone; `children`:
its children); the engine's own /metrics give the bytes each turn sent it and its prefix-cache
hits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import HttpTarget, Run, closed_loop, service_client
from benchmarks.metrics import RequestRecord
from benchmarks.server import (
    children,
    cpu_seconds,
    cpu_split,
    encoder_service,
    machine_busy_seconds,
    redis_if_up,
    serve,
    stock_engine,
    vllm_router,
)
from benchmarks.workload import Conversation

# The engine's Prometheus samples read around each run (vLLM's own names; the HTTP ones come from the
# instrumentator its server mounts, per handler).
ENGINE_COUNTERS = {
    "request_bytes": 'http_request_size_bytes_sum{handler="/v1/completions"',
    "requests": 'http_request_size_bytes_count{handler="/v1/completions"',
    "prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "prefix_cache_hits": "vllm:prefix_cache_hits_total",
}


def engine_counters(url: str) -> dict[str, float]:
    return parse_counters(httpx.get(f"{url}/metrics", timeout=30).text)


def parse_counters(text: str) -> dict[str, float]:
    """The engine's counters above from its Prometheus text, summed over their labels (0 when absent)."""
    lines = text.splitlines()
    return {
        name: sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))
        for name, prefix in ENGINE_COUNTERS.items()
    }


async def idle_cpu_ms_per_s(pid: int, seconds: float = 5.0) -> float:
    """The API process's CPU while no request is in flight (its background work: probes, pools), per
    second: a run's `api_cpu_ms_per_turn` includes this much per second of the run."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return 1000 * (cpu_seconds(pid) - before) / seconds


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the stock server's engine core is a child)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


def ttft_by_turn(records: list[RequestRecord]) -> dict[str, float | None]:
    """Median TTFT (ms) of first and of second turns, and their ratio: with the router's affinity a
    second turn reaches the engine holding its conversation's prefix."""
    first = [r.ttft * 1000 for r in records if r.ok and r.turn == 0]
    second = [r.ttft * 1000 for r in records if r.ok and r.turn == 1]
    a = statistics.median(first) if first else None
    b = statistics.median(second) if second else None
    return {"first_ms": a, "second_ms": b, "second_vs_first": b / a if a and b else None}


class ScaledBench:
    """Fills `bench.runs["scaled"]`: the three runs and the figures the issue asks for."""

    def __init__(self, bench: Any) -> None:
        self.bench = bench  # benchmarks.__main__.Bench: the workload, nonces, summaries and records
        self.args: argparse.Namespace = bench.args
        self.top = max(self.args.concurrency)
        self.out: dict[str, Any] = {"concurrency": self.top}
        bench.runs["scaled"] = self.out
        count = max(4 if self.args.quick else 16, self.args.per_user * self.top)
        self.conversations = bench.conversations(count)  # the same for all three runs

    def run(self) -> None:
        redis_url = redis_if_up(self.args.redis_url)
        self.bench.sessions = redis_url or "memory"
        if redis_url is None:
            raise SystemExit("--scaled needs Redis (the API replica keeps its sessions there): see --redis-url")
        logs = self.args.out
        logs.mkdir(parents=True, exist_ok=True)
        with serve(self.args.bundle, logs, redis_url) as server:
            self.out["embedded"] = asyncio.run(self._service("embedded", server.url, server.headers, server.proc.pid))
        with stock_engine(self.args.bundle, logs) as engine:
            with (
                vllm_router([engine.url], logs) as router,
                encoder_service(self.args.bundle, logs, redis_url) as encoders,
            ):
                env = {"PANDASERVE_ENGINE_URL": router.url, "PANDASERVE_ENCODER_URL": encoders.url}
                parts = {"engine": engine.proc.pid, "router": router.proc.pid, "encoders": encoders.proc.pid}
                with serve(self.args.bundle, logs, redis_url, env) as replica:
                    scaled = self._service("scaled", replica.url, replica.headers, replica.proc.pid, engine.url, parts)
                    self.out["scaled"] = asyncio.run(scaled)
            self.out["stock"] = asyncio.run(self._stock(engine.url, {"engine": engine.proc.pid}))
        self.out["figures"] = figures(self.out)

    async def _service(
        self,
        name: str,
        url: str,
        headers: dict[str, str],
        pid: int,
        engine_url: str | None = None,
        parts: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        async with service_client(url, headers) as client:
            target = HttpTarget(client)
            warm_up = self.bench.workload.conversations(10_000, 8, self.bench.nonce())  # untimed first-call costs
            await closed_loop(target.conversation, warm_up, 4)
            out: dict[str, Any] = {"idle_api_cpu_ms_per_s": await idle_cpu_ms_per_s(pid)}
            for phase in ("cold", "warm"):  # the same conversations twice: every file new, then sent before
                run = closed_loop(target.conversation, self.conversations, self.top)
                out[phase] = await self._measured(f"{name}_{phase}", pid, run, engine_url, parts)
            return out

    async def _stock(self, engine_url: str, processes: dict[str, int]) -> dict[str, Any]:
        """The stock server fed the same prompts over HTTP by our remote engine's client."""
        # Imported here: benchmarks.direct imports vLLM, which the other runs do not need in this process.
        from benchmarks.direct import DirectTarget, slots
        from benchmarks.parts import Parts
        from service.engines.vllm_remote import RemoteEngineConfig, RemoteVLLMEngine
        from service.engines.vllm_settings import ADAPTER
        from service.resources import served_model
        from service.settings import Settings

        bundle_parts = Parts.load(self.args.bundle)
        computed = await slots(bundle_parts, self.conversations)  # before the clock: the engine alone is measured
        bundle = bundle_parts.bundle  # the model named as the API names it
        model = ADAPTER if bundle.lora_dir else served_model(bundle, Settings().served_model_name).id
        engine = await RemoteVLLMEngine.connect(RemoteEngineConfig(engine_url, model))
        try:
            target = DirectTarget(engine, bundle_parts, computed)
            run = closed_loop(target.conversation, self.conversations, self.top)
            return await self._measured("stock", None, run, engine_url, processes)
        finally:
            await engine.close()

    async def _measured(
        self,
        name: str,
        pid: int | None,
        runner: Coroutine[Any, Any, Run],
        engine_url: str | None,
        parts: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """The run's metrics, CPU seconds by process (the API's, its children's, each other part's with
        its own children, this client's, the rest of the machine's), and what the engine counted meanwhile."""
        parts = parts or {}
        before = (cpu_split(pid) if pid else {}) | {k: tree_cpu_seconds(p) for k, p in parts.items()}
        engine_before = engine_counters(engine_url) if engine_url else {}
        client, machine = time.process_time(), machine_busy_seconds()
        run = await runner
        after = (cpu_split(pid) if pid else {}) | {k: tree_cpu_seconds(p) for k, p in parts.items()}
        cpu = {k: after[k] - before[k] for k in after} | {"client": time.process_time() - client}
        cpu["other"] = max(machine_busy_seconds() - machine - sum(cpu.values()), 0.0)
        metrics = self.bench.summarize(name, run) | {"cpu_s": cpu, "ttft_by_turn": ttft_by_turn(run.records)}
        turns = metrics["completed"]
        if pid and turns:
            metrics["api_cpu_ms_per_turn"] = 1000 * cpu["api"] / turns
        if engine_url:
            counted = {k: v - engine_before[k] for k, v in engine_counters(engine_url).items()}
            metrics["engine"] = counted
            if counted["requests"]:
                metrics["engine_request_bytes_per_turn"] = counted["request_bytes"] / counted["requests"]
        return metrics


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def figures(out: dict[str, Any]) -> dict[str, float | None]:
    """The issue's figures (never asserted). Output tokens/s compare warm runs: the stock server gets
    its embeddings precomputed, so the like-for-like service run is the one whose files were sent before."""
    emb, sc, stock = out.get("embedded", {}), out.get("scaled", {}), out.get("stock", {})

    def tps(run: dict[str, Any] | None) -> float | None:
        return (run or {}).get("output_throughput")

    return {
        "scaled_vs_embedded_output_tps": _div(tps(sc.get("warm")), tps(emb.get("warm"))),
        "scaled_vs_embedded_output_tps_cold": _div(tps(sc.get("cold")), tps(emb.get("cold"))),
        "scaled_vs_stock_output_tps": _div(tps(sc.get("warm")), tps(stock)),
        "embedded_vs_stock_output_tps": _div(tps(emb.get("warm")), tps(stock)),
        "api_cpu_ms_per_turn_scaled": (sc.get("warm") or {}).get("api_cpu_ms_per_turn"),
        "api_cpu_ms_per_turn_embedded": (emb.get("warm") or {}).get("api_cpu_ms_per_turn"),
        "idle_api_cpu_ms_per_s_scaled": sc.get("idle_api_cpu_ms_per_s"),
        "idle_api_cpu_ms_per_s_embedded": emb.get("idle_api_cpu_ms_per_s"),
        "engine_request_bytes_per_turn": (sc.get("warm") or {}).get("engine_request_bytes_per_turn"),
        "second_vs_first_turn_ttft_scaled": (sc.get("warm") or {}).get("ttft_by_turn", {}).get("second_vs_first"),
        "second_vs_first_turn_ttft_stock": stock.get("ttft_by_turn", {}).get("second_vs_first"),
        "prefix_cache_hit_rate_scaled": _div(
            (sc.get("warm") or {}).get("engine", {}).get("prefix_cache_hits"),
            (sc.get("warm") or {}).get("engine", {}).get("prefix_cache_queries"),
        ),
    }


TARGETS = {"scaled_vs_stock_output_tps": (">=", 0.9), "api_cpu_ms_per_turn_scaled": ("<=", 5.0)}


def target_check(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = values.get(name)
        met = None if value is None else value >= bound if op == ">=" else value <= bound
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def table(out: dict[str, Any]) -> str:
    head = f"{'run':<16}{'ok':>5}{'fail':>5}{'req/s':>8}{'tok/s':>8}{'TTFT p50':>10}{'p95':>8}{'API ms/turn':>13}"
    lines = [head, "-" * len(head)]
    rows = [(f"{n} {p}", out[n][p]) for n in ("embedded", "scaled") if n in out for p in ("cold", "warm")]
    rows += [("stock", out["stock"])] if "stock" in out else []
    for name, m in rows:
        api = m.get("api_cpu_ms_per_turn")
        lines.append(
            f"{name:<16}{m['completed']:>5}{m['failed']:>5}{m['request_throughput']:>8.2f}"
            f"{m['output_throughput']:>8.1f}{m['ttft_ms']['median']:>10.0f}{m['ttft_ms']['p95']:>8.0f}"
            f"{'' if api is None else f'{api:.1f}':>13}"
        )
    return "\n".join(lines)


def conversations_turns(conversations: list[Conversation]) -> int:
    return sum(len(c.turns) for c in conversations)


def main_scaled(bench: Any) -> Path:
    """Run, then write report.json (and records.jsonl) in --out."""
    import json

    from benchmarks import report

    env = report.environment(bench.args.bundle)
    started = time.perf_counter()
    scaled = ScaledBench(bench)
    scaled.run()
    values = scaled.out["figures"]
    result = report.document(
        bench,
        started,
        env,
        conversations=len(scaled.conversations),
        turns=conversations_turns(scaled.conversations),
        figures=values,
        targets=target_check(values),
    )
    path = report.write(bench.args.out, result)
    bench.write_records()
    print(table(scaled.out))
    print(json.dumps({"figures": values}, indent=2))
    return path
