"""Optional OpenTelemetry tracing, exported over OTLP/HTTP when an endpoint is configured.

Each HTTP request is a server span that joins the caller's trace (W3C `traceparent`); a turn adds
`encode media` and `generate` spans under it. Without an endpoint the tracer is OpenTelemetry's
no-op, so the code paths are the same either way. One provider per app (tests build several).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def build_tracer(endpoint: str | None, version: str) -> tuple[trace.Tracer, Callable[[], None]]:
    """(the app's tracer, what flushes and stops it at shutdown)."""
    if not endpoint:
        return trace.NoOpTracer(), lambda: None
    resource = Resource.create({"service.name": "pandaserve", "service.version": version})
    provider = TracerProvider(resource=resource)
    # Batched: exporting never sits on a request's path. The exporter reads OTEL_EXPORTER_OTLP_* for
    # headers, certificates and timeouts, as every OpenTelemetry SDK does.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider.get_tracer("pandaserve", version), provider.shutdown
