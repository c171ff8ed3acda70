"""Wire types of single sign-on, group mappings, SCIM tokens and service accounts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from souverain.core.roles import Role
from souverain.core.schemas.common import Out, StrictRequest
from souverain.core.schemas.tenancy import Slug

Claim = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:./-]{1,64}$")]
GroupName = Annotated[str, Field(min_length=1, max_length=255)]
GroupSource = Literal["token", "scim"]


class ProviderCreateRequest(StrictRequest):
    org: str | None = Field(
        default=None,
        max_length=64,
        description="Organisation whose people sign in with this provider; "
        "omit for the platform's operators.",
    )
    name: Slug
    issuer: str = Field(max_length=255, description="The provider's issuer URL, exactly.")
    client_id: str = Field(min_length=1, max_length=255)
    client_secret: str = Field(min_length=1, max_length=1024, repr=False)
    scopes: str = Field(
        default="openid email profile",
        max_length=255,
        pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$",
    )
    username_claim: Claim = "preferred_username"
    groups_claim: Claim = "groups"


class IdentityProvider(Out):
    id: str
    org_id: str | None
    name: str
    issuer: str
    client_id: str
    scopes: str
    username_claim: str
    groups_claim: str
    created_at: datetime
    redirect_uri: str = Field(description="Register this redirect URI at the provider.")
    sign_in_url: str = Field(description="Where people of the organisation sign in.")


class MappingLine(StrictRequest):
    group: GroupName
    role: Role
    project: Slug | None = Field(
        default=None, description="The role in this project only; omit for the organisation."
    )


class GroupMappingsRequest(StrictRequest):
    lines: list[MappingLine] = Field(max_length=500)
    group_source: GroupSource = Field(
        default="token",
        description="Where people's groups come from: the provider's group claim at each "
        "sign-in and refresh (token), or the groups SCIM provisions (scim).",
    )


class GroupMappingLineOut(Out):
    group: str
    role: Role
    project: str | None


class GroupMappings(Out):
    org: str | None
    group_source: GroupSource
    lines: list[GroupMappingLineOut]


class ScimTokenCreateRequest(StrictRequest):
    name: str = Field(default="", max_length=100)


class ScimToken(Out):
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class ScimTokenCreated(ScimToken):
    token: str = Field(description="The bearer token for SCIM. Shown once; only a hash is kept.")
    base_url: str = Field(description="The SCIM base URL to give the directory.")


class ServiceAccountCreateRequest(StrictRequest):
    name: Slug
    role: Role = Role.MEMBER
    project: Slug | None = Field(default=None, description="Restrict it to this project.")
    description: str = Field(default="", max_length=200)
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class ServiceAccountKeyRequest(StrictRequest):
    name: str = Field(default="", max_length=100)
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class ServiceAccountRotateRequest(ServiceAccountKeyRequest):
    overlap_hours: float = Field(
        default=24,
        ge=0,
        le=24 * 30,
        description="How long the keys it had stay valid beside the new one.",
    )


class ServiceAccountKey(Out):
    id: str
    name: str
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ServiceAccount(Out):
    id: str
    name: str
    org_id: str
    project: str | None
    role: Role
    description: str
    expires_at: datetime | None
    created_at: datetime
    keys: list[ServiceAccountKey]


class ServiceAccountKeyIssued(ServiceAccountKey):
    key: str = Field(description="The full key. Shown once; only a hash is kept.")
    previous: list[ServiceAccountKey] = Field(
        default_factory=list, description="The account's other keys, with when they now end."
    )
