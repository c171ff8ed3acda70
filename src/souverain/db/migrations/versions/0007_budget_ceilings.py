"""budget ceilings: what the operator allows an organisation, which tenants may only lower

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("budgets") as batch:
        batch.add_column(sa.Column("ceiling_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("ceiling_cost", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ceiling_energy_kwh", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("budgets") as batch:
        batch.drop_column("ceiling_energy_kwh")
        batch.drop_column("ceiling_cost")
        batch.drop_column("ceiling_tokens")
