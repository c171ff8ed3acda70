"""What the servers tell the controller of the load on each deployment (the autoscaler's
reading). It shares `tables.Base` (one metadata, one set of migrations)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from souverain.db.tables import Base, UTCDateTime, utcnow


class DeploymentDemandRow(Base):
    """A server process's outstanding requests for one deployment, rewritten every few
    seconds: the load the controller scales on. Rows not renewed are stale and ignored."""

    __tablename__ = "deployment_demand"
    server_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    waiting: Mapped[int] = mapped_column(Integer, default=0)
    draining: Mapped[int] = mapped_column(Integer, default=0)  # of in_flight, on draining replicas
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
