"""replica prompt overhead: what each engine's chat template adds to a prompt, measured
when the replica becomes ready, so budget reservations bound what the engine will count

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("prompt_overhead_fixed", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prompt_overhead_per_message", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("prompt_overhead_per_message")
        batch.drop_column("prompt_overhead_fixed")
