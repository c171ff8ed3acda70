"""languages of reasoning requests: the prompt's, the thinking's and the answer's, and
whether they agree, written on the usage record after the request (off its path)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("prompt_language", sa.String(8), nullable=True))
        batch.add_column(sa.Column("reasoning_language", sa.String(8), nullable=True))
        batch.add_column(sa.Column("answer_language", sa.String(8), nullable=True))
        batch.add_column(sa.Column("languages_agree", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("languages_agree")
        batch.drop_column("answer_language")
        batch.drop_column("reasoning_language")
        batch.drop_column("prompt_language")
