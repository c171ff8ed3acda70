"""What the users and groups services share: the calling directory, and the re-evaluation of
people's roles from the groups SCIM provisions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.identity import DirectoryGroupRow, DirectoryMemberRow, DirectoryUserRow
from souverain.db.tables import UserRow
from souverain.evidence.audit import Actor
from souverain.identity import mappings, people


@dataclass(frozen=True)
class Directory:
    """The caller of a SCIM request: one organisation's directory, by one of its tokens."""

    org_id: str
    token_id: str
    base_url: str  # https://…/scim/v2

    @property
    def actor(self) -> Actor:
        return Actor("directory", f"scim-token:{self.token_id}")

    def location(self, kind: str, resource_id: str) -> str:
        return f"{self.base_url}/{kind}/{resource_id}"


async def group_names_of(session: AsyncSession, *, member_id: str) -> list[tuple[str, str]]:
    """(group id, display name) of the groups a directory user is in."""
    query = (
        select(DirectoryGroupRow.id, DirectoryGroupRow.display_name)
        .join(DirectoryMemberRow, DirectoryMemberRow.group_id == DirectoryGroupRow.id)
        .where(DirectoryMemberRow.member_id == member_id)
        .order_by(DirectoryGroupRow.display_name)
    )
    return [(gid, name) for gid, name in (await session.execute(query)).all()]


async def reevaluate(
    session: AsyncSession, directory: Directory, entries: list[DirectoryUserRow]
) -> None:
    """When the organisation's groups come from SCIM, what these people hold follows their
    groups at once (a removal from a group demotes them now, on every server within the key
    cache's lifetime)."""
    if await mappings.group_source(session, org_id=directory.org_id) != "scim":
        return
    lines = await mappings.load_lines(session, org_id=directory.org_id)
    for entry in entries:
        if not entry.active:
            continue
        groups = [name for _, name in await group_names_of(session, member_id=entry.id)]
        user = await session.get(UserRow, entry.user_id)
        if user is None:
            continue
        await people.apply_grants(
            session,
            org_id=directory.org_id,
            user=user,
            grants=mappings.grants_for(groups, lines),
            actor=directory.actor,
        )
