from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from souverain.server.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up. No credential needed."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", response_model=None)
async def readyz(state: StateDep) -> dict[str, Any] | JSONResponse:
    """The database answers and the route table is loaded. No credential needed."""
    try:
        async with state.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception:
        return JSONResponse({"status": "unavailable", "database": False}, status_code=503)
    if not state.routes.loaded:
        return JSONResponse({"status": "starting", "database": True}, status_code=503)
    ready = sum(len(routes) for routes in state.routes.routes.values())
    return {"status": "ready", "database": True, "ready_replicas": ready}
