from __future__ import annotations

from fastapi import APIRouter, Query, status

from souverain.core.roles import Role, Scope
from souverain.core.schemas.tenancy import ApiKey, ApiKeyCreated, KeyCreateRequest
from souverain.db.tables import ApiKeyRow, UserRow
from souverain.gateway.ratelimit import Limit
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.tenancy import keys

router = APIRouter(prefix="/api/keys", tags=["keys"])


def _out(row: ApiKeyRow, user: UserRow, priority: str) -> ApiKey:
    """The key as shown; `priority` the one in effect (`keys.priorities_in_effect`)."""
    return ApiKey(
        id=row.id,
        name=row.name,
        user=user.name,
        org_id=row.org_id,
        project_id=row.project_id,
        role=Role(row.role),
        scopes=[Scope(s) for s in row.scopes],
        priority="batch" if priority == "batch" else "interactive",
        priority_set="batch" if row.priority == "batch" else "interactive",
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
async def create_key(
    body: KeyCreateRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> ApiKeyCreated:
    """Create a key. The full key is in the response once and never again. A key can never
    grant more than you hold: its role and scopes must be within yours and within those of
    the user it is for, and it cannot outlive the key that creates it. The new key shares
    the rate limits of the key that creates it, and is revoked with it. Each user may
    create `SOUVERAIN_KEY_MINT_PER_MINUTE` keys a minute (429 beyond)."""
    mint = Limit(
        "user (key creation)", principal.user_id, "requests", state.settings.key_mint_per_minute
    )
    await state.limiter.admit([mint], tokens=0)
    row, full = await keys.create_key(session, principal=principal, request=body)
    user = await session.get(UserRow, row.user_id)
    assert user is not None
    priority = (await keys.priorities_in_effect(session, rows=[row]))[row.id]
    await session.commit()
    return ApiKeyCreated(**_out(row, user, priority).model_dump(), key=full)


@router.get("", response_model=list[ApiKey])
async def list_keys(
    principal: PrincipalDep,
    session: SessionDep,
    org: str | None = Query(default=None, max_length=64),
) -> list[ApiKey]:
    """Your keys; with `manage`, every key of your organisation. Secrets are never shown.
    `priority` is the one in effect (a batch project's keys are batch keys), `priority_set`
    the key's own."""
    listed = await keys.list_keys(session, principal=principal, org_ref=org)
    priorities = await keys.priorities_in_effect(session, rows=[k for k, _ in listed])
    return [_out(k, u, priorities[k.id]) for k, u in listed]


@router.delete("/{key_id}", response_model=ApiKey)
async def revoke_key(key_id: str, principal: PrincipalDep, session: SessionDep) -> ApiKey:
    """Revoke a key. Every server refuses it within seconds."""
    row = await keys.revoke_key(session, principal=principal, key_id=key_id)
    user = await session.get(UserRow, row.user_id)
    assert user is not None
    priority = (await keys.priorities_in_effect(session, rows=[row]))[row.id]
    await session.commit()
    return _out(row, user, priority)
