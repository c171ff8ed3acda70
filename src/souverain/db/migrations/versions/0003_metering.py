"""metering: prices, budgets and their ledgers, rate limits, energy intervals, carbon series

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "energy_intervals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("replica_id", sa.String(length=32), nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("datacenter_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("attributed_j", sa.Float(), nullable=False),
        sa.Column("idle_j", sa.Float(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("carbon_intensity", sa.Float(), nullable=False),
        sa.Column("co2e_g", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_energy_intervals")),
    )
    with op.batch_alter_table("energy_intervals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_energy_intervals_deployment", ["deployment_id", "ended_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_energy_intervals_replica_id"), ["replica_id"], unique=False
        )

    op.create_table(
        "carbon_intensities",
        sa.Column("datacenter_id", sa.String(length=64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("g_per_kwh", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["datacenter_id"],
            ["datacenters.id"],
            name=op.f("fk_carbon_intensities_datacenter_id_datacenters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("datacenter_id", "hour", name=op.f("pk_carbon_intensities")),
    )
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("energy_kwh", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organisations.id"],
            name=op.f("fk_budgets_org_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_budgets_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("org_id", "project_id", name=op.f("uq_budgets_org_id")),
    )
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgets_org_id"), ["org_id"], unique=False)

    op.create_table(
        "prices",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("input_per_million", sa.Float(), nullable=False),
        sa.Column("output_per_million", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_prices_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
    )
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.create_index("ix_prices_model_created", ["model_id", "created_at"], unique=False)

    op.create_table(
        "budget_ledgers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("budget_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("limit_tokens", sa.BigInteger(), nullable=True),
        sa.Column("limit_cost", sa.Float(), nullable=True),
        sa.Column("limit_energy_j", sa.Float(), nullable=True),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("used_cost", sa.Float(), nullable=False),
        sa.Column("used_energy_j", sa.Float(), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reserved_cost", sa.Float(), nullable=False, server_default="0"),
        sa.Column("reserved_energy_j", sa.Float(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_ledgers_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_ledgers")),
        sa.UniqueConstraint("budget_id", "period", name=op.f("uq_budget_ledgers_budget_id")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tpm", sa.Integer(), nullable=True))

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tpm", sa.Integer(), nullable=True))

    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("energy_source", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("energy_j_per_token", sa.Float(), nullable=True))

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("currency", sa.String(length=3), nullable=True))
        batch_op.add_column(sa.Column("energy_estimate_j", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("energy_j", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("co2e_g", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("energy_source", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("reserved_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("reserved_cost", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("reserved_energy_j", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("ledger_ids", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("ledger_ids")
        batch_op.drop_column("reserved_energy_j")
        batch_op.drop_column("reserved_cost")
        batch_op.drop_column("reserved_tokens")
        batch_op.drop_column("energy_source")
        batch_op.drop_column("co2e_g")
        batch_op.drop_column("energy_j")
        batch_op.drop_column("energy_estimate_j")
        batch_op.drop_column("currency")
        batch_op.drop_column("cost")

    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("energy_j_per_token")
        batch_op.drop_column("energy_source")

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("tpm")
        batch_op.drop_column("rpm")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("tpm")
        batch_op.drop_column("rpm")

    op.drop_table("budget_ledgers")
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.drop_index("ix_prices_model_created")

    op.drop_table("prices")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgets_org_id"))

    op.drop_table("budgets")
    op.drop_table("carbon_intensities")
    with op.batch_alter_table("energy_intervals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_energy_intervals_replica_id"))
        batch_op.drop_index("ix_energy_intervals_deployment")

    op.drop_table("energy_intervals")
