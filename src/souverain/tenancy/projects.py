from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org, check_project
from souverain.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.tenancy import ProjectCreateRequest, ProjectUpdateRequest
from souverain.db.tables import ApiKeyRow, ProjectRow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs


async def list_projects(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> list[ProjectRow]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    query = select(ProjectRow).where(ProjectRow.org_id == org.id).order_by(ProjectRow.name)
    if principal.project_id is not None:
        query = query.where(ProjectRow.id == principal.project_id)
    return list((await session.execute(query)).scalars())


async def find_project(session: AsyncSession, *, org_id: str, ref: str) -> ProjectRow | None:
    query = select(ProjectRow).where(
        ProjectRow.org_id == org_id, or_(ProjectRow.id == ref, ProjectRow.name == ref)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def get_project(
    session: AsyncSession, *, principal: Principal, org_id: str, ref: str
) -> ProjectRow:
    check_org(principal, org_id, Scope.READ)
    project = await find_project(session, org_id=org_id, ref=ref)
    if project is None:
        raise NotFoundError("project not found")
    check_project(principal, project.id)
    return project


async def get_default_project(session: AsyncSession, *, org_id: str) -> ProjectRow:
    project = await find_project(session, org_id=org_id, ref=orgs.DEFAULT_PROJECT)
    if project is None:
        raise NotFoundError("the organisation has no default project")
    return project


async def create_project(
    session: AsyncSession, *, principal: Principal, org_ref: str, request: ProjectCreateRequest
) -> ProjectRow:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    if await find_project(session, org_id=org.id, ref=request.name) is not None:
        raise ConflictError(f"project '{request.name}' already exists", param="name")
    allowed = await can_make_interactive(session, principal=principal)
    priority = request.priority or ("interactive" if allowed else "batch")
    if priority == "interactive" and not allowed:
        raise _not_interactive()
    project = ProjectRow(id=new_id("prj"), org_id=org.id, name=request.name, priority=priority)
    session.add(project)
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="project.create",
        org_id=org.id,
        target_type="project",
        target_id=project.id,
        details={"name": project.name, "priority": project.priority},
    )
    return project


async def update_project(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    project_ref: str,
    request: ProjectUpdateRequest,
) -> ProjectRow:
    """Change a project's priority: its keys' requests follow within the key cache's
    lifetime (a key is authenticated again after a few seconds)."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    project = await get_project(session, principal=principal, org_id=org.id, ref=project_ref)
    lifted = request.priority == "interactive" != project.priority
    if lifted and not await can_make_interactive(session, principal=principal):
        raise _not_interactive()
    before, project.priority = project.priority, request.priority
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="project.update",
        org_id=org.id,
        target_type="project",
        target_id=project.id,
        details={"priority": {"from": before, "to": project.priority}},
    )
    return project


async def can_make_interactive(session: AsyncSession, *, principal: Principal) -> bool:
    """Whether the caller may make a project interactive. A caller whose priority in
    effect is batch may not: its own key, and the keys it mints (a batch key mints batch
    keys), would be lifted through the project. One such caller may: a key of the whole
    organisation that is itself interactive, batch only because the organisation's
    default project is; refusing it would leave no key of the organisation able to undo
    making the default project batch."""
    if principal.priority != "batch":
        return True
    if principal.project_id is not None:
        return False
    row = await session.get(ApiKeyRow, principal.key_id)
    return row is not None and row.priority != "batch"


def _not_interactive() -> PermissionDeniedError:
    return PermissionDeniedError(
        "a batch key cannot make a project interactive: ask with an interactive key of the "
        "organisation",
        param="priority",
    )


def priority_in_effect(own: str, inherited: str) -> str:
    """A key's priority in effect: never more urgent than its project (a batch project's
    keys are batch keys, whatever they asked)."""
    return "batch" if "batch" in (own, inherited) else "interactive"


async def priorities_of(session: AsyncSession, *, org_ids: set[str]) -> dict[str | None, str]:
    """What keys inherit in these organisations: by project id, and by organisation id for
    keys of the whole organisation (its default project's)."""
    rows = (
        await session.execute(
            select(ProjectRow.id, ProjectRow.org_id, ProjectRow.name, ProjectRow.priority)
            .where(ProjectRow.org_id.in_(org_ids))
        )
    ).all()  # fmt: skip
    inherited: dict[str | None, str] = {p.id: p.priority for p in rows}
    inherited.update({p.org_id: p.priority for p in rows if p.name == orgs.DEFAULT_PROJECT})
    return inherited


async def priority_of(session: AsyncSession, *, org_id: str | None, project_id: str | None) -> str:
    """The priority a key of this project (the organisation's default project for a key of
    the whole organisation) inherits; interactive for platform keys."""
    if org_id is None:
        return "interactive"
    if project_id is not None:
        query = select(ProjectRow.priority).where(ProjectRow.id == project_id)
    else:
        query = select(ProjectRow.priority).where(
            ProjectRow.org_id == org_id, ProjectRow.name == orgs.DEFAULT_PROJECT
        )
    return (await session.execute(query)).scalar_one_or_none() or "interactive"


async def set_limits(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    project_ref: str,
    rpm: int | None,
    tpm: int | None,
) -> ProjectRow:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    project = await get_project(session, principal=principal, org_id=org.id, ref=project_ref)
    project.rpm, project.tpm = rpm, tpm
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="project.limits",
        org_id=org.id,
        target_type="project",
        target_id=project.id,
        details={"rpm": rpm, "tpm": tpm},
    )
    return project
