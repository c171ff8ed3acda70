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


class StartupSums(Out):
    """Replicas' starts (placement to first ready) of your own deployments: your
    organisation's energy, apart from any request's."""

    starts: int
    energy_j: float
    energy_wh: float
    co2e_g: float
    cpu_s: float  # the engine processes' CPU seconds, spawn to ready, where nodes reported it


class LastStart(Out):
    replica_id: str
    placed_at: datetime
    ready_at: datetime
    wall_s: float  # placement to ready: what a request waiting for the replica waited
    engine_s: float | None  # the engine process's spawn to ready (the span `cpu_s` covers)
    cpu_s: float | None  # None where the node did not report it
    energy_j: float
    energy_wh: float
    co2e_g: float


class DeploymentStartup(StartupSums):
    """Every start of the deployment's replicas, and the last one."""

    last: LastStart | None


class UsageReport(Out):
    group_by: str
    groups: list[UsageGroup]
    records: list[UsageRecord]
    # Your organisation's own deployments' starts in the range, when you see its whole
    # usage (admins, auditors, operators) and no project or key is asked; else null.
    startup: StartupSums | None = None
