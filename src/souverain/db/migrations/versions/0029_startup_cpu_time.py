"""start-up CPU time: a replica's start (an energy interval of kind `startup`) also holds
the CPU seconds and wall-clock seconds of its engine process from spawn to first ready,
so a deployment's owner sees what a cold start costs besides its energy

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("energy_intervals") as batch:
        batch.add_column(sa.Column("cpu_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("engine_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("energy_intervals") as batch:
        batch.drop_column("engine_s")
        batch.drop_column("cpu_s")
