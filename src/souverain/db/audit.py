"""The audit chain's tables: its events, each organisation's numbering, the chain head and
its seals. They share `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base


class AuditEventRow(Base):
    """Append-only. `hash` covers every other column (canonical JSON) and `prev_hash`.
    `time` and `details` are stored as the exact text that was hashed."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_org_seq", "org_id", "seq"),
        Index("ix_audit_events_org_org_seq", "org_id", "org_seq"),
        Index("ix_audit_events_time", "time"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(40))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    org_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The event's number within its organisation (gapless), what tenants see and page by;
    # outside the hash: derived, like an index.
    org_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Removed by its organisation's retention window: only seq, time, org_id and the two
    # hashes are left (outside the hash, like org_seq), so the chain still links.
    redacted: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditOrgHeadRow(Base):
    """Each organisation's last `org_seq`; taken under the chain head's lock."""

    __tablename__ = "audit_org_heads"
    org_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class AuditHeadRow(Base):
    """The chain head: one row, locked by every append so appends are serialised."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditSealRow(Base):
    """The platform's signature over the chain head at a moment (key outside the database)."""

    __tablename__ = "audit_seals"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[str] = mapped_column(String(40))
    signature: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32))
