"""/scim/v2/Groups: the directory's groups and who is in them.

A group is a name the organisation's mapping may give a role to; its members are the
organisation's directory users (a member of another organisation is "not found"). When the
organisation's groups come from SCIM, every change of a group's members re-evaluates the
people it touches at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from scim2_models import Context, Group, GroupMember
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.identity import DirectoryGroupRow, DirectoryMemberRow, DirectoryUserRow
from souverain.db.tables import utcnow
from souverain.evidence.audit import record
from souverain.identity.scim import resources
from souverain.identity.scim.directory import Directory, reevaluate
from souverain.identity.scim.resources import ScimError


async def to_resource(session: AsyncSession, directory: Directory, row: DirectoryGroupRow) -> Group:
    query = (
        select(DirectoryUserRow.id, DirectoryUserRow.user_name)
        .join(DirectoryMemberRow, DirectoryMemberRow.member_id == DirectoryUserRow.id)
        .where(DirectoryMemberRow.group_id == row.id)
        .order_by(DirectoryUserRow.user_name)
    )
    members = [
        GroupMember(value=uid, display=name, type="User", ref=directory.location("Users", uid))
        for uid, name in (await session.execute(query)).all()
    ]
    group = Group(
        id=row.id,
        display_name=row.display_name,
        external_id=row.external_id,
        members=members or None,
    )
    group.meta = resources.meta(
        "Group", directory.location("Groups", row.id), row.created_at, row.updated_at, row.version
    )
    return group


async def get_entry(
    session: AsyncSession, directory: Directory, group_id: str
) -> DirectoryGroupRow:
    row = await session.get(DirectoryGroupRow, group_id)
    if row is None or row.org_id != directory.org_id:
        raise ScimError(404, f"Group {group_id} not found.")
    return row


async def list_entries(
    session: AsyncSession, directory: Directory, *, expression: str | None, start: int, count: int
) -> tuple[int, list[DirectoryGroupRow]]:
    filter_ = resources.checked_filter(Group, expression)
    query = select(DirectoryGroupRow).where(DirectoryGroupRow.org_id == directory.org_id)
    if (name := resources.equality(filter_, "displayName")) is not None:
        query = query.where(DirectoryGroupRow.display_name == name)
    rows = list((await session.execute(query.order_by(DirectoryGroupRow.created_at))).scalars())
    if filter_ is not None:
        matched = []
        for row in rows:
            if filter_.match(await to_resource(session, directory, row)):
                matched.append(row)
        rows = matched
    return len(rows), rows[start - 1 : start - 1 + count]


async def create(session: AsyncSession, directory: Directory, payload: Any) -> DirectoryGroupRow:
    group = resources.parse(Group, payload, Context.RESOURCE_CREATION_REQUEST)
    name = _display_name(group)
    await _check_name_free(session, directory, name, group_id=None)
    now = utcnow()
    row = DirectoryGroupRow(
        id=str(uuid.uuid4()),
        org_id=directory.org_id,
        display_name=name,
        external_id=group.external_id,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    await _set_members(session, directory, row, group)
    await _audit(session, directory, "scim.group.create", row)
    return row


async def replace(
    session: AsyncSession, directory: Directory, group_id: str, payload: Any
) -> DirectoryGroupRow:
    row = await get_entry(session, directory, group_id)
    group = resources.parse(Group, payload, Context.RESOURCE_REPLACEMENT_REQUEST)
    await _save(session, directory, row, group)
    return row


async def patch(
    session: AsyncSession, directory: Directory, group_id: str, payload: Any
) -> DirectoryGroupRow:
    row = await get_entry(session, directory, group_id)
    operations = resources.parse_patch(Group, payload)
    group = await to_resource(session, directory, row)
    resources.apply_patch(operations, group)
    await _save(session, directory, row, group)
    return row


async def remove(session: AsyncSession, directory: Directory, group_id: str) -> None:
    row = await get_entry(session, directory, group_id)
    touched = await _members(session, row.id)
    await _audit(session, directory, "scim.group.delete", row)
    await session.delete(row)
    await session.flush()
    await reevaluate(session, directory, touched)


async def _save(
    session: AsyncSession, directory: Directory, row: DirectoryGroupRow, group: Group
) -> None:
    name = _display_name(group)
    if name != row.display_name:
        await _check_name_free(session, directory, name, group_id=row.id)
    row.display_name, row.external_id = name, group.external_id
    row.version += 1
    row.updated_at = utcnow()
    await _set_members(session, directory, row, group)
    await _audit(session, directory, "scim.group.update", row)


async def _set_members(
    session: AsyncSession, directory: Directory, row: DirectoryGroupRow, group: Group
) -> None:
    before = await _members(session, row.id)
    wanted = {m.value for m in group.members or [] if m.value}
    found = []
    if wanted:
        query = select(DirectoryUserRow).where(
            DirectoryUserRow.id.in_(wanted), DirectoryUserRow.org_id == directory.org_id
        )
        found = list((await session.execute(query)).scalars())
    if len(found) != len(wanted):
        raise ScimError(400, "A member is not a user of this directory.", "invalidValue")
    await session.execute(delete(DirectoryMemberRow).where(DirectoryMemberRow.group_id == row.id))
    for member in found:
        session.add(DirectoryMemberRow(group_id=row.id, member_id=member.id))
    await session.flush()
    touched = {m.id: m for m in before} | {m.id: m for m in found}
    await reevaluate(session, directory, list(touched.values()))


async def _members(session: AsyncSession, group_id: str) -> list[DirectoryUserRow]:
    query = (
        select(DirectoryUserRow)
        .join(DirectoryMemberRow, DirectoryMemberRow.member_id == DirectoryUserRow.id)
        .where(DirectoryMemberRow.group_id == group_id)
    )
    return list((await session.execute(query)).scalars())


def _display_name(group: Group) -> str:
    name = (group.display_name or "").strip()
    if not 0 < len(name) <= 255:
        raise ScimError(400, "displayName is required (at most 255 characters).", "invalidValue")
    return name


async def _check_name_free(
    session: AsyncSession, directory: Directory, name: str, *, group_id: str | None
) -> None:
    query = select(DirectoryGroupRow.id).where(
        DirectoryGroupRow.org_id == directory.org_id, DirectoryGroupRow.display_name == name
    )
    found = (await session.execute(query)).scalar_one_or_none()
    if found is not None and found != group_id:
        raise ScimError(409, f"A group named '{name}' exists.", "uniqueness")


async def _audit(
    session: AsyncSession, directory: Directory, action: str, row: DirectoryGroupRow
) -> None:
    members = [m.user_name for m in await _members(session, row.id)]
    await record(
        session,
        actor=directory.actor,
        action=action,
        org_id=directory.org_id,
        target_type="group",
        target_id=row.id,
        details={"group": row.display_name, "members": members[:100], "count": len(members)},
    )
