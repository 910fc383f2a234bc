"""Serving metrics with the definitions of vLLM's `vllm bench serve` (vllm/benchmarks/serve.py,
`calculate_metrics`), so our numbers read the same as everyone else's:

- TTFT: request sent -> first streamed chunk carrying text.
- ITL: every gap between two consecutive chunks, pooled over all requests (a chunk may carry
  more than one token; vLLM counts chunks too).
- TPOT: per request, (E2EL - TTFT) / (output_tokens - 1), only for requests with > 1 output
  token; for goodput a request with <= 1 output token has TPOT 0.
- E2EL: request sent -> last chunk (the whole reply).
- request throughput = completed / duration; output token throughput = total output tokens /
  duration; total token throughput = (prompt + output tokens) / duration; duration is the wall
  time of the whole run, first request sent to last reply received.
- goodput = completed requests meeting every SLO given (ttft, tpot, e2el in ms; metric <= SLO)
  / duration.
- percentiles: numpy's default (linear interpolation); an empty list reads as [0], as in vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestRecord:
    """One request (one chat turn) as the client saw it; times in seconds."""

    kind: str  # the workload kind (e.g. "video", "image+audio")
    turn: int  # 0 for a conversation's first turn
    start: float  # perf_counter when sent, relative to the run's start
    ok: bool = False
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    e2el: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None

    def tpot(self) -> float:
        """vLLM's TPOT; 0 when the reply has <= 1 token (how vLLM counts it for goodput)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        """As a dict, times rounded to the microsecond (records.jsonl of a 5-minute soak stays a few MB)."""
        out = asdict(self)
        for key in ("start", "ttft", "e2el"):
            out[key] = round(out[key], 6)
        out["itl"] = [round(gap, 6) for gap in self.itl]
        return out


def distribution(values: Sequence[float], percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """mean, median, std and the percentiles of `values` (seconds) in milliseconds."""
    x = np.asarray(values or [0.0], dtype=np.float64) * 1000.0
    out = {"mean": float(np.mean(x)), "median": float(np.median(x)), "std": float(np.std(x))}
    out |= {f"p{p:g}": float(np.percentile(x, p)) for p in percentiles}
    return out


def meets_slos(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    values = {"ttft": record.ttft, "tpot": record.tpot(), "e2el": record.e2el}
    return all(values[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    slos_ms: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
) -> dict[str, Any]:
    """The run's metrics from its per-request records, vLLM's definitions (see the module doc)."""
    unknown = set(slos_ms or {}) - set(SLO_METRICS)
    if unknown:
        raise ValueError(f"unknown SLO metrics {sorted(unknown)}; known: {SLO_METRICS}")
    done = [r for r in records if r.ok]
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens for r in done)
    good = sum(meets_slos(r, slos_ms) for r in done) if slos_ms else 0
    return {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "total_input_tokens": prompt,
        "total_output_tokens": output,
        "request_throughput": len(done) / duration_s,
        "request_goodput": good / duration_s if slos_ms else None,
        "output_throughput": output / duration_s,
        "total_token_throughput": (prompt + output) / duration_s,
        "ttft_ms": distribution([r.ttft for r in done], percentiles),
        "tpot_ms": distribution([r.tpot() for r in done if r.output_tokens > 1], percentiles),
        "itl_ms": distribution([gap for r in done for gap in r.itl], percentiles),
        "e2el_ms": distribution([r.e2el for r in done], percentiles),
        "slos_ms": dict(slos_ms or {}),
        "errors": sorted({r.error for r in records if r.error})[:10],
    }


def parse_slos(specs: Sequence[str]) -> dict[str, float]:
    """`["ttft:2000", "tpot:100"]` (vLLM's --goodput syntax, milliseconds) -> {"ttft": 2000.0, "tpot": 100.0}."""
    slos: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad SLO {spec!r}: expected NAME:MILLISECONDS with NAME in {SLO_METRICS}")
        slos[name] = float(value)
    return slos
