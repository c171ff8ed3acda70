"""An organisation's data controls: zero data retention chosen by the tenant, and how long
each kind of its data is kept. Shares `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class DataControlsRow(Base):
    """One row per organisation that set any control; no row: nothing set. A window of
    None keeps that kind of data until its owner deletes it."""

    __tablename__ = "data_controls"
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    zero_retention: Mapped[bool] = mapped_column(Boolean, default=False)
    files_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_outputs_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fine_tuning_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    audit_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_by: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
