"""names per tenant: model and deployment names are unique within their owner only

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_name", type_="unique")
        batch.create_unique_constraint("uq_models_owner_org_id", ["owner_org_id", "name"])
        batch.create_index("ix_models_name", ["name"])
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployments_name", type_="unique")
        batch.create_unique_constraint("uq_deployments_org_id", ["org_id", "name"])
        batch.create_index("ix_deployments_name", ["name"])


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_index("ix_deployments_name")
        batch.drop_constraint("uq_deployments_org_id", type_="unique")
        batch.create_unique_constraint("uq_deployments_name", ["name"])
    with op.batch_alter_table("models") as batch:
        batch.drop_index("ix_models_name")
        batch.drop_constraint("uq_models_owner_org_id", type_="unique")
        batch.create_unique_constraint("uq_models_name", ["name"])
