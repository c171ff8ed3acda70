"""Wire types of an organisation's data controls (`/api/orgs/{org}/data-controls`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from souverain.core.schemas.common import Out, StrictRequest

Days = Annotated[int | None, Field(ge=1, le=3650)]


class RetentionWindows(StrictRequest):
    """Days each kind of data is kept after it was made (null: until its owner deletes it).
    The controller removes what is older, in small steps, and audits every removal."""

    files_days: Days = Field(default=None, description="Files uploaded by the tenant.")
    batch_outputs_days: Days = Field(
        default=None, description="From a batch's end: its output and error files, its answers."
    )
    fine_tuning_days: Days = Field(
        default=None, description="From a job's end: its checkpoints (the model it made stays)."
    )
    usage_days: Days = Field(default=None, description="Usage records (rollups stay).")
    audit_days: Days = Field(
        default=None, description="Events become stubs (number, time, hashes) once sealed."
    )


class DataControlsRequest(StrictRequest):
    zero_retention: bool = Field(
        default=False,
        description="Keep no content of this organisation beyond its requests; files, "
        "batches and fine-tuning are refused. Turning it off leaves the ceiling's and the "
        "projects' own setting in force.",
    )
    retention: RetentionWindows = Field(default_factory=RetentionWindows)


class DataControls(Out):
    org_id: str
    zero_retention: bool  # the organisation's own switch
    zero_retention_effective: bool  # own switch, or the operator's ceiling
    retention: RetentionWindows
    updated_at: datetime | None
