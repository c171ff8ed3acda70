"""Tables of tenants' data and of the long work done on it: organisations' key material
and storage use, files, batches with their lines, fine-tuning jobs with their events and
checkpoints. They share `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class OrgKeyRow(Base):
    """An organisation's key material: the salt its file key is derived with. Deleting it
    makes every file of the organisation unreadable (crypto-erasure)."""

    __tablename__ = "org_keys"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    salt: Mapped[str] = mapped_column(String(64))  # hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OrgStorageRow(Base):
    """Bytes an organisation keeps in the file stores, and its quota (None: the default)."""

    __tablename__ = "org_storage"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    limit_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FileRow(Base):
    """A tenant's file: an encrypted object in the store of one allowed datacenter."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_org_id", "org_id"),
        Index("ix_files_expires_at", "expires_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)  # plaintext size
    stored_bytes: Mapped[int] = mapped_column(BigInteger)  # what the store holds
    sha256: Mapped[str] = mapped_column(String(64))  # of the plaintext
    num_lines: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sample_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    datacenter_id: Mapped[str] = mapped_column(String(64))
    store_uri: Mapped[str] = mapped_column(Text)
    object_key: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[str] = mapped_column(String(200))  # hex: nonce + wrapped data key
    status: Mapped[str] = mapped_column(String(16))  # processed | deleted | erased
    created_by_key: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchRow(Base):
    """A batch job: desired state and progress; claimed by a server with a lease token."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_org_id", "org_id"), Index("ix_batches_status", "status"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    key_id: Mapped[str] = mapped_column(String(16))  # whose admission, limits and budgets
    shape: Mapped[str] = mapped_column(String(16))  # openai | mistral
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_file_ids: Mapped[list[str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    output_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    wrapped_key: Mapped[str] = mapped_column(String(200))  # for the results kept per line
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime())
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    co2e_saved_g: Mapped[float | None] = mapped_column(Float, nullable=True)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchItemRow(Base):
    """One input line of a batch: answered exactly once; its result is kept encrypted."""

    __tablename__ = "batch_items"
    __table_args__ = (Index("ix_batch_items_batch_status", "batch_id", "status"),)
    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    custom_id: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))  # pending | done | failed
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed, base64


class FineTuningJobRow(Base):
    """A fine-tuning job: desired state and progress; the controller places and runs it."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_org_id", "org_id"),
        Index("ix_fine_tuning_jobs_status", "status"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    shape: Mapped[str] = mapped_column(String(16))  # openai | mistral
    method: Mapped[str] = mapped_column(String(32))  # supervised
    base_model_id: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(128))  # the name it was asked by
    training_files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{file_id, weight}]
    validation_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # as asked
    resolved: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the recipe runs with
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    jurisdictions: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str] = mapped_column(Text, default="")
    wanted: Mapped[str] = mapped_column(String(16), default="run")  # run | pause | cancel
    auto_start: Mapped[bool] = mapped_column(Boolean, default=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    datacenter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    store_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    wrapped_key: Mapped[str] = mapped_column(String(200))  # checkpoints and results
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)  # of the running attempt
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # of finished attempts
    energy_j: Mapped[float] = mapped_column(Float, default=0.0)  # of finished attempts
    live_cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # running attempt
    live_energy_j: Mapped[float] = mapped_column(Float, default=0.0)
    energy_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_cpu_hours: Mapped[float] = mapped_column(Float, default=0.0)
    charged_energy_j: Mapped[float] = mapped_column(Float, default=0.0)  # settled on budgets
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class FineTuningEventRow(Base):
    """What happened in a job, in order: messages and metrics, never training text."""

    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("ix_fine_tuning_events_job", "job_id", "seq"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(16))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FineTuningCheckpointRow(Base):
    """A sealed checkpoint of a job: resumable, and listed through the API."""

    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    store_uri: Mapped[str] = mapped_column(Text)  # the store of the datacenter that sealed it
    object_key: Mapped[str] = mapped_column(String(128))
    object_id: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LeaseRow(Base):
    """Named leases: the controller leader lease lives here."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
