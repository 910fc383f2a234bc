"""OpenTelemetry: with an OTLP endpoint set, a turn exports a server span that joins the caller's
trace, with `encode media` and `generate` spans under it (real server, real engine, real exporter)."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import AUTH
from tests.media import picture
from tests.otlp import Collector

pytestmark = pytest.mark.e2e


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(span: Span) -> dict[str, object]:
    return {a.key: value(a.value) for a in span.attributes}


def test_a_turn_is_traced_under_the_callers_trace(server: str, collector: Collector) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = AUTH | {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    r = httpx.post(
        f"{server}/chat",
        data={"message": "What is this?", "max_tokens": "5"},
        files=[("image", ("a.png", picture(3, (64, 48))))],
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(collector.trace(trace_id)) < 3:
        time.sleep(0.1)
    spans = {s.name: s for s in collector.trace(trace_id)}
    assert set(spans) == {"POST /chat", "encode media", "generate"}

    request = spans["POST /chat"]
    assert request.parent_span_id.hex() == parent_id
    assert spans["encode media"].parent_span_id == request.span_id
    assert spans["generate"].parent_span_id == request.span_id
    assert (
        attributes(request).items()
        >= {
            "http.route": "/chat",
            "http.request.method": "POST",
            "http.response.status_code": 200,
            "pandaserve.request_id": r.headers["x-request-id"],
        }.items()
    )
    assert attributes(spans["encode media"])["pandaserve.media.modalities"] == ["image"]
    generate = attributes(spans["generate"])
    assert generate["pandaserve.completion_tokens"] == r.json()["usage"]["completion_tokens"]
    assert generate["pandaserve.prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert generate["pandaserve.finish_reason"] == r.json()["finish_reason"]
