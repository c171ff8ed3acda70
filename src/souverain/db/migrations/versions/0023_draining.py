"""draining: when a replica chosen for release stopped taking new requests; the requests
each server still has on its draining replicas

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("draining_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deployment_demand") as batch:
        batch.add_column(sa.Column("draining", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("deployment_demand") as batch:
        batch.drop_column("draining")
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("draining_since")
