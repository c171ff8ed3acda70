"""what serves a replica's engine on its node (llamacpp: llama-server or llama-cpp-python)
and how many requests it decodes at once, for slot-aware routing

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("runtime", sa.String(32), nullable=True))
        batch.add_column(sa.Column("slots", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("slots")
        batch.drop_column("runtime")
