"""Who is calling: the result of authenticating an API key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from souverain.core.roles import Role, Scope


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    user_id: str
    user_name: str
    org_id: str | None  # None only for platform operators
    project_id: str | None  # set when the key is restricted to one project
    role: Role
    scopes: frozenset[Scope]  # effective scopes: key ∩ role ∩ user's current role
    expires_at: datetime | None = None
    rpm: int | None = None  # the key's own rate limits, if any
    tpm: int | None = None
    # Rate limits of this key and of every key above it in its lineage, as
    # (key id, rpm, tpm): a minted key spends from its ancestors' buckets too.
    lineage_limits: tuple[tuple[str, int | None, int | None], ...] = ()
    service_account: bool = False  # a non-human principal: shown apart in the audit log
    # "batch": its requests queue like batch lines, behind interactive ones (api_keys.priority)
    priority: str = "interactive"

    @property
    def is_operator(self) -> bool:
        return Scope.PLATFORM in self.scopes

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes
