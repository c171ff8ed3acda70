"""identity: OpenID providers per organisation, group mappings, people's accounts at
providers, the SCIM directory (users, groups, members), roles in one project, sign-ins in
progress, single-sign-on sessions, SCIM tokens, service accounts; users get a kind (person or
service) and memberships a source (manual, directory, service)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def _org(nullable: bool = False) -> sa.Column[str]:
    return sa.Column(
        "org_id",
        sa.String(32),
        sa.ForeignKey("organisations.id", ondelete="CASCADE"),
        nullable=nullable,
        index=True,
    )


def _user() -> sa.Column[str]:
    return sa.Column(
        "user_id",
        sa.String(32),
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="person"))
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="manual")
        )
    op.create_table(
        "identity_providers",
        sa.Column("id", sa.String(32), primary_key=True),
        _org(nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("client_secret", sa.Text(), nullable=False),
        sa.Column("scopes", sa.String(255), nullable=False),
        sa.Column("username_claim", sa.String(64), nullable=False),
        sa.Column("groups_claim", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )
    op.create_table(
        "group_mappings",
        sa.Column("id", sa.String(32), primary_key=True),
        _org(nullable=True),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("role", sa.String(16), nullable=False),
    )
    op.create_table(
        "directories",
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey("organisations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("group_source", sa.String(8), nullable=False),
    )
    op.create_table(
        "user_identities",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "provider_id",
            sa.String(32),
            sa.ForeignKey("identity_providers.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("subject", sa.String(255), nullable=False),
        _user(),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("last_signin_at", TIME, nullable=True),
        sa.UniqueConstraint("provider_id", "subject"),
    )
    _directory_tables()
    _access_tables()


def _directory_tables() -> None:
    op.create_table(
        "directory_users",
        sa.Column("id", sa.String(36), primary_key=True),
        _org(),
        _user(),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("resource", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.UniqueConstraint("org_id", "user_name", name="uq_directory_users_user_name"),
        sa.UniqueConstraint("org_id", "user_id", name="uq_directory_users_user_id"),
    )
    op.create_table(
        "directory_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        _org(),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.UniqueConstraint("org_id", "display_name"),
    )
    op.create_table(
        "directory_members",
        sa.Column(
            "group_id",
            sa.String(36),
            sa.ForeignKey("directory_groups.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "member_id",
            sa.String(36),
            sa.ForeignKey("directory_users.id", ondelete="CASCADE"),
            primary_key=True,
            index=True,
        ),
    )


def _access_tables() -> None:
    op.create_table(
        "project_grants",
        sa.Column("id", sa.String(32), primary_key=True),
        _org(),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _user(),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.UniqueConstraint("project_id", "user_id"),
    )
    op.create_table(
        "scim_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        _org(),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
    )
    op.create_table(
        "sign_in_flows",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("browser_hash", sa.String(64), nullable=False),
        sa.Column(
            "provider_id",
            sa.String(32),
            sa.ForeignKey("identity_providers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("verifier", sa.String(128), nullable=False),
        sa.Column("project", sa.String(64), nullable=True),
        sa.Column("return_to", sa.String(200), nullable=False),
        sa.Column("expires_at", TIME, nullable=False, index=True),
    )
    op.create_table(
        "sso_sessions",
        sa.Column(
            "session_id",
            sa.String(24),
            sa.ForeignKey("console_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "identity_id",
            sa.String(32),
            sa.ForeignKey("user_identities.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("refresh_at", TIME, nullable=False),
        sa.Column("claimed_until", TIME, nullable=True),
    )
    op.create_table(
        "service_accounts",
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        _org(),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )


def downgrade() -> None:
    for table in (
        "service_accounts",
        "sso_sessions",
        "sign_in_flows",
        "scim_tokens",
        "project_grants",
        "directory_members",
        "directory_groups",
        "directory_users",
        "user_identities",
        "directories",
        "group_mappings",
        "identity_providers",
    ):
        op.drop_table(table)
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("source")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("kind")
