"""Typed dependencies: routes receive what the lifespan built, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.chat import ChatService
from service.errors import NotReady
from service.metrics import Metrics
from service.resources import Resources
from service.settings import Settings, get_settings


def get_resources(request: Request) -> Resources:
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise NotReady("the service is starting")
    return resources


def get_chat(resources: Annotated[Resources, Depends(get_resources)]) -> ChatService:
    return resources.chat


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
