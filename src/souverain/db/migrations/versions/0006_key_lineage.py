"""key lineage: which key minted which, so revocation and rate limits reach descendants

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("parent_key_id", sa.String(length=16), nullable=True))
        batch.create_index("ix_api_keys_parent_key_id", ["parent_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_parent_key_id")
        batch.drop_column("parent_key_id")
