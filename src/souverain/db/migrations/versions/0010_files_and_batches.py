"""files and batches: tenants' encrypted files, their organisations' key material and
storage use, batch jobs with one row per input line, and usage records tagged by batch

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "org_keys",
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey(
                "organisations.id",
                ondelete="CASCADE",
                name=op.f("fk_org_keys_org_id_organisations"),
            ),
            nullable=False,
        ),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_org_keys")),
    )
    op.create_table(
        "org_storage",
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey(
                "organisations.id",
                ondelete="CASCADE",
                name=op.f("fk_org_storage_org_id_organisations"),
            ),
            nullable=False,
        ),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("limit_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_org_storage")),
    )
    op.create_table(
        "files",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey(
                "organisations.id", ondelete="CASCADE", name=op.f("fk_files_org_id_organisations")
            ),
            nullable=False,
        ),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("num_lines", sa.Integer(), nullable=True),
        sa.Column("sample_type", sa.String(32), nullable=True),
        sa.Column("datacenter_id", sa.String(64), nullable=False),
        sa.Column("store_uri", sa.Text(), nullable=False),
        sa.Column("object_key", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by_key", sa.String(16), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("deleted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index("ix_files_org_id", "files", ["org_id"])
    op.create_index("ix_files_expires_at", "files", ["expires_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey(
                "organisations.id", ondelete="CASCADE", name=op.f("fk_batches_org_id_organisations")
            ),
            nullable=False,
        ),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("shape", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("input_file_ids", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("output_file_id", sa.String(32), nullable=True),
        sa.Column("error_file_id", sa.String(32), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("wrapped_key", sa.String(200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("deadline", TIME, nullable=False),
        sa.Column("not_before", TIME, nullable=True),
        sa.Column("co2e_saved_g", sa.Float(), nullable=True),
        sa.Column("in_progress_at", TIME, nullable=True),
        sa.Column("finalizing_at", TIME, nullable=True),
        sa.Column("completed_at", TIME, nullable=True),
        sa.Column("failed_at", TIME, nullable=True),
        sa.Column("expired_at", TIME, nullable=True),
        sa.Column("cancelling_at", TIME, nullable=True),
        sa.Column("cancelled_at", TIME, nullable=True),
        sa.Column("lock_token", sa.String(32), nullable=True),
        sa.Column("lock_expires_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_org_id", "batches", ["org_id"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_items",
        sa.Column(
            "batch_id",
            sa.String(32),
            sa.ForeignKey(
                "batches.id", ondelete="CASCADE", name=op.f("fk_batch_items_batch_id_batches")
            ),
            nullable=False,
        ),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("batch_id", "line", name=op.f("pk_batch_items")),
    )
    op.create_index("ix_batch_items_batch_status", "batch_items", ["batch_id", "status"])
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("batch_id")
    op.drop_index("ix_batch_items_batch_status", "batch_items")
    op.drop_table("batch_items")
    op.drop_index("ix_batches_status", "batches")
    op.drop_index("ix_batches_org_id", "batches")
    op.drop_table("batches")
    op.drop_index("ix_files_expires_at", "files")
    op.drop_index("ix_files_org_id", "files")
    op.drop_table("files")
    op.drop_table("org_storage")
    op.drop_table("org_keys")
