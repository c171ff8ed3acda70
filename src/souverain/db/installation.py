"""What exists once per installation, shared by every server and controller process: its
secrets, each a public part anyone may read and a private part sealed with the master key
(or kept in a file whose path every process is given, then only the public part is here),
and its certificate authority. They share `tables.Base` (one metadata, one set of migrations).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class InstallationSecretRow(Base):
    """One installation secret by name (`signing`: the Ed25519 key of reports and seals)."""

    __tablename__ = "installation_secrets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    public: Mapped[str] = mapped_column(Text)  # PEM
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: kept in a file
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CertificateAuthorityRow(Base):
    """The installation's certificate authority, created once: its certificate in clear
    (every server trusts it) and its private key sealed under the master key, so whoever
    reads the database alone cannot issue an engine certificate."""

    __tablename__ = "certificate_authorities"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "installation"
    certificate: Mapped[str] = mapped_column(Text)  # PEM
    sealed_key: Mapped[str] = mapped_column(Text)  # AES-GCM under the master key, base64
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
