"""Roles and scopes, and the one rule that keeps keys honest.

A role is a set of scopes. A key holds a role and a subset of its scopes; what a key may
do is the intersection of its own scopes and the scopes its user holds *now* in the
organisation, so demoting or removing a user shrinks every key they made. Creating a key
or a membership is refused unless every scope it would grant is already held by the
caller: a key can never grant more than its creator holds.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    INFERENCE = "inference"  # call /v1
    READ = "read"  # read the organisation's projects, models, deployments, usage
    MANAGE = "manage"  # create and change projects, members, keys, deployments
    AUDIT = "audit"  # read audit events and residency reports
    OWN = "own"  # grant ownership, change the organisation's own settings
    PLATFORM = "platform"  # operator: organisations, datacenters, nodes, public models


class Role(StrEnum):
    OPERATOR = "operator"
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"
    AUDITOR = "auditor"


ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.OPERATOR: frozenset(Scope),
    Role.OWNER: frozenset({Scope.INFERENCE, Scope.READ, Scope.MANAGE, Scope.AUDIT, Scope.OWN}),
    Role.ADMIN: frozenset({Scope.INFERENCE, Scope.READ, Scope.MANAGE, Scope.AUDIT}),
    Role.MEMBER: frozenset({Scope.INFERENCE, Scope.READ}),
    Role.VIEWER: frozenset({Scope.READ}),
    Role.AUDITOR: frozenset({Scope.READ, Scope.AUDIT}),
}

ORG_ROLES = frozenset(ROLE_SCOPES) - {Role.OPERATOR}


def scopes_of(role: Role) -> frozenset[Scope]:
    return ROLE_SCOPES[role]


def can_grant(
    held: frozenset[Scope], *, role: Role, scopes: frozenset[Scope] | None = None
) -> bool:
    """True when the caller, holding `held`, may hand out `role` (optionally narrowed).

    The whole role must already be held, not just the narrowed scopes: a member may not
    mint an "admin" key even if it is narrowed to reading.
    """
    role_scopes = scopes_of(role)
    return role_scopes <= held and (scopes is None or scopes <= role_scopes)


def effective_scopes(
    key_role: Role, key_scopes: frozenset[Scope], held: frozenset[Scope] | None
) -> frozenset[Scope]:
    """What a key may do now: its scopes, within its role, within what its user holds now
    (their membership's role, and in a project their role there too)."""
    if held is None:
        return frozenset()
    return key_scopes & scopes_of(key_role) & held
