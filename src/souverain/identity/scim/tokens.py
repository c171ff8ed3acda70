"""SCIM bearer tokens: `scim-souv-<id>_<secret>`, one or more per organisation, made by its
owner; only a SHA-256 of the secret is kept. A token speaks for its organisation's
directory and nothing else: it opens no /api or /v1 route, and sees no other organisation.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.errors import AuthenticationError, NotFoundError
from souverain.core.ids import hash_secret, secret_matches
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.identity import ScimTokenRow
from souverain.db.tables import utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs

PREFIX = "scim-souv-"
_TOKEN = re.compile(r"^scim-souv-([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
INVALID = "Incorrect SCIM token."


async def create_token(
    session: AsyncSession, *, principal: Principal, org_ref: str, name: str
) -> tuple[ScimTokenRow, str]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.OWN)
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    row = ScimTokenRow(
        id=token_id,
        org_id=org.id,
        name=name,
        secret_hash=hash_secret(secret),
        created_by=principal.user_id,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="scim_token.create",
        org_id=org.id,
        target_type="scim_token",
        target_id=token_id,
        details={"name": name},
    )
    return row, f"{PREFIX}{token_id}_{secret}"


async def list_tokens(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> list[ScimTokenRow]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.OWN)
    query = select(ScimTokenRow).where(ScimTokenRow.org_id == org.id)
    return list((await session.execute(query.order_by(ScimTokenRow.created_at))).scalars())


async def revoke_token(
    session: AsyncSession, *, principal: Principal, org_ref: str, token_id: str
) -> ScimTokenRow:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.OWN)
    row = await session.get(ScimTokenRow, token_id)
    if row is None or row.org_id != org.id:
        raise NotFoundError("SCIM token not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await record(
            session,
            actor=actor_of(principal),
            action="scim_token.revoke",
            org_id=org.id,
            target_type="scim_token",
            target_id=row.id,
        )
    return row


def token_id_of(token: str) -> str | None:
    match = _TOKEN.match(token)
    return match.group(1) if match else None


async def authenticate(session: AsyncSession, *, token: str) -> ScimTokenRow:
    """The live token this bearer string is, or AuthenticationError."""
    match = _TOKEN.match(token)
    row = await session.get(ScimTokenRow, match.group(1)) if match else None
    if match is None or row is None or not secret_matches(match.group(2), row.secret_hash):
        raise AuthenticationError(INVALID)
    if row.revoked_at is not None:
        raise AuthenticationError("This SCIM token has been revoked.")
    return row
