"""project priority and start-up energy: the priority class a project's keys inherit
(interactive or batch), and energy intervals that hold a replica's start (placement to
ready), charged to the deployment's owner rather than to the requests that followed

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(16), nullable=False, server_default="interactive")
        )
    with op.batch_alter_table("energy_intervals") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="serving"))


def downgrade() -> None:
    with op.batch_alter_table("energy_intervals") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("priority")
