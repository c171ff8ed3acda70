"""What requests cost and consume: the price book, budgets and their monthly ledgers, the
energy measured per replica interval and the grid's carbon intensity. They share
`tables.Base` (one metadata, one set of migrations)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class PriceRow(Base):
    """Append-only price book: the price in force when a request was admitted applies."""

    __tablename__ = "prices"
    __table_args__ = (Index("ix_prices_model_created", "model_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    currency: Mapped[str] = mapped_column(String(3))
    input_per_million: Mapped[float] = mapped_column(Float)
    output_per_million: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BudgetRow(Base):
    """Monthly limits of an organisation (project_id None) or of one project."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("org_id", "project_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Set by the operator on an organisation's budget: tenants may only go below these.
    ceiling_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ceiling_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    ceiling_energy_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BudgetLedgerRow(Base):
    """One budget's month: its limits then, what was used and what is reserved right now.

    Admission reserves with a conditional UPDATE (used + reserved + estimate <= limit), so
    concurrent requests can never overspend; settlement moves the reservation to used.
    """

    __tablename__ = "budget_ledgers"
    __table_args__ = (UniqueConstraint("budget_id", "period"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    budget_id: Mapped[str] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM (UTC)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    limit_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    limit_energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    used_cost: Mapped[float] = mapped_column(Float, default=0.0)
    used_energy_j: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_cost: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_energy_j: Mapped[float] = mapped_column(Float, default=0.0)


class EnergyIntervalRow(Base):
    """A replica's measured (or estimated) energy over an interval, and where it went:
    attributed to the requests settled in it, or kept as the deployment's idle energy."""

    __tablename__ = "energy_intervals"
    __table_args__ = (Index("ix_energy_intervals_deployment", "deployment_id", "ended_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    replica_id: Mapped[str] = mapped_column(String(32), index=True)
    deployment_id: Mapped[str] = mapped_column(String(32))
    datacenter_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    energy_j: Mapped[float] = mapped_column(Float)
    attributed_j: Mapped[float] = mapped_column(Float)
    idle_j: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)
    carbon_intensity: Mapped[float] = mapped_column(Float)  # gCO2e/kWh applied
    co2e_g: Mapped[float] = mapped_column(Float)
    # "serving", or "startup": placement to ready, the owner's (no request shares it)
    kind: Mapped[str] = mapped_column(String(16), default="serving")
    # A start's only: the engine process's CPU seconds and wall-clock seconds from its
    # spawn to its first ready, as the node read them (None: serving, or not reported)
    cpu_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    engine_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class CarbonIntensityRow(Base):
    """An hourly grid-intensity series for a datacenter (else its static value applies)."""

    __tablename__ = "carbon_intensities"
    datacenter_id: Mapped[str] = mapped_column(
        ForeignKey("datacenters.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    g_per_kwh: Mapped[float] = mapped_column(Float)
