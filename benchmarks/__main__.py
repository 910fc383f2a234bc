"""python -m benchmarks --bundle bundles/demo [--quick]: the whole comparison in one run.

Order (one heavy thing at a time: 2 cores; never two vLLM engines at once):
  1. encoder pool in this process: sequential vs concurrent images/s
  2. (a) the original path in this process: HF transformers + PEFT, one request at a time
  3. (c) the service (a `pandaserve serve` subprocess, real HTTP): closed-loop sweep over
     concurrency, every file new (cold); the top concurrency's files sent again (warm); one-video
     turns cold then warm; Poisson arrivals; the soak (API process RSS)
  4. (b) the server stopped, the direct engine in this process at the top concurrency
Then benchmarks/results/<date>/report.json (+ records.jsonl, throughput.png, ttft_p95.png).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import statistics
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.load import HttpTarget, Run, closed_loop, poisson, service_client
from benchmarks.metrics import parse_slos, summarize
from benchmarks.server import REPO, RssSampler, cpu_split, machine_busy_seconds, redis_if_up, serve
from benchmarks.workload import DEFAULT_WORKLOAD, Conversation, Workload, single

RESULTS = Path(__file__).with_name("results")
# Measured on the 2-core box: stopping the server, the direct engine's start, encoding and run, the report.
RESERVE_S = 150.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    p.add_argument("--workload", type=Path, default=DEFAULT_WORKLOAD)
    p.add_argument("--out", type=Path, help="default benchmarks/results/<YYYY-MM-DD>")
    p.add_argument("--quick", action="store_true", help="small counts and a 20 s soak, for development")
    p.add_argument("--concurrency", type=int, nargs="+", help="closed-loop sweep (default 1 4 16 32)")
    p.add_argument("--per-user", type=int, help="conversations per user at each sweep point (default 4, min 16)")
    p.add_argument("--rate", type=float, help="Poisson arrivals (conversations/s); default 0.7 x the top sweep's")
    p.add_argument("--poisson-conversations", type=int)
    p.add_argument("--video-pairs", type=int, help="one-video turns sent cold, then the same files warm")
    p.add_argument("--original-conversations", type=int)
    p.add_argument("--encoder-images", type=int)
    p.add_argument("--soak-s", type=float, help="soak duration (default 300 s; shortened to keep --budget-s)")
    p.add_argument("--soak-warmup-s", type=float, help="RSS growth is measured from here (default 10%% of the soak)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=870.0,
        help="wall-time budget of the whole run: the soak is cut short to leave RESERVE_S for the steps after it",
    )
    p.add_argument(
        "--goodput", nargs="+", default=["ttft:2000", "tpot:100"], help="SLOs NAME:MS (ttft, tpot, e2el), vLLM's syntax"
    )
    p.add_argument(
        "--nonce-base",
        type=int,
        help="first media nonce (default: from the clock). Embeddings may be cached in Redis across server "
        "restarts, so 'cold' files must be new to every earlier run too; the same base replays the same bytes",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="used if it answers; else memory")
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["encoder", "original", "service", "poisson", "soak", "direct"]
    )
    p.add_argument(
        "--scaled",
        action="store_true",
        help="instead: the embedded default, the scaled topology (vllm-router, stock vLLM, encoder service, an API "
        "replica) and the stock server fed the same prompt embeds, at the top concurrency (benchmarks/scaled.py); "
        "default --out benchmarks/results/<YYYY-MM-DD>/scaled",
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "concurrency": [1, 32] if quick else [1, 4, 16, 32],
        "per_user": 1 if quick else 4,
        "poisson_conversations": 16 if quick else 64,
        "video_pairs": 4 if quick else 12,
        "original_conversations": 6 if quick else 32,
        "encoder_images": 16 if quick else 96,
        "soak_s": 20.0 if quick else 300.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.soak_warmup_s = args.soak_warmup_s if args.soak_warmup_s is not None else args.soak_s / 10
    args.out = args.out or RESULTS / dt.date.today().isoformat() / ("scaled" if args.scaled else "")
    # Milliseconds since the epoch: a base no earlier run has used (a run takes far fewer nonces than that).
    args.nonce_base = args.nonce_base if args.nonce_base is not None else time.time_ns() // 1_000_000
    args.slos = parse_slos(args.goodput)
    return args


class Bench:
    """Runs, in order, each into `self.runs` (raw metrics) and `self.records` (per-request, for records.jsonl)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workload = Workload.load(args.workload)
        self.runs: dict[str, Any] = {}
        self.records: dict[str, Run] = {}
        self._nonce = args.nonce_base
        self.started = time.perf_counter()
        self.sessions = "not started"
        self.direct_conversations: list[Conversation] = []

    def nonce(self) -> int:
        """A fresh nonce per run: no two runs upload the same bytes unless they mean to (warm)."""
        self._nonce += 1
        return self._nonce

    def conversations(self, count: int) -> list[Conversation]:
        # A prefix of the same sequence for every run; new bytes each time.
        return self.workload.conversations(0, count, self.nonce())

    def summarize(self, name: str, run: Run) -> dict[str, Any]:
        self.records[name] = run
        metrics = summarize(run.records, run.duration_s, self.args.slos)
        log(f"{name}: {metrics['completed']} ok, {metrics['failed']} failed, {metrics['request_throughput']:.2f} req/s")
        return metrics

    # 1.
    def encoder(self) -> None:
        from benchmarks.encoder import encoder_bench
        from benchmarks.parts import Parts

        self.runs["encoder_pool"] = asyncio.run(
            encoder_bench(Parts.load(self.args.bundle), self.args.encoder_images, [self.nonce() for _ in range(3)])
        )
        log(f"encoder pool: {self.runs['encoder_pool']}")

    # 2. (a)
    def original(self) -> None:
        from benchmarks.original import original_run

        run = original_run(
            self.args.bundle, self.conversations(self.args.original_conversations), self.warm_conversation()
        )
        self.runs["original"] = self.summarize("original", run)
        gc.collect()

    # 3. (c)
    def service(self) -> None:
        redis_url = redis_if_up(self.args.redis_url)
        self.sessions = redis_url or "memory"
        self.args.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with serve(self.args.bundle, self.args.out, redis_url) as server:
            log(f"server ready in {time.perf_counter() - started:.0f} s at {server.url} (log: {server.log})")
            asyncio.run(self._service_runs(server.url, server.headers, server.proc.pid))

    async def _service_runs(self, url: str, headers: dict[str, str], pid: int) -> None:
        args, service = self.args, dict[str, Any]()
        self.runs["service"] = service
        top = max(args.concurrency)
        service["ratio_concurrency"] = top
        async with service_client(url, headers) as client:
            target = HttpTarget(client)

            def measured(name: str, runner: Coroutine[Any, Any, Run]) -> Coroutine[Any, Any, dict[str, Any]]:
                return self.measured(name, pid, runner)

            warm = self.workload.conversations(10_000, 8, self.nonce())  # untimed, every kind of first-call cost
            await closed_loop(target.conversation, warm, 4)

            service["sweep"] = {}
            top_rate = 1.0
            for c in sorted(args.concurrency):
                conversations = self.conversations(max(4 if args.quick else 16, args.per_user * c))
                started = time.perf_counter()
                service["sweep"][str(c)] = await measured(
                    f"service_c{c}_cold", closed_loop(target.conversation, conversations, c)
                )
                if c == top:
                    self.direct_conversations = conversations
                    top_rate = len(conversations) / (time.perf_counter() - started)

            # The same bytes again: an embedding cache keyed by the bytes' sha256 can hit every file.
            service["warm"] = await measured(
                f"service_c{top}_warm", closed_loop(target.conversation, self.direct_conversations, top)
            )
            videos = single("video", args.video_pairs, self.nonce(), max_tokens=16)
            service["video_cold"] = await measured("service_video_cold", closed_loop(target.conversation, videos, 1))
            service["video_warm"] = await measured("service_video_warm", closed_loop(target.conversation, videos, 1))

            if "poisson" not in args.skip:
                rate = args.rate or 0.7 * top_rate
                conversations = self.conversations(args.poisson_conversations)
                arrivals = poisson(target.conversation, conversations, rate)
                service["poisson"] = await measured("service_poisson", arrivals) | {"rate_conversations_per_s": rate}

            if "soak" not in args.skip:
                service["soak"] = await self._soak(target, pid, top)

    async def measured(self, name: str, pid: int, runner: Coroutine[Any, Any, Run]) -> dict[str, Any]:
        """The run's metrics, with the CPU seconds spent during it by the server's processes, by this one
        and by the rest of the machine ("other": work beside the benchmark, which it cannot control)."""
        before, client_cpu, machine = cpu_split(pid), time.process_time(), machine_busy_seconds()
        run = await runner
        after = cpu_split(pid)
        cpu = {k: after[k] - before[k] for k in after} | {"client": time.process_time() - client_cpu}
        cpu["other"] = max(machine_busy_seconds() - machine - sum(cpu.values()), 0.0)
        return self.summarize(name, run) | {"cpu_s": cpu}

    async def _soak(self, target: HttpTarget, pid: int, concurrency: int) -> dict[str, Any]:
        """A sustained closed loop cycling through a pool of conversations; the API process's RSS every second.

        After the first pass the pool's bytes repeat, so a bounded cache fills during the warm-up
        and the growth measured after it is what a long-running server leaks.
        """
        args = self.args
        conversations = self.conversations(2 * concurrency)
        # Within the budget: the soak is the one run that can be shortened without changing what the others mean.
        left = args.budget_s - (time.perf_counter() - self.started) - (0 if "direct" in args.skip else RESERVE_S)
        seconds = max(min(args.soak_s, left), min(args.soak_s, 60.0))
        if seconds < args.soak_s:
            log(f"soak shortened from {args.soak_s:.0f} s to {seconds:.0f} s to keep the {args.budget_s:.0f} s budget")
        warmup = min(args.soak_warmup_s, seconds / 2)
        sampler, stop = RssSampler(pid), asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        loop = closed_loop(target.conversation, conversations, concurrency, seconds)
        metrics = await self.measured("service_soak", pid, loop)
        stop.set()
        await sampling
        after = [s for s in sampler.samples if s[0] >= warmup] or sampler.samples
        # Medians of the first and last 10 samples (10 s): RSS swings by a few % from one second to the
        # next with the requests in flight; a trend is what a leak shows.
        window = max(1, min(10, len(after) // 3))
        start = int(statistics.median(s[1] for s in after[:window]))
        end = int(statistics.median(s[1] for s in after[-window:]))
        kids = [s[2] for s in after]
        return {
            "metrics": metrics,
            "seconds": seconds,
            "seconds_requested": args.soak_s,
            "concurrency": concurrency,
            "rss": {
                "warmup_s": warmup,
                "window_samples": window,
                "start_bytes": start,
                "end_bytes": end,
                "max_bytes": max(s[1] for s in after),
                "growth": (end - start) / start if start else None,
                "children_start_bytes": kids[0],
                "children_end_bytes": kids[-1],
                # (seconds, API RSS, children's RSS) every 5th sample: the curve, not every point
                "samples": sampler.samples[::5],
            },
        }

    # 4. (b)
    def direct(self) -> None:
        from benchmarks.direct import direct_run

        conversations = self.direct_conversations or self.conversations(
            max(16, self.args.per_user * max(self.args.concurrency))
        )
        top = max(self.args.concurrency)
        run, cpu = asyncio.run(direct_run(self.args.bundle, conversations, top, self.warm_conversation()))
        # The engine's objects now, not in AsyncLLM.__del__ at interpreter exit (vLLM's globals gone by then).
        gc.collect()
        self.runs["direct_engine"] = self.summarize("direct_engine", run) | {"concurrency": top, "cpu_s": cpu}

    def warm_conversation(self) -> Conversation:
        return self.workload.conversation(20_000, self.nonce())

    def write_records(self) -> Path:
        path = self.args.out / "records.jsonl"
        with path.open("w") as f:
            for name, run in self.records.items():
                for record in run.records:
                    f.write(json.dumps({"run": name} | record.to_json()) + "\n")
        return path


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.bundle / "manifest.json").exists():
        raise SystemExit(f"no bundle at {args.bundle}: build one with `pandaserve bundle demo {args.bundle}`")
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    if args.scaled:
        from benchmarks.scaled import main_scaled

        log(f"wrote {main_scaled(bench)} in {time.perf_counter() - bench.started:.0f} s")
        return
    env = report.environment(args.bundle)
    started = time.perf_counter()
    steps = [("encoder", bench.encoder), ("original", bench.original), ("service", bench.service)]
    steps.append(("direct", bench.direct))
    timings = {}
    for name, step in steps:
        if name in args.skip:
            continue
        log(f"--- {name}")
        t = time.perf_counter()
        step()
        timings[name] = time.perf_counter() - t
    values = report.ratios(bench.runs)
    result = report.document(
        bench, started, env, step_durations_s=timings, ratios=values, targets=report.target_check(values)
    )
    path = report.write(args.out, result)
    bench.write_records()
    pngs = report.plots(args.out, bench.runs)
    print(report.table(bench.runs))
    print(json.dumps({"ratios": values}, indent=2))
    log(f"wrote {path}, {', '.join(p.name for p in pngs)} in {result['duration_s']:.0f} s")


if __name__ == "__main__":  # the guard vLLM's engine core (a child process) needs
    main()
