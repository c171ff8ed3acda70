"""audit org_seq: each organisation's events numbered without gaps, so tenants do not see
the global sequence (whose gaps would reveal other tenants' activity)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("org_seq", sa.BigInteger(), nullable=True))
        batch.create_index("ix_audit_events_org_org_seq", ["org_id", "org_seq"])
    op.create_table(
        "audit_org_heads",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_audit_org_heads")),
    )
    bind = op.get_bind()
    counters: dict[str, int] = {}
    rows = bind.execute(
        sa.text("SELECT seq, org_id FROM audit_events WHERE org_id IS NOT NULL ORDER BY seq")
    ).all()
    for seq, org_id in rows:
        counters[org_id] = counters.get(org_id, 0) + 1
        bind.execute(
            sa.text("UPDATE audit_events SET org_seq = :n WHERE seq = :seq"),
            {"n": counters[org_id], "seq": seq},
        )
    for org_id, last in counters.items():
        bind.execute(
            sa.text("INSERT INTO audit_org_heads (org_id, last_seq) VALUES (:o, :n)"),
            {"o": org_id, "n": last},
        )


def downgrade() -> None:
    op.drop_table("audit_org_heads")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_org_org_seq")
        batch.drop_column("org_seq")
