"""Sovereignty policies: the operator's ceiling per organisation, and project policies
that may only narrow it. Versions are append-only, so the policy in force at any past
moment is known.

An organisation's own zero-retention switch (`tenancy.data_controls`) is folded into its
ceiling wherever the policy in force is read (`effective`, `current_all`), so it is one
more way to turn zero retention on; only the operator's ceiling bounds project policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator, check_org
from souverain.core.errors import PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.policy import UNRESTRICTED, Policy, intersect, widenings
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.policies import PolicyDocument
from souverain.db.tables import ProjectRow, SovereigntyPolicyRow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import data_controls, orgs, projects


@dataclass(frozen=True)
class PolicyVersion:
    id: str
    org_id: str
    project_id: str | None
    policy: Policy
    created_at: datetime


def _version(row: SovereigntyPolicyRow) -> PolicyVersion:
    policy = PolicyDocument.model_validate(row.document).to_policy()
    return PolicyVersion(row.id, row.org_id, row.project_id, policy, row.created_at)


async def latest(
    session: AsyncSession, *, org_id: str, project_id: str | None
) -> PolicyVersion | None:
    query = (
        select(SovereigntyPolicyRow)
        .where(SovereigntyPolicyRow.org_id == org_id, _project_is(project_id))
        .order_by(SovereigntyPolicyRow.created_at.desc(), SovereigntyPolicyRow.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).scalar_one_or_none()
    return None if row is None else _version(row)


def _project_is(project_id: str | None):  # type: ignore[no-untyped-def]
    column = SovereigntyPolicyRow.project_id
    return column.is_(None) if project_id is None else column == project_id


async def ceiling_of(session: AsyncSession, *, org_id: str) -> Policy:
    version = await latest(session, org_id=org_id, project_id=None)
    return UNRESTRICTED if version is None else version.policy


async def ceiling_in_force(session: AsyncSession, *, org_id: str) -> Policy:
    """The operator's ceiling, with zero retention on if the organisation turned it on."""
    ceiling = await ceiling_of(session, org_id=org_id)
    controls = await data_controls.find_controls(session, org_id=org_id)
    return (
        replace(ceiling, zero_retention=True) if controls and controls.zero_retention else ceiling
    )


async def effective(session: AsyncSession, *, org_id: str, project_id: str | None) -> Policy:
    """The policy in force: ceiling (with the organisation's switch) ∩ project policy."""
    ceiling = await ceiling_in_force(session, org_id=org_id)
    if project_id is None:
        return ceiling
    project = await latest(session, org_id=org_id, project_id=project_id)
    return intersect(ceiling, UNRESTRICTED if project is None else project.policy)


async def set_ceiling(
    session: AsyncSession, *, principal: Principal, org_ref: str, document: PolicyDocument
) -> PolicyVersion:
    """The operator sets an organisation's ceiling. Project policies are intersected with
    it, so narrowing the ceiling narrows every project at once."""
    check_operator(principal)
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    if (
        document.zero_retention
        and not (await ceiling_in_force(session, org_id=org.id)).zero_retention
    ):
        await data_controls.check_no_stored_work(session, org_id=org.id)
    version = await _append(
        session, org_id=org.id, project_id=None, document=document, by=principal.user_id
    )
    await record(
        session,
        actor=actor_of(principal),
        action="policy.ceiling.set",
        org_id=org.id,
        target_type="policy",
        target_id=version.id,
        details=document.model_dump(mode="json"),
    )
    return version


async def set_project_policy(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    project_ref: str,
    document: PolicyDocument,
) -> PolicyVersion:
    """Org admins set project policies; a policy that would widen the ceiling is refused."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    project = await projects.get_project(
        session, principal=principal, org_id=org.id, ref=project_ref
    )
    problems = widenings(await ceiling_of(session, org_id=org.id), document.to_policy())
    if problems:
        raise PermissionDeniedError(
            "a project policy may only narrow its organisation's ceiling: " + "; ".join(problems)
        )
    if (
        document.zero_retention
        and not (await effective(session, org_id=org.id, project_id=project.id)).zero_retention
    ):
        await data_controls.check_no_stored_work(session, org_id=org.id, project_id=project.id)
    version = await _append(
        session, org_id=org.id, project_id=project.id, document=document, by=principal.user_id
    )
    await record(
        session,
        actor=actor_of(principal),
        action="policy.project.set",
        org_id=org.id,
        target_type="project",
        target_id=project.id,
        details=document.model_dump(mode="json"),
    )
    return version


async def _append(
    session: AsyncSession, *, org_id: str, project_id: str | None, document: PolicyDocument, by: str
) -> PolicyVersion:
    row = SovereigntyPolicyRow(
        id=new_id("pol"),
        org_id=org_id,
        project_id=project_id,
        document=document.model_dump(mode="json"),
        created_by=by,
    )
    session.add(row)
    await session.flush()
    return _version(row)


async def view(
    session: AsyncSession, *, principal: Principal, org_ref: str, project_ref: str | None
) -> tuple[str, str | None, Policy, PolicyVersion | None, Policy]:
    """(org id, project id, own policy, its version, effective policy) for reading."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    ceiling = await latest(session, org_id=org.id, project_id=None)
    ceiling_policy = UNRESTRICTED if ceiling is None else ceiling.policy
    if project_ref is None:
        return org.id, None, ceiling_policy, ceiling, ceiling_policy
    project: ProjectRow = await projects.get_project(
        session, principal=principal, org_id=org.id, ref=project_ref
    )
    own = await latest(session, org_id=org.id, project_id=project.id)
    own_policy = UNRESTRICTED if own is None else own.policy
    in_force = await ceiling_in_force(session, org_id=org.id)
    return org.id, project.id, own_policy, own, intersect(in_force, own_policy)


async def history(session: AsyncSession, *, org_id: str) -> list[PolicyVersion]:
    query = (
        select(SovereigntyPolicyRow)
        .where(SovereigntyPolicyRow.org_id == org_id)
        .order_by(SovereigntyPolicyRow.created_at, SovereigntyPolicyRow.id)
    )
    return [_version(row) for row in (await session.execute(query)).scalars()]


async def current_all(session: AsyncSession) -> dict[tuple[str, str | None], Policy]:
    """The latest policy of every (organisation, project-or-ceiling): for the gateway."""
    result: dict[tuple[str, str | None], Policy] = {}
    for version in await _all_versions(session):
        result[(version.org_id, version.project_id)] = version.policy
    for org_id in await data_controls.zero_retention_orgs(session):
        ceiling = result.get((org_id, None), UNRESTRICTED)
        result[(org_id, None)] = replace(ceiling, zero_retention=True)
    return result


async def _all_versions(session: AsyncSession) -> Sequence[PolicyVersion]:
    query = select(SovereigntyPolicyRow).order_by(
        SovereigntyPolicyRow.created_at, SovereigntyPolicyRow.id
    )
    return [_version(row) for row in (await session.execute(query)).scalars()]


def in_force(versions: Sequence[PolicyVersion], *, project_id: str | None, at: datetime) -> Policy:
    """The effective policy (ceiling ∩ project) at a past moment, from an org's history."""
    ceiling = project = UNRESTRICTED
    for version in versions:  # in creation order
        if version.created_at > at:
            break
        if version.project_id is None:
            ceiling = version.policy
        elif version.project_id == project_id:
            project = version.policy
    return intersect(ceiling, project)
