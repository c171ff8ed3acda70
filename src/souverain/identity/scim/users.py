"""/scim/v2/Users: the directory creates, changes, deactivates and deletes people.

Deactivating (`active: false`, by PUT or PATCH) or deleting someone takes away every
membership and role they hold in the organisation and revokes every key they hold there,
with every key those keys minted: their console sessions (opened with a key or by single
sign-on, which also acts through a key of theirs) stop at the next request, on every server
within the key cache's lifetime (2 s by default). Both are audited.
"""

from __future__ import annotations

import uuid
from typing import Any

from scim2_models import Context, GroupMembership, User
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.ids import new_id
from souverain.db.identity import DirectoryUserRow, IdentityProviderRow, UserIdentityRow
from souverain.db.tables import UserRow, utcnow
from souverain.evidence.audit import record
from souverain.identity import people
from souverain.identity.scim import resources
from souverain.identity.scim.directory import Directory, group_names_of, reevaluate
from souverain.identity.scim.resources import ScimError


async def to_resource(
    session: AsyncSession, directory: Directory, row: DirectoryUserRow
) -> User[Any]:
    user: User[Any] = User.model_validate({**row.resource, "id": row.id})
    groups = await group_names_of(session, member_id=row.id)
    user.groups = [
        GroupMembership(value=gid, display=name, ref=directory.location("Groups", gid))
        for gid, name in groups
    ] or None
    user.meta = resources.meta(
        "User", directory.location("Users", row.id), row.created_at, row.updated_at, row.version
    )
    return user


async def get_entry(session: AsyncSession, directory: Directory, user_id: str) -> DirectoryUserRow:
    """Another organisation's user is "not found", like one that never existed."""
    row = await session.get(DirectoryUserRow, user_id)
    if row is None or row.org_id != directory.org_id:
        raise ScimError(404, f"User {user_id} not found.")
    return row


async def list_entries(
    session: AsyncSession, directory: Directory, *, expression: str | None, start: int, count: int
) -> tuple[int, list[DirectoryUserRow]]:
    filter_ = resources.checked_filter(User, expression)
    query = select(DirectoryUserRow).where(DirectoryUserRow.org_id == directory.org_id)
    if (name := resources.equality(filter_, "userName")) is not None:
        query = query.where(DirectoryUserRow.user_name == name.lower())
    elif (external := resources.equality(filter_, "externalId")) is not None:
        query = query.where(DirectoryUserRow.external_id == external)
        filter_ = None if external else filter_
    rows = list((await session.execute(query.order_by(DirectoryUserRow.created_at))).scalars())
    if filter_ is not None:
        matched = []
        for row in rows:
            if filter_.match(await to_resource(session, directory, row)):
                matched.append(row)
        rows = matched
    return len(rows), rows[start - 1 : start - 1 + count]


async def create(session: AsyncSession, directory: Directory, payload: Any) -> DirectoryUserRow:
    user = resources.parse(User, payload, Context.RESOURCE_CREATION_REQUEST)
    name = _user_name(user)
    await _check_name_free(session, directory, name, entry_id=None)
    account = await _account_for(session, directory, name)
    now = utcnow()
    row = DirectoryUserRow(
        id=str(uuid.uuid4()),
        org_id=directory.org_id,
        user_id=account.id,
        user_name=name,
        external_id=user.external_id,
        active=user.active is not False,
        resource=resources.stored(user),
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    await _audit(session, directory, "scim.user.create", row)
    return row


async def replace(
    session: AsyncSession, directory: Directory, user_id: str, payload: Any
) -> DirectoryUserRow:
    row = await get_entry(session, directory, user_id)
    user = resources.parse(User, payload, Context.RESOURCE_REPLACEMENT_REQUEST)
    await _save(session, directory, row, user)
    return row


async def patch(
    session: AsyncSession, directory: Directory, user_id: str, payload: Any
) -> DirectoryUserRow:
    row = await get_entry(session, directory, user_id)
    operations = resources.parse_patch(User, payload)
    user = await to_resource(session, directory, row)
    user.groups = None  # read-only here: group membership changes through /Groups
    resources.apply_patch(operations, user)
    await _save(session, directory, row, user)
    return row


async def remove(session: AsyncSession, directory: Directory, user_id: str) -> None:
    row = await get_entry(session, directory, user_id)
    account = await session.get(UserRow, row.user_id)
    if account is not None:
        await people.remove_from_org(
            session, org_id=directory.org_id, user=account, actor=directory.actor, reason="deleted"
        )
        await _forget_identities(session, directory, account.id)
    await session.delete(row)
    await _audit(session, directory, "scim.user.delete", row)


async def _save(
    session: AsyncSession, directory: Directory, row: DirectoryUserRow, user: User[Any]
) -> None:
    resources.check_no_rights(user)
    name = _user_name(user)
    if name != row.user_name:
        await _check_name_free(session, directory, name, entry_id=row.id)
        await _rename_account(session, directory, row, name)
    was_active, row.active = row.active, user.active is not False
    row.user_name, row.external_id = name, user.external_id
    row.resource = resources.stored(user)
    row.version += 1
    row.updated_at = utcnow()
    await session.flush()
    await _audit(session, directory, "scim.user.update", row)
    account = await session.get(UserRow, row.user_id)
    if was_active and not row.active and account is not None:
        await people.remove_from_org(
            session,
            org_id=directory.org_id,
            user=account,
            actor=directory.actor,
            reason="deactivated",
        )
    elif row.active and not was_active:
        await reevaluate(session, directory, [row])


def _user_name(user: User[Any]) -> str:
    resources.check_no_rights(user)
    name = (user.user_name or "").lower()
    if not people.NAME.match(name):
        raise ScimError(
            400,
            "userName must be 1 to 64 letters, digits or . _ @ + - (starting and ending with a "
            "letter or digit).",
            "invalidValue",
        )
    return name


async def _check_name_free(
    session: AsyncSession, directory: Directory, name: str, *, entry_id: str | None
) -> None:
    query = select(DirectoryUserRow.id).where(
        DirectoryUserRow.org_id == directory.org_id, DirectoryUserRow.user_name == name
    )
    found = (await session.execute(query)).scalar_one_or_none()
    if found is not None and found != entry_id:
        raise ScimError(409, f"A user named '{name}' exists.", "uniqueness")


async def _account_for(session: AsyncSession, directory: Directory, name: str) -> UserRow:
    """The platform user a new directory entry is: one made by hand for this organisation
    only, else a new one. A name that is someone else's (another organisation's, an
    operator's) is taken: the directory cannot claim it."""
    query = select(UserRow).where(UserRow.name == name)
    account = (await session.execute(query)).scalar_one_or_none()
    if account is None:
        account = UserRow(id=new_id("usr"), name=name, is_operator=False, kind="person")
        session.add(account)
        await session.flush()
        return account
    usable = account.kind == "person" and not account.is_operator
    if usable and await people.belongs_only_to(session, user=account, org_id=directory.org_id):
        return account
    raise ScimError(409, f"The name '{name}' is taken.", "uniqueness")


async def _rename_account(
    session: AsyncSession, directory: Directory, row: DirectoryUserRow, name: str
) -> None:
    account = await session.get(UserRow, row.user_id)
    taken = await session.execute(select(func.count()).where(UserRow.name == name))
    if account is None or taken.scalar_one():
        raise ScimError(409, f"The name '{name}' is taken.", "uniqueness")
    if not await people.belongs_only_to(session, user=account, org_id=directory.org_id):
        raise ScimError(
            409, "This person's name is also used elsewhere; it cannot change here.", "mutability"
        )
    account.name = name


async def _forget_identities(session: AsyncSession, directory: Directory, user_id: str) -> None:
    providers = select(IdentityProviderRow.id).where(IdentityProviderRow.org_id == directory.org_id)
    await session.execute(
        delete(UserIdentityRow).where(
            UserIdentityRow.user_id == user_id, UserIdentityRow.provider_id.in_(providers)
        )
    )


async def _audit(
    session: AsyncSession, directory: Directory, action: str, row: DirectoryUserRow
) -> None:
    await record(
        session,
        actor=directory.actor,
        action=action,
        org_id=directory.org_id,
        target_type="user",
        target_id=row.user_id,
        details={"user": row.user_name, "scim_id": row.id, "active": row.active},
    )
