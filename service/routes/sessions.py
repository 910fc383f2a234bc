"""Sessions: create (with optional metadata), read (turns and a media summary, never raw bytes), delete."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import ADMITTED, ChatDep, OwnerDep
from service.routes.chat import ERRORS
from service.schemas import SessionCreate, SessionView

router = APIRouter(tags=["sessions"], dependencies=ADMITTED)


@router.post("/sessions", response_model=SessionView, status_code=201, responses=ERRORS)
async def create_session(chat: ChatDep, owner: OwnerDep, body: SessionCreate | None = None) -> SessionView:
    return SessionView.of(await chat.create_session(owner, body.metadata if body else {}))


@router.get("/sessions/{session_id}", response_model=SessionView, responses=ERRORS)
async def get_session(session_id: str, chat: ChatDep, owner: OwnerDep) -> SessionView:
    return SessionView.of(await chat.get_session(owner, session_id))


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response, responses=ERRORS)
async def delete_session(session_id: str, chat: ChatDep, owner: OwnerDep) -> Response:
    await chat.delete_session(owner, session_id)
    return Response(status_code=204)
