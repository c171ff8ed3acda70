from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from souverain.core.access import check_operator
from souverain.server.deps import PrincipalDep, StateDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(principal: PrincipalDep, state: StateDep) -> Response:
    """Prometheus metrics (operator keys). For a scraper without a key, bind a separate
    private address with SOUVERAIN_METRICS_BIND."""
    check_operator(principal)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
