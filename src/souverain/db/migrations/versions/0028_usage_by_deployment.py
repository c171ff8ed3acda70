"""usage records by deployment: the latest request for a deployment found by an index (the
controller asks it every round of each shared deployment that unloads its adapter when
idle: jobs/deployments/idle_adapters.py)

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_usage_records_deployment_created", "usage_records", ["deployment_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_usage_records_deployment_created", table_name="usage_records")
