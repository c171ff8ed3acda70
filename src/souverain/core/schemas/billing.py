from __future__ import annotations

from datetime import datetime

from pydantic import Field

from souverain.core.schemas.common import Out, StrictRequest


class PriceSetRequest(StrictRequest):
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    input_per_million: float = Field(ge=0, le=1e6, description="Per million prompt tokens.")
    output_per_million: float = Field(ge=0, le=1e6, description="Per million completion tokens.")


class PriceOut(Out):
    id: str
    model: str
    currency: str
    input_per_million: float
    output_per_million: float
    created_at: datetime


class BudgetSetRequest(StrictRequest):
    """Monthly limits; null: no limit on that quantity."""

    tokens: int | None = Field(default=None, ge=0, le=10**15)
    cost: float | None = Field(default=None, ge=0, le=1e12)
    energy_kwh: float | None = Field(default=None, ge=0, le=1e9)


class BudgetOut(Out):
    id: str
    org_id: str
    project_id: str | None
    period: str
    tokens: int | None
    cost: float | None
    energy_kwh: float | None
    used_tokens: int
    used_cost: float
    used_energy_kwh: float
    reserved_tokens: int


class RateLimitsRequest(StrictRequest):
    rpm: int | None = Field(
        default=None, ge=1, le=10**7, description="Requests per minute; null: none."
    )
    tpm: int | None = Field(
        default=None, ge=1, le=10**10, description="Tokens per minute; null: none."
    )


class CarbonPoint(StrictRequest):
    hour: datetime
    g_per_kwh: float = Field(ge=0, le=5000)


class CarbonSeriesRequest(StrictRequest):
    points: list[CarbonPoint] = Field(max_length=24 * 366 * 2)
