"""sovereignty: policies, deployment placement constraints, where each request ran

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sovereignty_policies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organisations.id"],
            name=op.f("fk_sovereignty_policies_org_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_sovereignty_policies_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sovereignty_policies")),
    )
    op.create_index(
        "ix_sovereignty_policies_scope",
        "sovereignty_policies",
        ["org_id", "project_id", "created_at"],
    )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("placement", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("strategy", sa.String(length=16), nullable=False, server_default="spread")
        )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("operator_country", sa.String(length=2), nullable=True))
        batch.add_column(sa.Column("certifications", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("jurisdictions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("jurisdictions")
        batch.drop_column("certifications")
        batch.drop_column("operator_country")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("strategy")
        batch.drop_column("placement")
    op.drop_index("ix_sovereignty_policies_scope", table_name="sovereignty_policies")
    op.drop_table("sovereignty_policies")
