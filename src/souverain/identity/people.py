"""People known through a provider or a directory: which user they are, and what their
memberships say.

**Who someone is.** An account at a provider is its `(provider, sub)`, never its name or
e-mail, which a provider (or whoever runs it) may set to anything. A first sign-in links the
account to a user only when that user belongs to the provider's organisation alone: one the
organisation's directory provisioned with that name, or one made by hand who is a member of
that organisation and nowhere else. A provider of organisation A asserting the name of a
user of organisation B, or of an operator, is refused; otherwise the user is created (just
in time) — and only when the mapping gives them a role, so a refused sign-in creates nothing.

**What they hold.** `apply_grants` makes the memberships the directory manages (source
`directory`) say what the mapping gives: created, changed, removed. Memberships added by
hand (source `manual`) are left as they are. Someone left with nothing in the organisation
loses their keys there, as a removed member does.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.identity import (
    DirectoryUserRow,
    IdentityProviderRow,
    ProjectGrantRow,
    UserIdentityRow,
)
from souverain.db.tables import MembershipRow, UserRow, utcnow
from souverain.evidence.audit import Actor, record
from souverain.identity.mappings import Grants
from souverain.identity.oidc import IdTokenRefused
from souverain.tenancy import key_lineage, memberships

NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._@+-]{0,62}[a-z0-9])?$")


def user_name_of(claims: dict[str, Any], provider: IdentityProviderRow) -> str:
    """The user name a provider gives someone: its username claim, else their e-mail."""
    for claim in (provider.username_claim, "email"):
        value = claims.get(claim)
        if isinstance(value, str) and NAME.match(value.lower()):
            return value.lower()
    raise IdTokenRefused("unusable_username", "The provider gave no usable user name.")


def groups_of(claims: dict[str, Any], claim: str) -> list[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return sorted({g for g in value if isinstance(g, str) and 0 < len(g) <= 255})[:1000]
    return []


async def find_identity(
    session: AsyncSession, *, provider_id: str, subject: str
) -> UserIdentityRow | None:
    query = select(UserIdentityRow).where(
        UserIdentityRow.provider_id == provider_id, UserIdentityRow.subject == subject
    )
    return (await session.execute(query)).scalar_one_or_none()


async def link_identity(
    session: AsyncSession, *, provider: IdentityProviderRow, subject: str, name: str
) -> UserIdentityRow:
    """A first sign-in: the user this account is, found by the rules above or created."""
    user = await _linkable_user(session, provider=provider, name=name)
    if user is None:
        user = UserRow(id=new_id("usr"), name=name, is_operator=False, kind="person")
        session.add(user)
        await session.flush()
    identity = UserIdentityRow(
        id=new_id("uid"), provider_id=provider.id, subject=subject, user_id=user.id, groups=[]
    )
    session.add(identity)
    await session.flush()
    return identity


async def _linkable_user(
    session: AsyncSession, *, provider: IdentityProviderRow, name: str
) -> UserRow | None:
    """The existing user named `name` this provider may speak for, None when there is no
    such user, or IdTokenRefused when the name is someone else's."""
    query = select(UserRow).where(UserRow.name == name)
    user = (await session.execute(query)).scalar_one_or_none()
    if user is None:
        return None
    if provider.org_id is None or user.is_operator or user.kind != "person":
        raise IdTokenRefused("name_taken", "That user name belongs to another account.")
    at_provider = select(UserIdentityRow.id).where(
        UserIdentityRow.user_id == user.id, UserIdentityRow.provider_id == provider.id
    )
    if (await session.execute(at_provider)).first() is not None:
        raise IdTokenRefused("name_taken", "That user name belongs to another account.")
    if not await belongs_only_to(session, user=user, org_id=provider.org_id):
        raise IdTokenRefused("name_taken", "That user name belongs to another organisation.")
    return user


async def belongs_only_to(session: AsyncSession, *, user: UserRow, org_id: str) -> bool:
    """True when nothing ties `user` to any organisation but `org_id`."""
    elsewhere = [
        select(func.count()).where(
            MembershipRow.user_id == user.id, MembershipRow.org_id != org_id
        ),
        select(func.count()).where(
            DirectoryUserRow.user_id == user.id, DirectoryUserRow.org_id != org_id
        ),
        select(func.count())
        .select_from(UserIdentityRow)
        .join(IdentityProviderRow, IdentityProviderRow.id == UserIdentityRow.provider_id)
        .where(
            UserIdentityRow.user_id == user.id,
            (IdentityProviderRow.org_id != org_id) | IdentityProviderRow.org_id.is_(None),
        ),
    ]
    for count in elsewhere:
        if (await session.execute(count)).scalar_one():
            return False
    return True


async def directory_entry(
    session: AsyncSession, *, org_id: str, user: UserRow, claims: dict[str, Any]
) -> DirectoryUserRow:
    """The person's entry in the organisation's directory, made at their first sign-in if
    the directory did not provision them, so SCIM finds them by name afterwards."""
    query = select(DirectoryUserRow).where(
        DirectoryUserRow.org_id == org_id, DirectoryUserRow.user_id == user.id
    )
    entry = (await session.execute(query)).scalar_one_or_none()
    if entry is not None:
        return entry
    resource: dict[str, Any] = {"userName": user.name, "active": True}
    if isinstance(claims.get("name"), str):
        resource["displayName"] = claims["name"][:200]
    if isinstance(claims.get("email"), str):
        resource["emails"] = [{"value": claims["email"][:254], "primary": True}]
    now = utcnow()
    entry = DirectoryUserRow(
        id=str(uuid.uuid4()),
        org_id=org_id,
        user_id=user.id,
        user_name=user.name,
        active=True,
        resource=resource,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(entry)
    await session.flush()
    return entry


async def apply_grants(
    session: AsyncSession, *, org_id: str, user: UserRow, grants: Grants, actor: Actor
) -> bool:
    """Make the directory's memberships of `user` in `org_id` say `grants`. Returns whether
    the user still holds anything there."""
    before = await _held(session, org_id=org_id, user_id=user.id)
    await _set_membership(session, org_id=org_id, user=user, role=grants.org_role)
    await _set_project_grants(session, org_id=org_id, user=user, wanted=grants.projects)
    after = await _held(session, org_id=org_id, user_id=user.id)
    if before == after:
        return bool(after)
    revoked = 0
    if not after:
        revoked = await key_lineage.revoke_membership_keys(session, org_id=org_id, user_id=user.id)
    await record(
        session,
        actor=actor,
        action="member.directory",
        org_id=org_id,
        target_type="user",
        target_id=user.id,
        details={"user": user.name, "from": before, "to": after, "keys_revoked": revoked},
    )
    return bool(after)


async def _held(session: AsyncSession, *, org_id: str, user_id: str) -> dict[str, str]:
    """What the user holds in the organisation: {"org": role, <project id>: role}."""
    held: dict[str, str] = {}
    membership = await memberships.find_membership(session, org_id=org_id, user_id=user_id)
    if membership is not None:
        held["org"] = membership.role
    query = select(ProjectGrantRow).where(
        ProjectGrantRow.org_id == org_id, ProjectGrantRow.user_id == user_id
    )
    for grant in (await session.execute(query)).scalars():
        held[grant.project_id] = grant.role
    return held


async def _set_membership(
    session: AsyncSession, *, org_id: str, user: UserRow, role: Role | None
) -> None:
    membership = await memberships.find_membership(session, org_id=org_id, user_id=user.id)
    if membership is not None and membership.source != "directory":
        return  # added by hand: changed by hand
    if role is None:
        if membership is not None:
            await session.delete(membership)
    elif membership is None:
        session.add(
            MembershipRow(
                id=new_id("mem"), org_id=org_id, user_id=user.id, role=role, source="directory"
            )
        )
    else:
        membership.role = role
    await session.flush()


async def _set_project_grants(
    session: AsyncSession, *, org_id: str, user: UserRow, wanted: dict[str, Role]
) -> None:
    query = select(ProjectGrantRow).where(
        ProjectGrantRow.org_id == org_id,
        ProjectGrantRow.user_id == user.id,
        ProjectGrantRow.source == "directory",
    )
    existing = {g.project_id: g for g in (await session.execute(query)).scalars()}
    for project_id, grant in existing.items():
        if project_id not in wanted:
            await session.delete(grant)
        else:
            grant.role = wanted[project_id]
    for project_id, role in wanted.items():
        if project_id not in existing:
            session.add(
                ProjectGrantRow(
                    id=new_id("pgr"),
                    org_id=org_id,
                    project_id=project_id,
                    user_id=user.id,
                    role=role,
                    source="directory",
                )
            )
    await session.flush()


async def remove_from_org(
    session: AsyncSession, *, org_id: str, user: UserRow, actor: Actor, reason: str
) -> int:
    """Deactivated or deleted by the directory: every membership and role in the
    organisation goes (hand-made ones too), and every key there, with what they minted."""
    await session.execute(
        delete(MembershipRow).where(
            MembershipRow.org_id == org_id, MembershipRow.user_id == user.id
        )
    )
    await session.execute(
        delete(ProjectGrantRow).where(
            ProjectGrantRow.org_id == org_id, ProjectGrantRow.user_id == user.id
        )
    )
    revoked = await key_lineage.revoke_membership_keys(session, org_id=org_id, user_id=user.id)
    await record(
        session,
        actor=actor,
        action=f"user.{reason}",
        org_id=org_id,
        target_type="user",
        target_id=user.id,
        details={"user": user.name, "keys_revoked": revoked},
    )
    return revoked
