from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from souverain.core.policy import Policy, is_jurisdiction
from souverain.core.schemas.common import Out, StrictRequest

Codes = list[str] | None


def _jurisdictions(values: Codes) -> Codes:
    if values is None:
        return None
    upper = sorted({v.strip().upper() for v in values})
    unknown = [v for v in upper if not is_jurisdiction(v)]
    if unknown:
        raise ValueError(
            f"unknown jurisdiction(s) {', '.join(unknown)}: use ISO country codes, EU or EEA"
        )
    return upper


class PolicyDocument(StrictRequest):
    """Where data may be processed. Omitted or null: no restriction; [] allows nothing."""

    jurisdictions: Codes = Field(
        default=None, max_length=300, description="ISO countries and groups (EU, EEA)."
    )
    datacenters: Codes = Field(default=None, max_length=1000, description="Allowed datacenter ids.")
    certifications: list[str] = Field(
        default_factory=list, max_length=32, description="All required."
    )
    operator_jurisdictions: Codes = Field(
        default=None,
        max_length=300,
        description="Allowed jurisdictions of the datacenter operator's headquarters.",
    )
    retention_days: int = Field(
        default=0, ge=0, le=3650, description="0: prompts and completions are not kept."
    )
    content_logging: bool = False
    zero_retention: bool = Field(
        default=False,
        description="Zero data retention: no prompt, answer, file, batch line or training "
        "sample is kept beyond its request; files, batches and fine-tuning are refused.",
    )

    _check_jurisdictions = field_validator("jurisdictions", "operator_jurisdictions")(
        _jurisdictions
    )

    def to_policy(self) -> Policy:
        return Policy(
            jurisdictions=None if self.jurisdictions is None else frozenset(self.jurisdictions),
            datacenters=None if self.datacenters is None else frozenset(self.datacenters),
            certifications=frozenset(self.certifications),
            operator_jurisdictions=None
            if self.operator_jurisdictions is None
            else frozenset(self.operator_jurisdictions),
            retention_days=self.retention_days,
            content_logging=self.content_logging,
            zero_retention=self.zero_retention,
        )

    @classmethod
    def from_policy(cls, policy: Policy) -> PolicyDocument:
        def listed(values: frozenset[str] | None) -> list[str] | None:
            return None if values is None else sorted(values)

        return cls(
            jurisdictions=listed(policy.jurisdictions),
            datacenters=listed(policy.datacenters),
            certifications=sorted(policy.certifications),
            operator_jurisdictions=listed(policy.operator_jurisdictions),
            retention_days=policy.retention_days,
            content_logging=policy.content_logging,
            zero_retention=policy.zero_retention,
        )


class PolicyView(Out):
    org_id: str
    project_id: str | None
    scope: str  # "ceiling" | "project" | "effective"
    policy: PolicyDocument
    version_id: str | None
    updated_at: datetime | None
