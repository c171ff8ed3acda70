"""Tables of what exists once per installation: its certificate authority. They share
`tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class CertificateAuthorityRow(Base):
    """The installation's certificate authority, created once: its certificate in clear
    (every server trusts it) and its private key sealed under the master key, so whoever
    reads the database alone cannot issue an engine certificate."""

    __tablename__ = "certificate_authorities"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "installation"
    certificate: Mapped[str] = mapped_column(Text)  # PEM
    sealed_key: Mapped[str] = mapped_column(Text)  # AES-GCM under the master key, base64
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
