"""Authorisation checks shared by every service.

Across tenants the answer is always "not found": a key of organisation A must not be able
to learn that an id of organisation B exists.
"""

from __future__ import annotations

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
