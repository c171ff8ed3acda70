"""a reasoning model's tag format: `<think>` (most open reasoning models) or `[THINK]`
(Magistral); null for the models souverain's own jobs produced (either is read)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("reasoning_tags", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("reasoning_tags")
