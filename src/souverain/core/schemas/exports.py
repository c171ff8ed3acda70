"""Wire types of an organisation's exports (`/api/orgs/{org}/exports`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from souverain.core.schemas.common import Out


class Export(Out):
    """An export job and, once it succeeded, its archive (a tar with a signed manifest)."""

    id: str
    org_id: str
    status: str = Field(description="queued, running, succeeded, failed or erased.")
    error: str | None = None
    datacenter_id: str | None = Field(default=None, description="Where the archive is kept.")
    bytes: int | None = Field(default=None, description="The archive's size (plaintext).")
    sha256: str | None = Field(default=None, description="The archive's SHA-256 (plaintext).")
    objects: int | None = Field(default=None, description="Objects its manifest lists.")
    counts: dict[str, int] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
