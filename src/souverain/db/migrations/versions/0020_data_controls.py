"""data controls: an organisation's zero data retention and retention windows; audit
events removed by a window keep a stub (`redacted`) so the chain still links

Revision ID: 0020
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
WINDOWS = ("files_days", "batch_outputs_days", "fine_tuning_days", "usage_days", "audit_days")


def upgrade() -> None:
    op.create_table(
        "data_controls",
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey("organisations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("zero_retention", sa.Boolean(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=True) for name in WINDOWS),
        sa.Column("updated_by", sa.String(32), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(
            sa.Column("redacted", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("redacted")
    op.drop_table("data_controls")
