"""What exists once per installation, shared by every server and controller process: its
secrets, each a public part anyone may read and a private part sealed with the master key
(or kept in a file whose path every process is given, then only the public part is here):
the signing key and the certificate authority. They share `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class InstallationSecretRow(Base):
    """One installation secret by name (`signing`: the Ed25519 key of reports and seals;
    `authority`: the certificate authority of the TLS to engines, its certificate public)."""

    __tablename__ = "installation_secrets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    public: Mapped[str] = mapped_column(Text)  # PEM
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: kept in a file
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
