"""Authorisation checks shared by every service, and the one rule of who sees what.

Across tenants the answer is always "not found": a key of organisation A must not be able
to learn that an id of organisation B exists.

Who sees an object depends on what kind of thing it is (`Holding`):

    SHARED  the organisation's resources (models, deployments): everyone in it, and the
            platform's own resources everyone; operators see every organisation's
    WORK    long work run on the fleet (fine-tuning and evaluation jobs): the user whose
            key started it, and the organisation's managers (the `manage` scope: owners,
            admins); operators see it all, since they run the fleet it uses
    DATA    the tenant's content (files, training data, batches and their outputs): the
            user whose key made it, and the organisation's managers; never operators

A key restricted to a project sees only that project's work and data. Members, viewers
and auditors therefore read their own work and data only, as they see only their own
usage; auditors read the evidence (audit log, usage, residency reports), not content.

`reach` makes the decision once, as data; `Reach.allows` applies it to one object and the
database layer renders the same `Reach` as a query filter (`db/visibility.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from souverain.core.errors import NotFoundError, PermissionDeniedError
from souverain.core.principal import Principal
from souverain.core.roles import Scope


def check_scope(principal: Principal, scope: Scope) -> None:
    if not principal.has(scope):
        raise PermissionDeniedError(f"this key lacks the '{scope}' scope")


def check_operator(principal: Principal) -> None:
    check_scope(principal, Scope.PLATFORM)


def can_see_org(principal: Principal, org_id: str | None) -> bool:
    return principal.is_operator or (org_id is not None and principal.org_id == org_id)


def check_org(
    principal: Principal, org_id: str, scope: Scope, *, what: str = "organisation"
) -> None:
    """Raise NotFound for another tenant's object, PermissionDenied for a missing scope."""
    if not can_see_org(principal, org_id):
        raise NotFoundError(f"{what} not found")
    check_scope(principal, scope)


def check_project(principal: Principal, project_id: str) -> None:
    """A key restricted to one project sees no other."""
    if principal.project_id is not None and principal.project_id != project_id:
        raise NotFoundError("project not found")


class Holding(StrEnum):
    SHARED = "shared"  # models, deployments
    WORK = "work"  # fine-tuning and evaluation jobs
    DATA = "data"  # files, batches


@dataclass(frozen=True)
class Owner:
    """Whose an object is: its organisation (None: the platform's), the project it was
    made in, and the user whose key made it."""

    org_id: str | None
    project_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class Reach:
    """What of one kind of object a caller sees. Each field narrows; None: any."""

    nothing: bool = False
    platform: bool = False  # the platform's own objects (no organisation) too
    org_id: str | None = None  # None: every organisation's
    project_id: str | None = None
    user_id: str | None = None

    def allows(self, owner: Owner) -> bool:
        if self.nothing:
            return False
        if owner.org_id is None:
            return self.platform
        return (
            (self.org_id is None or owner.org_id == self.org_id)
            and (self.project_id is None or owner.project_id == self.project_id)
            and (self.user_id is None or owner.user_id == self.user_id)
        )


NOTHING = Reach(nothing=True)


def reach(principal: Principal, holding: Holding) -> Reach:
    """The one rule: what of `holding` this caller sees."""
    if holding is Holding.SHARED:
        if principal.is_operator:
            return Reach(platform=True)
        return Reach(platform=True, org_id=principal.org_id) if principal.org_id else NOTHING
    if principal.is_operator:
        return Reach() if holding is Holding.WORK else NOTHING
    if principal.org_id is None:
        return NOTHING
    return Reach(
        org_id=principal.org_id,
        project_id=principal.project_id,
        user_id=None if principal.has(Scope.MANAGE) else principal.user_id,
    )


def can_see(principal: Principal, holding: Holding, owner: Owner) -> bool:
    return reach(principal, holding).allows(owner)
