"""The scaled benchmark's arithmetic on hand-made values: the engine's counters read from its
Prometheus text, TTFT by turn, the figures of one report and what a report holds; nothing is
started or timed."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import report
from benchmarks.metrics import RequestRecord
from benchmarks.scaled import figures, parse_counters, target_check, ttft_by_turn

pytestmark = pytest.mark.unit

# The lines of a vLLM server's /metrics that the benchmark reads, as it prints them (two handlers, a
# model label), with others around them.
METRICS = """\
# HELP http_request_size_bytes Content length of incoming requests by handler.
# TYPE http_request_size_bytes summary
http_request_size_bytes_count{handler="/v1/completions"} 3.0
http_request_size_bytes_sum{handler="/v1/completions"} 90000.0
http_request_size_bytes_count{handler="/v1/models"} 5.0
http_request_size_bytes_sum{handler="/v1/models"} 0.0
vllm:prefix_cache_queries_total{engine="0",model_name="demo"} 400.0
vllm:prefix_cache_hits_total{engine="0",model_name="demo"} 128.0
vllm:num_requests_running{engine="0",model_name="demo"} 0.0
"""


def test_the_engines_counters_are_read_per_handler() -> None:
    assert parse_counters(METRICS) == {
        "request_bytes": 90000.0,
        "requests": 3.0,
        "prefix_cache_queries": 400.0,
        "prefix_cache_hits": 128.0,
    }
    assert set(parse_counters("").values()) == {0.0}  # a server without them: nothing counted


def test_ttft_by_turn_takes_the_medians_of_completed_turns() -> None:
    records = [
        RequestRecord("image", 0, 0.0, ok=True, ttft=0.100),
        RequestRecord("image", 0, 0.0, ok=True, ttft=0.300),
        RequestRecord("image", 1, 0.0, ok=True, ttft=0.050),
        RequestRecord("image", 1, 0.0, ok=False, ttft=9.0, error="HTTP 503"),  # failed: left out
    ]
    by_turn = ttft_by_turn(records)
    assert by_turn["first_ms"] == pytest.approx(200.0) and by_turn["second_ms"] == pytest.approx(50.0)
    assert by_turn["second_vs_first"] == pytest.approx(0.25)
    assert ttft_by_turn(records[:2])["second_vs_first"] is None  # no second turns


def test_the_figures_of_one_report() -> None:
    def run(tps: float, **extra: object) -> dict[str, object]:
        return {"output_throughput": tps} | extra

    engine = {"prefix_cache_hits": 30.0, "prefix_cache_queries": 120.0}
    out = {
        "embedded": {"cold": run(300.0), "warm": run(500.0, api_cpu_ms_per_turn=20.0), "idle_api_cpu_ms_per_s": 2.0},
        "scaled": {
            "idle_api_cpu_ms_per_s": 1.0,
            "cold": run(240.0),
            "warm": run(450.0, api_cpu_ms_per_turn=4.0, engine_request_bytes_per_turn=30_000.0, engine=engine)
            | {"ttft_by_turn": {"second_vs_first": 0.8}},
        },
        "stock": run(600.0) | {"ttft_by_turn": {"second_vs_first": 0.7}},
    }
    values = figures(out)
    assert values == pytest.approx(
        {
            "scaled_vs_embedded_output_tps": 0.9,
            "scaled_vs_embedded_output_tps_cold": 0.8,
            "scaled_vs_stock_output_tps": 0.75,
            "embedded_vs_stock_output_tps": 500 / 600,
            "api_cpu_ms_per_turn_scaled": 4.0,
            "api_cpu_ms_per_turn_embedded": 20.0,
            "idle_api_cpu_ms_per_s_scaled": 1.0,
            "idle_api_cpu_ms_per_s_embedded": 2.0,
            "engine_request_bytes_per_turn": 30_000.0,
            "second_vs_first_turn_ttft_scaled": 0.8,
            "second_vs_first_turn_ttft_stock": 0.7,
            "prefix_cache_hit_rate_scaled": 0.25,
        }
    )
    checked = target_check(values)
    assert checked["scaled_vs_stock_output_tps"]["met"] is False  # 0.75 < 0.9
    assert checked["api_cpu_ms_per_turn_scaled"]["met"] is True  # 4 <= 5
    assert figures({})["scaled_vs_stock_output_tps"] is None  # a run that did not happen


def test_a_report_holds_what_every_run_records_then_its_own(tmp_path: Path) -> None:
    workload = tmp_path / "workload.json"
    workload.write_text('{"turns": 3}')
    args = SimpleNamespace(bundle=tmp_path, workload=workload, out=tmp_path / "out", quick=True)
    bench = SimpleNamespace(args=args, sessions=4, runs={"scaled": {"completed": 1}})
    env = report.environment(tmp_path)
    document = report.document(bench, time.perf_counter() - 2, env, figures={"x": 1.0})
    assert document["environment"] == env | {"sessions": 4}
    assert document["config"]["bundle"] == str(tmp_path) and "server_env" in document["config"]
    assert document["workload"] == {"turns": 3} and document["runs"] == bench.runs
    assert document["figures"] == {"x": 1.0} and document["duration_s"] >= 2
