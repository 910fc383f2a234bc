"""Sessions: create (with optional metadata), read (turns and a media summary, never raw bytes), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from service.api.deps import ChatDep, TenantDep
from service.api.routes.chat import ERRORS
from service.api.schemas import SessionCreate, SessionId, SessionView

router = APIRouter(tags=["sessions"])


@router.post("/sessions", response_model=SessionView, status_code=201, responses=ERRORS)
async def create_session(chat: ChatDep, tenant: TenantDep, body: SessionCreate | None = None) -> SessionView:
    return SessionView.of(await chat.create_session(tenant, body.metadata if body else {}))


@router.get("/sessions/{session_id}", response_model=SessionView, responses=ERRORS)
async def get_session(session_id: Annotated[SessionId, Path()], chat: ChatDep, tenant: TenantDep) -> SessionView:
    return SessionView.of(await chat.get_session(tenant, session_id))


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response, responses=ERRORS)
async def delete_session(session_id: Annotated[SessionId, Path()], chat: ChatDep, tenant: TenantDep) -> Response:
    await chat.delete_session(tenant, session_id)
    return Response(status_code=204)
