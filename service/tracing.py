"""Optional OpenTelemetry tracing, exported over OTLP/HTTP when an endpoint is configured.

Each HTTP request is a server span that joins the caller's trace (W3C `traceparent`); a turn adds
`encode media` and `generate` spans under it. Without an endpoint the tracer is OpenTelemetry's
no-op, so the code paths are the same either way. One provider per app (tests build several).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id


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


class TracingMiddleware:
    """A server span per HTTP request, named by its route template (ids would explode span names)."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # Named by the method until the route is known (OpenTelemetry's convention): a raw path would
        # put ids into span names.
        with self.tracer.start_as_current_span(
            scope["method"], context=extract(carrier), kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("pandaserve.request_id", request_id.get() or "")

            async def send_and_record_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_and_record_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{scope['method']} {route}")
