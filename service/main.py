"""The app factory. The lifespan builds the model, encoders, engine and session store once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.body_limit import BodyLimitMiddleware
from service.errors import install_error_handlers
from service.lifecycle import Lifecycle
from service.logs import RequestIdMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.resources import Resources
from service.routes import chat, embeddings, openai, ops, sessions
from service.settings import Settings
from service.tracing import TracingMiddleware, build_tracer

VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    tracer, stop_tracing = build_tracer(settings.otlp_traces_endpoint, VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = await Resources.build(settings, metrics, tracer)
        try:
            yield
        finally:
            await app.state.resources.close()
            stop_tracing()  # flushes the spans still batched

    app = FastAPI(title="PandaServe", version=VERSION, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.lifecycle = Lifecycle()
    # On app.state, not dependency_overrides: any override makes FastAPI rebuild every dependency
    # tree per request (a quarter of the event loop's time under load, measured with py-spy).
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(TracingMiddleware, tracer=tracer)  # inside RequestId: spans carry the request id
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of the request carries its id
    install_error_handlers(app)
    for module in (chat, embeddings, sessions, openai, ops):
        app.include_router(module.router)
    return app
