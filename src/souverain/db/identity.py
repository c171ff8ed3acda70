"""Tables of people's identities: identity providers and the group mappings of each
organisation, people's accounts at those providers, the organisation's directory (SCIM users
and groups), roles held in one project, sign-ins in progress, single-sign-on sessions, SCIM
tokens and service accounts. They share `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class IdentityProviderRow(Base):
    """An OpenID provider the operator configured for one organisation (or, with no
    organisation, for the platform's operators). Its client secret is sealed with the
    installation's master key."""

    __tablename__ = "identity_providers"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True, nullable=True
    )
    name: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(255))
    client_id: Mapped[str] = mapped_column(String(255))
    client_secret: Mapped[str] = mapped_column(Text)  # sealed
    scopes: Mapped[str] = mapped_column(String(255))
    username_claim: Mapped[str] = mapped_column(String(64))
    groups_claim: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GroupMappingRow(Base):
    """One line of an organisation's mapping: members of `group` get `role`, in the whole
    organisation or (with a project) in that project only. Platform lines (no
    organisation) make operators."""

    __tablename__ = "group_mappings"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True, nullable=True
    )
    group: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    role: Mapped[str] = mapped_column(String(16))


class DirectoryRow(Base):
    """An organisation's directory settings: where people's groups come from (`token`: the
    provider's group claim at each sign-in and refresh; `scim`: the groups SCIM pushes)."""

    __tablename__ = "directories"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    group_source: Mapped[str] = mapped_column(String(8), default="token")


class UserIdentityRow(Base):
    """A person's account at a provider (`sub` is unique per issuer, never reassigned)."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("provider_id", "subject"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    provider_id: Mapped[str] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE"), index=True
    )
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)  # at the last sign-in
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_signin_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DirectoryUserRow(Base):
    """A person in an organisation's directory, as SCIM sees them (`resource` holds the
    attributes the directory sent, never a password)."""

    __tablename__ = "directory_users"
    __table_args__ = (
        UniqueConstraint("org_id", "user_name", name="uq_directory_users_user_name"),
        UniqueConstraint("org_id", "user_id", name="uq_directory_users_user_id"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    user_name: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    resource: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DirectoryGroupRow(Base):
    __tablename__ = "directory_groups"
    __table_args__ = (UniqueConstraint("org_id", "display_name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DirectoryMemberRow(Base):
    __tablename__ = "directory_members"
    group_id: Mapped[str] = mapped_column(
        ForeignKey("directory_groups.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[str] = mapped_column(
        ForeignKey("directory_users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ProjectGrantRow(Base):
    """A role held in one project only (from a group mapping, or a project's service
    account): keys restricted to that project act with it."""

    __tablename__ = "project_grants"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))  # directory | service


class ScimTokenRow(Base):
    """The bearer token an organisation's directory provisions with (a SHA-256 of its
    secret is kept)."""

    __tablename__ = "scim_tokens"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SignInFlowRow(Base):
    """A single sign-on in progress: found by a hash of its `state`, bound to the browser
    that began it (a hash of a cookie), used once, gone after ten minutes."""

    __tablename__ = "sign_in_flows"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[str] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE")
    )
    nonce: Mapped[str] = mapped_column(String(64))
    verifier: Mapped[str] = mapped_column(String(128))  # PKCE
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    return_to: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SsoSessionRow(Base):
    """What a console session opened by single sign-on needs to re-read the person's groups:
    their identity and the provider's refresh token (sealed)."""

    __tablename__ = "sso_sessions"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("console_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    identity_id: Mapped[str] = mapped_column(
        ForeignKey("user_identities.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    refresh_token: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed
    refresh_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ServiceAccountRow(Base):
    """A non-human principal of an organisation (or of one of its projects). Its user row
    (`users.kind = 'service'`) owns its keys; its role is held like a member's."""

    __tablename__ = "service_accounts"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
