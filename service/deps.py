"""Typed dependencies: routes receive what the lifespan built, never globals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from service.chat import ChatService
from service.errors import NotReady
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.resources import Resources
from service.settings import Settings


def get_resources(request: Request) -> Resources:
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise NotReady("the service is starting")
    return resources


def get_chat(resources: Annotated[Resources, Depends(get_resources)]) -> ChatService:
    return resources.chat


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_owner(request: Request, resources: Annotated[Resources, Depends(get_resources)]) -> str | None:
    """The calling tenant's id (None when auth is off)."""
    return resources.keys.owner(request.headers.get("authorization"))


async def admit(
    request: Request,
    owner: Annotated[str | None, Depends(get_owner)],
    resources: Annotated[Resources, Depends(get_resources)],
) -> AsyncIterator[None]:
    """No new work while draining; the tenant's rate limit and in-flight cap. Held until the response
    (or its stream) ends."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    lifecycle.enter()
    try:
        tenant = owner or "anonymous"
        await resources.limiter.enter(tenant)
        try:
            yield
        finally:
            await resources.limiter.leave(tenant)
    finally:
        lifecycle.leave()


# Every route that does work: authenticated and rate limited.
ADMITTED = [Depends(admit, scope="request")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
