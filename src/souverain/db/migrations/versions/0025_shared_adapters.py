"""shared adapters: whether a deployment has replicas of its own or is served by shared
base replicas (`sharing`), and the adapters each replica holds with what became of them

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column("sharing", sa.String(16), nullable=False, server_default="dedicated")
        )
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("adapters", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("adapters")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("sharing")
