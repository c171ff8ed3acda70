from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from souverain.core.signing import key_id
from souverain.evidence import audit_log
from souverain.evidence.audit_log import AuditFilter
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.tenancy import orgs

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("", response_model=None)
async def list_audit_events(
    principal: PrincipalDep,
    session: SessionDep,
    org: str | None = Query(default=None, max_length=64),
    since: datetime | None = Query(default=None, alias="from"),
    until: datetime | None = Query(default=None, alias="to"),
    action: str | None = Query(default=None, max_length=64),
    after_seq: int = Query(default=0, ge=0),
    limit: int = Query(default=1000, ge=1, le=10_000),
    format: str = Query(default="json", pattern="^(json|jsonl)$"),
) -> dict[str, Any] | Response:
    """Audit events in order (page with `after_seq`). Auditors, admins and owners see their
    organisation's events, numbered within the organisation (`seq` has no gaps); operators
    see all, with the global chain's `seq` and `prev_hash`. `format=jsonl` exports one
    event per line."""
    org_id = None if org is None else (await orgs.get_org(session, principal=principal, ref=org)).id
    where = AuditFilter(
        org_id=org_id, since=since, until=until, action=action, after_seq=after_seq, limit=limit
    )
    events = [
        audit_log.as_dict(row, tenant_view=not principal.is_operator)
        for row in await audit_log.list_events(session, principal=principal, where=where)
    ]
    if format == "jsonl":
        lines = "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in events)
        return PlainTextResponse(lines, media_type="application/x-ndjson")
    return {"events": events, "next_after_seq": events[-1]["seq"] if events else after_seq}


@router.get("/chain")
async def audit_chain(
    principal: PrincipalDep,
    session: SessionDep,
    after_seq: int = Query(default=0, ge=0),
    limit: int = Query(default=10_000, ge=1, le=50_000),
) -> dict[str, Any]:
    """The whole chain with its seals and head, to verify it offline (operators):
    `souverain audit verify`."""
    events, seals, head = await audit_log.chain(
        session, principal=principal, after_seq=after_seq, limit=limit
    )
    return {"events": events, "seals": seals, "head_seq": head}


@router.get("/verify")
async def verify_audit_chain(
    principal: PrincipalDep, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Recompute the whole chain and check every seal with the platform's key (operators):
    any edited, deleted, inserted or reordered event, or a truncation, makes `ok` false
    and is named in `problems`. For a check that does not trust this server, run
    `souverain audit verify --public-key <trusted PEM>`."""
    public = state.signing_key.public_key()
    verdict = await audit_log.verify(session, principal=principal, public_key=public)
    return {
        "ok": verdict.ok,
        "events": verdict.events,
        "seals": verdict.seals,
        "first_seq": verdict.first_seq,
        "last_seq": verdict.last_seq,
        "last_sealed_seq": verdict.last_sealed_seq,
        "redacted": verdict.redacted,
        "problems": verdict.problems,
        "key_id": key_id(public),
    }
