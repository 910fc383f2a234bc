"""Read a session's turns (never raw bytes)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ChatDep
from service.routes.chat import ERRORS
from service.schemas import SessionView

router = APIRouter(tags=["sessions"])


@router.get("/sessions/{session_id}", response_model=SessionView, responses=ERRORS)
async def get_session(session_id: str, chat: ChatDep) -> SessionView:
    return SessionView.of(await chat.get_session(session_id))
