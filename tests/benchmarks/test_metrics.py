"""benchmarks.metrics against hand-computed values (vLLM bench serve's definitions); nothing is timed."""

from __future__ import annotations

import pytest

from benchmarks.metrics import RequestRecord, distribution, parse_slos, summarize

pytestmark = pytest.mark.unit

# Three completed requests and a failed one, over 2 s:
#   a: TTFT 100 ms, E2EL 500 ms, 5 tokens, chunks 100 ms apart -> TPOT (500 - 100) / 4 = 100 ms
#   b: TTFT 300 ms, E2EL 900 ms, 4 tokens, chunks 200 ms apart -> TPOT (900 - 300) / 3 = 200 ms
#   c: TTFT 50 ms = E2EL, 1 token: no TPOT (vLLM leaves it out; for goodput it is 0)
RECORDS = [
    RequestRecord("image", 0, 0.0, ok=True, ttft=0.1, itl=[0.1] * 4, e2el=0.5, output_tokens=5, prompt_tokens=10),
    RequestRecord("video", 0, 0.1, ok=True, ttft=0.3, itl=[0.2] * 3, e2el=0.9, output_tokens=4, prompt_tokens=20),
    RequestRecord("imu", 0, 0.2, ok=True, ttft=0.05, itl=[], e2el=0.05, output_tokens=1, prompt_tokens=5),
    RequestRecord("audio", 0, 0.3, ok=False, error="HTTP 503: busy"),
]


def test_counts_and_throughputs() -> None:
    m = summarize(RECORDS, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (35, 10)
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(5.0)
    assert m["total_token_throughput"] == pytest.approx(22.5)
    assert m["request_goodput"] is None  # no SLOs given
    assert m["errors"] == ["HTTP 503: busy"]


def test_ttft_distribution() -> None:
    ttft = summarize(RECORDS, 2.0)["ttft_ms"]
    # sorted [50, 100, 300]; numpy's linear percentile at rank q/100 * (n - 1)
    assert ttft["mean"] == pytest.approx(150.0)
    assert ttft["median"] == pytest.approx(100.0)
    assert ttft["p50"] == pytest.approx(100.0)
    assert ttft["p90"] == pytest.approx(100 + 0.8 * 200)  # rank 1.8
    assert ttft["p95"] == pytest.approx(100 + 0.9 * 200)  # rank 1.9
    assert ttft["p99"] == pytest.approx(100 + 0.98 * 200)  # rank 1.98


def test_tpot_leaves_out_single_token_replies() -> None:
    tpot = summarize(RECORDS, 2.0)["tpot_ms"]
    assert tpot["mean"] == pytest.approx(150.0)  # (100 + 200) / 2: c has no TPOT
    assert tpot["median"] == pytest.approx(150.0)
    assert tpot["p90"] == pytest.approx(190.0)
    assert tpot["std"] == pytest.approx(50.0)
    assert RECORDS[2].tpot() == 0.0


def test_itl_pools_every_gap() -> None:
    itl = summarize(RECORDS, 2.0)["itl_ms"]
    # [100, 100, 100, 100, 200, 200, 200]
    assert itl["mean"] == pytest.approx(1000 / 7)
    assert itl["median"] == pytest.approx(100.0)
    assert itl["p90"] == pytest.approx(200.0)  # rank 5.4, between two 200s


def test_e2el_distribution() -> None:
    e2el = summarize(RECORDS, 2.0)["e2el_ms"]
    assert e2el["mean"] == pytest.approx((500 + 900 + 50) / 3)
    assert e2el["median"] == pytest.approx(500.0)


def test_goodput_needs_every_slo() -> None:
    # a: ttft 100 <= 250, tpot 100 <= 150: good. b: ttft 300 > 250. c: ttft 50, tpot counted as 0: good.
    m = summarize(RECORDS, 2.0, {"ttft": 250, "tpot": 150})
    assert m["request_goodput"] == pytest.approx(2 / 2.0)
    # b fails on tpot alone (200 > 150)
    assert summarize(RECORDS, 2.0, {"tpot": 150})["request_goodput"] == pytest.approx(2 / 2.0)
    # the bound is inclusive (vLLM: slo >= value): a's E2EL is exactly 500 ms
    assert summarize(RECORDS, 2.0, {"e2el": 500})["request_goodput"] == pytest.approx(2 / 2.0)
    assert summarize(RECORDS, 2.0, {"e2el": 499})["request_goodput"] == pytest.approx(1 / 2.0)
    # failed requests are never good
    assert summarize(RECORDS, 2.0, {"ttft": 10_000})["request_goodput"] == pytest.approx(3 / 2.0)


def test_all_failed_reads_as_zero() -> None:
    m = summarize([RequestRecord("image", 0, 0.0, error="boom")], 1.0, {"ttft": 100})
    assert (m["completed"], m["failed"], m["request_throughput"], m["request_goodput"]) == (0, 1, 0.0, 0.0)
    assert m["ttft_ms"] == distribution([])
    assert m["ttft_ms"]["p99"] == 0.0


def test_parse_slos() -> None:
    assert parse_slos(["ttft:2000", "tpot:100", "e2el:5000.5"]) == {"ttft": 2000.0, "tpot": 100.0, "e2el": 5000.5}
    for bad in (["ttft"], ["itl:10"], ["ttft:fast"]):
        with pytest.raises(ValueError):
            parse_slos(bad)
    with pytest.raises(ValueError, match="unknown SLO"):
        summarize(RECORDS, 1.0, {"itl": 10})
