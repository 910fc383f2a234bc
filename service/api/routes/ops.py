"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import MetricsDep, ResourcesDep
from service.api.routes.chat import ERRORS
from service.api.schemas import Health
from service.errors import NotReady
from service.metrics import Metrics

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (it says nothing about the model)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: ERRORS[503]})
async def readyz(resources: ResourcesDep, request: Request) -> Health:
    """Engine, encoders and session store can serve a turn (and the server is not draining)."""
    if request.app.state.lifecycle.draining:
        raise NotReady("the server is shutting down")
    try:
        await resources.engine.check_health()
        for chat in resources.chats.values():
            await chat.encoder.check_health()
        await resources.store.ping()
    except Exception as exc:
        raise NotReady(f"not ready: {exc}") from exc
    return Health(status="ok")


@router.get("/metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=Metrics.CONTENT_TYPE)
