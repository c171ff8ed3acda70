"""exports: an organisation's export jobs, and the certificates of organisations' erasure

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey("organisations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("requested_by", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("datacenter_id", sa.String(64), nullable=True),
        sa.Column("store_uri", sa.Text(), nullable=True),
        sa.Column("object_key", sa.String(64), nullable=True),
        sa.Column("wrapped_key", sa.String(200), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("objects", sa.Integer(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("lock_token", sa.String(32), nullable=True),
        sa.Column("lock_expires_at", TIME, nullable=True),
    )
    op.create_index("ix_exports_org_id", "exports", ["org_id"])
    op.create_index("ix_exports_status", "exports", ["status"])
    op.create_table(
        "erasure_certificates",
        sa.Column("org_id", sa.String(32), primary_key=True),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("issued_at", TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasure_certificates")
    op.drop_index("ix_exports_status", "exports")
    op.drop_index("ix_exports_org_id", "exports")
    op.drop_table("exports")
