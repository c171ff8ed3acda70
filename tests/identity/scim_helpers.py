"""SCIM test helpers: an organisation with a SCIM token, and the compliance tester written
by others (`scim2-tester`, from the python-scim project) run against it."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from souverain.core.roles import Role
from tests.conftest import Platform

SCIM_JSON = "application/scim+json"


@dataclass
class ScimOrg:
    platform: Platform
    name: str
    org_id: str
    owner_key: str
    token: str
    base_url: str

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {token or self.token}", "Content-Type": SCIM_JSON},
            timeout=30,
        )

    async def map_groups(self, lines: list[dict[str, Any]], group_source: str = "scim") -> None:
        async with self.platform.client(self.owner_key) as client:
            answer = await client.put(
                f"/api/orgs/{self.name}/group-mappings",
                json={"lines": lines, "group_source": group_source},
            )
        assert answer.status_code == 200, answer.text


async def scim_org(platform: Platform) -> ScimOrg:
    tenant = await platform.factory.tenant(roles={"owner": Role.OWNER})
    owner = await platform.factory.member_key(tenant, "owner", Role.OWNER)
    async with platform.client(owner.key) as client:
        made = await client.post(f"/api/orgs/{tenant.org_name}/scim-tokens", json={"name": "idp"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["base_url"] == f"{platform.url}/scim/v2"
    return ScimOrg(
        platform, tenant.org_name, tenant.org_id, owner.key, body["token"], body["base_url"]
    )


@dataclass(frozen=True)
class Compliance:
    passed: int
    total: int
    by_status: dict[str, int]
    failures: list[str]


def _run_tester(base_url: str, token: str) -> Compliance:
    http = httpx2.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    with http:
        results = check_server(SyncSCIMClient(http))
    counted = [r for r in results if r.status != Status.SKIPPED]
    good = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE}
    failures = [
        f"{r.status.name} {r.resource_type or '-'} {r.title}: {r.reason}"[:400]
        for r in counted
        if r.status not in good
    ]
    return Compliance(
        passed=sum(1 for r in counted if r.status in good),
        total=len(counted),
        by_status=dict(Counter(r.status.name for r in counted)),
        failures=failures,
    )


async def run_compliance(org: ScimOrg) -> Compliance:
    """The tester is synchronous: it runs in a thread, the server in its own."""
    return await asyncio.to_thread(_run_tester, org.base_url, org.token)
