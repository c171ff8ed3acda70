"""autoscaling: a deployment's minimum and maximum replicas, its target and idle period, the
controller's last scaling decision; the outstanding requests each server reports

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("min_replicas", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_replicas", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("target_busy_per_replica", sa.Float(), nullable=False, server_default="4")
        )
        batch.add_column(
            sa.Column("scale_down_idle_s", sa.Integer(), nullable=False, server_default="300")
        )
        batch.add_column(sa.Column("scale_above", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("scale_below_since", TIME, nullable=True))
        batch.add_column(sa.Column("scaled_at", TIME, nullable=True))
        batch.add_column(sa.Column("scaling_reason", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "deployment_demand",
        sa.Column("server_id", sa.String(128), primary_key=True),
        sa.Column(
            "deployment_id",
            sa.String(32),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_index("ix_deployment_demand_updated_at", "deployment_demand", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_deployment_demand_updated_at", "deployment_demand")
    op.drop_table("deployment_demand")
    with op.batch_alter_table("deployments") as batch:
        for name in (
            "scaling_reason", "scaled_at", "scale_below_since", "scale_above",
            "scale_down_idle_s", "target_busy_per_replica", "max_replicas", "min_replicas",
        ):  # fmt: skip
            batch.drop_column(name)
