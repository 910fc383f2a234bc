"""The app factory. The app serves whatever resources it is given; without them its lifespan builds
the embedded default (service/resources.py) once, and closes it at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api.admission import AdmissionMiddleware
from service.api.error_handlers import install_error_handlers
from service.api.lifecycle import Lifecycle
from service.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware, TracingMiddleware
from service.api.routes import chat, embeddings, ops, sessions, v1, web
from service.metrics import Metrics
from service.resources import Resources, build_resources
from service.settings import Settings
from service.tracing import build_tracer

VERSION = "0.1.0"


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    tracer, stop_tracing = build_tracer(settings.otlp_traces_endpoint, VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = None
        if app.state.resources is None:
            app.state.resources = built = await build_resources(settings, metrics, tracer)
        try:
            yield
        finally:
            if built is not None:
                await built.close()
            stop_tracing()  # flushes the spans still batched

    app = FastAPI(title="PandaServe", version=VERSION, lifespan=lifespan)
    app.state.resources = resources
    app.state.metrics = metrics
    app.state.lifecycle = Lifecycle()
    # On app.state, not dependency_overrides: any override makes FastAPI rebuild every dependency
    # tree per request (a quarter of the event loop's time under load, measured with py-spy).
    app.state.settings = settings
    app.add_middleware(AdmissionMiddleware, state=app.state)  # innermost: after the body cap, before any body
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(TracingMiddleware, tracer=tracer)  # inside RequestId: spans carry the request id
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of the request carries its id
    install_error_handlers(app)
    for module in (chat, embeddings, sessions, v1, ops, web):
        app.include_router(module.router)
    return app
