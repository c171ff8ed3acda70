"""Group mappings: which of the directory's groups give which souverain role, in the whole
organisation or in one project. The organisation's owner edits them; the operators edit the
platform's (its only role is operator).

A group that no line names grants nothing, whatever it is called: a group claim saying
"owner" or "operator" is just a name. When someone is in several mapped groups, the
highest role wins (owner > admin > member > auditor > viewer), per project.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator, check_org
from souverain.core.errors import InvalidRequestError, PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import ORG_ROLES, Role, Scope, can_grant
from souverain.core.schemas.identity import GroupMappingsRequest, GroupSource, MappingLine
from souverain.db.identity import DirectoryRow, GroupMappingRow
from souverain.db.tables import OrganisationRow, ProjectRow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs, projects

RANK = {
    Role.VIEWER: 1,
    Role.AUDITOR: 2,
    Role.MEMBER: 3,
    Role.ADMIN: 4,
    Role.OWNER: 5,
    Role.OPERATOR: 6,
}


@dataclass(frozen=True)
class Line:
    group: str
    role: Role
    project_id: str | None = None


@dataclass(frozen=True)
class Grants:
    """What someone's groups give them, by the mapping."""

    org_role: Role | None = None
    projects: dict[str, Role] = field(default_factory=dict)  # project id -> role

    @property
    def operator(self) -> bool:
        return self.org_role == Role.OPERATOR

    def is_empty(self) -> bool:
        return self.org_role is None and not self.projects


def higher(a: Role | None, b: Role) -> Role:
    return b if a is None or RANK[b] > RANK[a] else a


def grants_for(groups: Iterable[str], lines: Sequence[Line]) -> Grants:
    """Pure: the roles a person in `groups` holds under `lines`."""
    member_of = set(groups)
    org_role: Role | None = None
    by_project: dict[str, Role] = {}
    for line in lines:
        if line.group not in member_of:
            continue
        if line.project_id is None:
            org_role = higher(org_role, line.role)
        else:
            by_project[line.project_id] = higher(by_project.get(line.project_id), line.role)
    return Grants(org_role=org_role, projects=by_project)


async def load_lines(session: AsyncSession, *, org_id: str | None) -> list[Line]:
    column = GroupMappingRow.org_id
    query = select(GroupMappingRow).where(column.is_(None) if org_id is None else column == org_id)
    rows = (await session.execute(query)).scalars()
    return [Line(group=r.group, role=Role(r.role), project_id=r.project_id) for r in rows]


async def group_source(session: AsyncSession, *, org_id: str | None) -> GroupSource:
    if org_id is None:
        return "token"
    row = await session.get(DirectoryRow, org_id)
    return "scim" if row is not None and row.group_source == "scim" else "token"


async def read_mappings(
    session: AsyncSession, *, principal: Principal, org_ref: str | None
) -> tuple[OrganisationRow | None, GroupSource, list[tuple[GroupMappingRow, str | None]]]:
    org = await _mapped_org(session, principal=principal, org_ref=org_ref, scope=Scope.MANAGE)
    org_id = org.id if org else None
    column = GroupMappingRow.org_id
    query = (
        select(GroupMappingRow, ProjectRow.name)
        .outerjoin(ProjectRow, ProjectRow.id == GroupMappingRow.project_id)
        .where(column.is_(None) if org_id is None else column == org_id)
        .order_by(GroupMappingRow.group, ProjectRow.name)
    )
    rows: list[tuple[GroupMappingRow, str | None]] = [
        (line, name) for line, name in (await session.execute(query)).all()
    ]
    return org, await group_source(session, org_id=org_id), rows


async def replace_mappings(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str | None,
    request: GroupMappingsRequest,
) -> None:
    """The whole mapping at once: what is not in `request` is no longer mapped. It takes
    effect at each person's next sign-in or session refresh (and at once for SCIM groups)."""
    org = await _mapped_org(session, principal=principal, org_ref=org_ref, scope=Scope.OWN)
    lines = [await _checked_line(session, principal, org, line) for line in request.lines]
    if len(set(lines)) != len(lines):
        raise InvalidRequestError("a group is mapped twice to the same place", param="lines")
    column = GroupMappingRow.org_id
    org_id = org.id if org else None
    await session.execute(
        delete(GroupMappingRow).where(column.is_(None) if org_id is None else column == org_id)
    )
    for line in lines:
        session.add(
            GroupMappingRow(
                id=new_id("gmap"),
                org_id=org_id,
                group=line.group,
                project_id=line.project_id,
                role=line.role,
            )
        )
    if org is not None:
        await session.merge(DirectoryRow(org_id=org.id, group_source=request.group_source))
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="group_mapping.set",
        org_id=org_id,
        target_type="organisation" if org else "platform",
        target_id=org_id or "platform",
        details={
            "lines": [[x.group, x.role, x.project_id] for x in lines],
            "group_source": request.group_source,
        },
    )


async def _mapped_org(
    session: AsyncSession, *, principal: Principal, org_ref: str | None, scope: Scope
) -> OrganisationRow | None:
    if org_ref is None:
        check_operator(principal)
        return None
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, scope)
    return org


async def _checked_line(
    session: AsyncSession, principal: Principal, org: OrganisationRow | None, line: MappingLine
) -> Line:
    if org is None:
        if line.role != Role.OPERATOR or line.project is not None:
            raise InvalidRequestError("the platform's groups can only make operators")
        return Line(group=line.group, role=Role.OPERATOR)
    if line.role not in ORG_ROLES:
        raise PermissionDeniedError("the operator role is not an organisation role")
    if not can_grant(principal.scopes, role=line.role):
        raise PermissionDeniedError(f"you cannot grant the '{line.role}' role")
    project_id = None
    if line.project is not None:
        project = await projects.get_project(
            session, principal=principal, org_id=org.id, ref=line.project
        )
        project_id = project.id
    return Line(group=line.group, role=line.role, project_id=project_id)
