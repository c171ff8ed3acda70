from __future__ import annotations

from datetime import datetime

from souverain.core.schemas.common import Out


class UsageRecord(Out):
    id: str
    org_id: str | None
    project_id: str | None
    key_id: str
    endpoint: str
    model: str
    stream: bool
    datacenter_id: str | None
    country: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None
    ttft_ms: float | None
    cost: float
    currency: str | None
    energy_j: float | None
    energy_estimate_j: float | None
    co2e_g: float | None
    energy_source: str | None
    prompt_language: str | None = None
    reasoning_language: str | None = None
    answer_language: str | None = None
    languages_agree: bool | None = None
    created_at: datetime


class UsageGroup(Out):
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    energy_j: float  # attributed where the interval has closed, else the estimate
    co2e_g: float
    language_tagged: int = 0  # reasoning requests whose languages could be compared
    language_consistent: int = 0  # prompt, thinking and answer in one language
    language_consistency: float | None = None


class UsageReport(Out):
    group_by: str
    groups: list[UsageGroup]
    records: list[UsageRecord]
