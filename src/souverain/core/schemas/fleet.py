from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from souverain.core.jurisdictions import is_country
from souverain.core.schemas.common import Out, StrictRequest
from souverain.core.schemas.tenancy import Slug


def _country(value: str) -> str:
    value = value.upper()
    if not is_country(value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


class DatacenterCreateRequest(StrictRequest):
    id: Slug
    name: str = Field(max_length=200)
    country: str = Field(min_length=2, max_length=2)
    operator_name: str = Field(max_length=200)
    operator_country: str = Field(min_length=2, max_length=2)
    certifications: list[str] = Field(default_factory=list, max_length=32)
    carbon_intensity: float | None = Field(
        default=None,
        ge=0,
        le=2000,
        description="Grid intensity, gCO2e/kWh. Default: souverain's table for the country.",
    )

    _check_country = field_validator("country", "operator_country")(_country)


class DatacenterUpdateRequest(StrictRequest):
    """Change a datacenter's attributes; replicas that stop complying are re-placed."""

    name: str | None = Field(default=None, max_length=200)
    country: str | None = Field(default=None, min_length=2, max_length=2)
    operator_name: str | None = Field(default=None, max_length=200)
    operator_country: str | None = Field(default=None, min_length=2, max_length=2)
    certifications: list[str] | None = Field(default=None, max_length=32)
    carbon_intensity: float | None = Field(default=None, ge=0, le=2000)

    @field_validator("country", "operator_country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return None if value is None else _country(value)


class Datacenter(Out):
    id: str
    name: str
    country: str
    jurisdictions: list[str]
    operator_name: str
    operator_country: str
    certifications: list[str]
    carbon_intensity: float  # the declared static value, gCO2e/kWh
    carbon_intensity_now: float | None = None  # this hour's value of the loaded series, else static
    created_at: datetime


class Node(Out):
    id: str
    datacenter_id: str | None
    address: str
    alive: bool
    resources: dict[str, float]
    available: dict[str, float]
    labels: dict[str, str]
    last_seen: datetime
    refusal: str | None = None  # alive, but given no work: why (its identity's checks)
