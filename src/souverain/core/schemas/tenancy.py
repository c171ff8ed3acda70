from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from souverain.core.roles import Role, Scope
from souverain.core.schemas.common import Out, StrictRequest

KeyPriority = Literal["interactive", "batch"]  # how the gateway queues a key's requests

Slug = Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$", max_length=64)]
UserName = Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$", max_length=64)]


class OrganisationCreateRequest(StrictRequest):
    name: Slug
    display_name: str | None = Field(default=None, max_length=200)
    owner: UserName | None = Field(
        default=None, description="User who becomes the owner (created if new)."
    )


class Organisation(Out):
    id: str
    name: str
    display_name: str
    created_at: datetime


PROJECT_PRIORITY = (
    "`batch`: every key of the project queues its requests behind interactive ones, whatever "
    "the key asks (a key is never more urgent than its project). Keys without a project "
    "follow the organisation's `default` project. A caller whose priority in effect is "
    "`batch` cannot make a project `interactive`, unless its key is of the whole "
    "organisation and itself interactive (batch only through the `default` project)."
)


class ProjectCreateRequest(StrictRequest):
    name: Slug
    priority: KeyPriority | None = Field(
        default=None,
        description=PROJECT_PRIORITY + " Left out: `interactive` if the caller may set it, "
        "else `batch`.",
    )


class ProjectUpdateRequest(StrictRequest):
    priority: KeyPriority = Field(description=PROJECT_PRIORITY)


class Project(Out):
    id: str
    org_id: str
    name: str
    priority: KeyPriority = "interactive"
    created_at: datetime


class MemberAddRequest(StrictRequest):
    user: UserName
    role: Role


class Member(Out):
    user_id: str
    user: str
    role: Role
    created_at: datetime


class KeyCreateRequest(StrictRequest):
    name: str = Field(default="", max_length=100)
    org: str | None = Field(default=None, max_length=64, description="Organisation id or name.")
    project: str | None = Field(
        default=None, max_length=64, description="Restrict the key to this project."
    )
    user: UserName | None = Field(
        default=None, description="Issue the key for another member (admins)."
    )
    role: Role = Role.MEMBER
    scopes: list[Scope] | None = Field(
        default=None, max_length=len(Scope), description="Narrow the role."
    )
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)
    priority: KeyPriority = Field(
        default="interactive",
        description="`batch`: the key's requests wait behind interactive ones for an engine's "
        "slots and hold at most a share of them, like batch lines. A key minted by a batch "
        "key is a batch key; so is, in effect, every key of a batch project.",
    )


class ApiKey(Out):
    id: str
    name: str
    user: str
    org_id: str | None
    project_id: str | None
    role: Role
    scopes: list[Scope]
    priority: KeyPriority = Field(
        default="interactive",
        description="How the gateway queues the key's requests now: its own priority, or its "
        "project's when that is `batch` (as `GET /api/me` shows it).",
    )
    priority_set: KeyPriority = Field(
        default="interactive",
        description="The key's own priority, as created; `priority` differs while its "
        "project is `batch`.",
    )
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. Shown once; only a hash is kept.")


class Me(Out):
    user: str
    user_id: str
    key_id: str
    org_id: str | None
    org: str | None
    project_id: str | None
    role: Role
    scopes: list[Scope]
    priority: KeyPriority = Field(
        default="interactive",
        description="How the gateway queues this key's requests: its own priority, or its "
        "project's when that is `batch`.",
    )
