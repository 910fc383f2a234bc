"""Typed dependencies: routes receive what the lifespan built, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.v1_schemas import ModelCard
from service.core.chat_service import ChatService
from service.core.turn_limits import TurnLimits
from service.errors import NotReady
from service.metrics import Metrics
from service.resources import Resources, ServedModel
from service.settings import Settings


def get_resources(request: Request) -> Resources:
    resources: Resources | None = request.app.state.resources
    if resources is None:
        raise NotReady("the service is starting")
    return resources


def model_card(model: ServedModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created)


def get_chat(resources: Annotated[Resources, Depends(get_resources)]) -> ChatService:
    """The default model's chat core (what sessions' own routes need: the store behind it)."""
    return resources.chat


def get_limits(resources: Annotated[Resources, Depends(get_resources)]) -> TurnLimits:
    return resources.limits


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_tenant(request: Request) -> str | None:
    """The calling tenant, as the admission middleware found it (None when auth is off)."""
    return request.state.tenant


SettingsDep = Annotated[Settings, Depends(get_settings)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
LimitsDep = Annotated[TurnLimits, Depends(get_limits)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TenantDep = Annotated[str | None, Depends(get_tenant)]
