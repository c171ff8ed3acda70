"""Exports of an organisation's data and the certificates of its erasure. They share
`tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class ExportRow(Base):
    """One export job: queued by an owner or operator, run by the controller (lease token),
    its archive an encrypted object in a store the organisation's policy allows."""

    __tablename__ = "exports"
    __table_args__ = (Index("ix_exports_org_id", "org_id"), Index("ix_exports_status", "status"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    requested_by: Mapped[str | None] = mapped_column(String(32), nullable=True)  # key id
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    datacenter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    store_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    object_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    wrapped_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the archive's
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the archive
    objects: Mapped[int | None] = mapped_column(Integer, nullable=True)  # in its manifest
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ErasureCertificateRow(Base):
    """The signed certificate of an organisation's erasure, kept so that erasing it again
    answers the same certificate. Not tied to the organisation by a foreign key: the
    certificate must outlive it."""

    __tablename__ = "erasure_certificates"
    org_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    certificate: Mapped[str] = mapped_column(Text)  # the signed JSON, as issued
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
