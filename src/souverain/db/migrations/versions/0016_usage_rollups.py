"""usage rollups: sums of the settled usage records per hour, day and month, per key and per
organisation, kept with the records (metering/usage_rollups.py), backfilled from the
records already there; and an index for the latest records platform-wide

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
KEY = ("span", "level", "org_id", "starts_at", "project_id", "key_id", "user_id", "model",
       "datacenter_id", "status", "prompt_language", "language_tagged")  # fmt: skip
MEASURES = ("requests", "prompt_tokens", "completion_tokens", "cost", "energy_j", "co2e_g",
            "language_consistent")  # fmt: skip
# The start of a bucket, as the application writes it: a UTC time (SQLite stores the text
# SQLAlchemy writes for one).
STARTS = {
    "postgresql": "date_trunc('{span}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('{format}', {column})",
}
SQLITE_FORMATS = {"hour": "%Y-%m-%d %H:00:00.000000", "day": "%Y-%m-%d 00:00:00.000000",
                  "month": "%Y-%m-01 00:00:00.000000"}  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("span", sa.String(8), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("starts_at", TIME, nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("datacenter_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("prompt_language", sa.String(8), nullable=False),
        sa.Column("language_tagged", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("co2e_g", sa.Float(), nullable=False),
        sa.Column("language_consistent", sa.BigInteger(), nullable=False),
        # PostgreSQL: every column in both indexes, so reports are index-only scans
        sa.PrimaryKeyConstraint(
            *KEY, name=op.f("pk_usage_rollups"), postgresql_include=list(MEASURES)
        ),
    )
    op.create_index(
        "ix_usage_rollups_span_level_starts",
        "usage_rollups",
        ["span", "level", "starts_at"],
        postgresql_include=[c for c in KEY + MEASURES if c not in ("span", "level", "starts_at")],
    )
    op.create_index("ix_usage_records_created", "usage_records", ["created_at"])
    backfill()


def backfill() -> None:
    """Hours from the settled records, then days from hours and months from days, at the
    key level; then the org level of days and months from the key level."""
    dialect = op.get_bind().dialect.name
    op.execute(_HOURS.format(starts=_starts(dialect, "hour", "created_at")))
    for finer, span in (("hour", "day"), ("day", "month")):
        op.execute(
            _COARSER.format(span=span, finer=finer, starts=_starts(dialect, span, "starts_at"))
        )
    op.execute(_ORG_LEVEL)


# Statements made of the constants of this file only.
_COLUMNS = ", ".join(KEY + MEASURES)
_HOURS = (
    f"INSERT INTO usage_rollups ({_COLUMNS}) "  # noqa: S608
    "SELECT 'hour', 'key', COALESCE(org_id, ''), {starts}, COALESCE(project_id, ''), key_id, "
    "user_id, model, COALESCE(datacenter_id, ''), status, COALESCE(prompt_language, ''), "
    "languages_agree IS NOT NULL, COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
    "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost), 0), "
    "COALESCE(SUM(COALESCE(energy_j, energy_estimate_j)), 0), COALESCE(SUM(co2e_g), 0), "
    "SUM(CASE WHEN languages_agree THEN 1 ELSE 0 END) "
    "FROM usage_records WHERE status <> 'open' GROUP BY 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
)
_COARSER = (
    f"INSERT INTO usage_rollups ({_COLUMNS}) "  # noqa: S608
    f"SELECT '{{span}}', 'key', org_id, {{starts}}, {', '.join(KEY[4:])}, "
    f"{', '.join(f'SUM({m})' for m in MEASURES)} "
    "FROM usage_rollups WHERE span = '{finer}' AND level = 'key' GROUP BY 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
)
_ORG_LEVEL = (
    f"INSERT INTO usage_rollups ({_COLUMNS}) "  # noqa: S608
    "SELECT span, 'org', org_id, starts_at, '', '', '', model, datacenter_id, status, "
    f"prompt_language, language_tagged, {', '.join(f'SUM({m})' for m in MEASURES)} "
    "FROM usage_rollups WHERE level = 'key' AND span <> 'hour' "
    "GROUP BY 1, 3, 4, 8, 9, 10, 11, 12"
)


def _starts(dialect: str, span: str, column: str) -> str:
    return STARTS[dialect].format(span=span, column=column, format=SQLITE_FORMATS[span])


def downgrade() -> None:
    op.drop_index("ix_usage_records_created", table_name="usage_records")
    op.drop_table("usage_rollups")
