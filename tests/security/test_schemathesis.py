"""Property-based fuzzing of the live server from its own OpenAPI schema (schemathesis).

Every operation in `/openapi.json` is called with a few generated requests, valid and
invalid, carrying an operator key (the widest credential, so the requests get past
authentication and reach the handlers). Each response goes through schemathesis's
`not_a_server_error`, `response_schema_conformance` and `status_code_conformance` checks.
The campaign runs once per database; the tests below read its findings.

Needs `schemathesis` (not a project dependency): skipped when it is not installed.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.conftest import Platform

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES_PER_MODE = 10
CHECKS = {
    "not_a_server_error": not_a_server_error,
    "response_schema_conformance": response_schema_conformance,
    "status_code_conformance": status_code_conformance,
}


@dataclass(frozen=True)
class Finding:
    check: str
    operation: str
    status: int
    title: str


@dataclass(frozen=True)
class ServerError:
    method: str
    url: str
    body: str

    @property
    def carries_nul(self) -> bool:
        return "%00" in self.url.lower() or "\\u0000" in self.body or "\x00" in self.body

    def __str__(self) -> str:
        return f"{self.method} {self.url} {self.body[:200]!r}"


def _describe(response: schemathesis.Response) -> ServerError:
    request = response.request
    body = (
        request.body
        if isinstance(request.body, str)
        else (request.body or b"").decode("utf-8", "replace")
    )
    return ServerError(str(request.method), str(request.url), body)


@dataclass
class Campaign:
    calls: int = 0
    operations: set[str] = field(default_factory=set)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    findings: set[Finding] = field(default_factory=set)
    unsatisfiable: set[tuple[str, str]] = field(default_factory=set)
    server_errors: list[ServerError] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, check: str) -> list[Finding]:
        return sorted(
            (f for f in self.findings if f.check == check), key=lambda f: (f.operation, f.status)
        )


def run_campaign(base_url: str, key: str) -> Campaign:
    campaign = Campaign()
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        campaign.operations.add(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _exercise(operation, mode, headers, campaign)
    campaign.seconds = time.monotonic() - started
    return campaign


def _exercise(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    headers: dict[str, str],
    campaign: Campaign,
) -> None:
    label = operation.label

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: schemathesis.Case) -> None:
        response = case.call(headers=headers, timeout=15)
        campaign.calls += 1
        campaign.statuses[(label, response.status_code)] += 1
        if response.status_code >= 500:
            campaign.server_errors.append(_describe(response))
            time.sleep(0.5)  # see helpers.after_server_error: let the server finish logging
        for name, check in CHECKS.items():
            try:
                case.validate_response(response, checks=[check], headers=headers)
            except FailureGroup as group:
                for failure in group.exceptions:
                    campaign.findings.add(Finding(name, label, response.status_code, failure.title))

    try:
        exercise()
    except Unsatisfiable:
        # Nothing to break: e.g. no negative request exists for an operation without inputs.
        campaign.unsatisfiable.add((label, mode.value))


@pytest.fixture(scope="module")
async def campaign(platform: Platform) -> Campaign:
    """Run in a thread: its minutes of generating and sending would otherwise stop the event
    loop that every test's tasks share."""
    key = (await platform.factory.operator()).key

    def run() -> Campaign:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return run_campaign(platform.url, key)

    return await asyncio.to_thread(run)


def report(findings: list[Finding]) -> str:
    return "\n".join(f"{f.operation} -> {f.status}: {f.title}" for f in findings)


class TestSchemathesis:
    def test_the_campaign_covers_every_operation(self, campaign: Campaign) -> None:
        assert len(campaign.operations) >= 25, sorted(campaign.operations)
        assert campaign.calls >= len(campaign.operations) * 2
        reached = {label for (label, status) in campaign.statuses if status < 300}
        assert len(reached) >= 10, sorted(reached)  # positive cases do get through

    def test_no_server_errors(self, campaign: Campaign) -> None:
        findings = campaign.of("not_a_server_error")
        assert bool(findings) == bool(campaign.server_errors), report(findings)
        assert not campaign.server_errors, "\n".join(map(str, campaign.server_errors))

    def test_responses_conform_to_the_schema(self, campaign: Campaign) -> None:
        findings = campaign.of("response_schema_conformance")
        assert not findings, report(findings)

    def test_every_status_code_is_declared(self, campaign: Campaign) -> None:
        findings = campaign.of("status_code_conformance")
        assert not findings, report(findings)

    async def test_the_declared_422_body_is_the_one_sent(self, platform: Platform) -> None:
        key = await platform.operator_key()
        async with platform.client(key) as client:
            declared = (await client.get("/openapi.json")).json()
            response = await client.post("/api/orgs", json={"name": 3})
        schema = declared["paths"]["/api/orgs"]["post"]["responses"]["422"]["content"]
        ref = schema["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        properties = set(declared["components"]["schemas"][ref]["properties"])
        assert response.status_code == 422
        assert set(response.json()) <= properties, (set(response.json()), properties)
