"""Sovereign placement on a real multi-node Ray cluster (ray.cluster_utils.Cluster).

Nodes in datacenters in FR, DE and US, plus a large node with no datacenter label; real
llama.cpp replicas of SmolLM2. EU-constrained deployments land only in FR/DE; the
unlabelled node is never used; a US-only tenant gets 451 from an EU-only model; a
datacenter relabelled to a forbidden country has its replicas re-placed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster

from souverain.core.fleet import DATACENTER_LABEL
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.node.artifacts import builtin_path, file_sha256
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.cluster import controller_hook
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer
from tests.conftest import MASTER_KEY, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
EU_MODEL = (
    "smollm2-eu"  # the same weights, registered under a second name for the EU-only deployment
)
DATACENTERS = {
    "par1": {"country": "FR", "carbon_intensity": 56},
    "fra1": {"country": "DE", "carbon_intensity": 380},
    "iad1": {"country": "US", "carbon_intensity": 20},  # the greenest: tempting, but not in the EU
}


HANDLES: dict[str, object] = {}  # datacenter -> the Ray node's handle, to remove one


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[dict[str, str]]:
    """Datacenter (or "unlabelled") -> Ray node id. Dead nodes are noticed within seconds."""
    fast_failure = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast_failure}
    )
    nodes = {dc: cluster.add_node(num_cpus=4, labels={DATACENTER_LABEL: dc}) for dc in DATACENTERS}
    nodes["unlabelled"] = cluster.add_node(num_cpus=16)
    cluster.wait_for_nodes()
    HANDLES.update(nodes)
    HANDLES["cluster"] = cluster
    try:
        yield {name: node.node_id for name, node in nodes.items()} | {"address": cluster.address}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@dataclass
class Fleet:
    url: str
    operator: str
    nodes: dict[str, str]
    factory: Factory
    database_url: str

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.operator}"},
            timeout=60,
        )


@pytest.fixture(scope="module")
async def fleet(
    ray_nodes: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    directory: Path = tmp_path_factory.mktemp("fleet")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'fleet.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.3,
        port=8000,
    )
    with LiveServer(create_app(settings, hooks=[controller_hook(ray_nodes["address"])])) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        factory = Factory(session_factory(engine))
        operator = (await factory.operator()).key
        fleet = Fleet(server.url, operator, ray_nodes, factory, settings.sqlalchemy_url)
        async with fleet.client() as client:
            for dc, attributes in DATACENTERS.items():
                body = {
                    "id": dc,
                    "name": dc,
                    "operator_name": "dc-op",
                    "operator_country": attributes["country"],
                    **attributes,
                }
                assert (await client.post("/api/datacenters", json=body)).status_code == 201
            checksum = file_sha256(builtin_path(MODEL))
            for name in (MODEL, EU_MODEL):
                registered = await client.post(
                    "/api/models",
                    json={
                        "name": name,
                        "uri": f"builtin://{MODEL}",
                        "sha256": checksum,
                        "license": "Apache-2.0",
                    },
                )
                assert registered.status_code == 201, registered.text
        yield fleet
        await engine.dispose()


async def deployment_ready(fleet: Fleet, name: str, timeout_s: float = 120) -> dict:
    async with fleet.client() as client:
        found: dict = {}

        async def ready() -> bool:
            nonlocal found
            found = (await client.get(f"/api/deployments/{name}")).json()
            details = found["replica_details"]
            return found["status"] == "ready" and all(r["node_id"] for r in details)

        await wait_until(ready, timeout_s=timeout_s, interval_s=0.5)
        return found


class TestSovereignPlacement:
    async def test_eu_deployment_lands_only_in_fr_or_de(self, fleet: Fleet) -> None:
        async with fleet.client() as client:
            created = await client.post(
                "/api/deployments",
                json={
                    "name": "eu-model",
                    "model": EU_MODEL,
                    "replicas": 2,
                    "jurisdictions": ["EU"],
                },
            )
            assert created.status_code == 201, created.text
        deployment = await deployment_ready(fleet, "eu-model")
        eu_nodes = {fleet.nodes["par1"], fleet.nodes["fra1"]}
        for replica in deployment["replica_details"]:
            assert replica["datacenter_id"] in {"par1", "fra1"}
            assert replica["node_id"] in eu_nodes  # where Ray actually ran the actor

    async def test_unconstrained_deployment_never_uses_the_unlabelled_node(
        self, fleet: Fleet
    ) -> None:
        async with fleet.client() as client:
            created = await client.post(
                "/api/deployments", json={"name": "anywhere", "model": MODEL, "replicas": 3}
            )
            assert created.status_code == 201
        deployment = await deployment_ready(fleet, "anywhere")
        nodes = {r["node_id"] for r in deployment["replica_details"]}
        assert fleet.nodes["unlabelled"] not in nodes
        assert {r["datacenter_id"] for r in deployment["replica_details"]} == {
            "iad1"
        }  # lowest carbon first

    async def test_us_only_tenant_gets_451_from_the_eu_only_model(self, fleet: Fleet) -> None:
        await deployment_ready(fleet, "anywhere")
        tenant = await fleet.factory.tenant(roles={"u": Role.MEMBER})
        key = (await fleet.factory.member_key(tenant, "u", Role.MEMBER)).key
        async with fleet.client() as client:
            policy = await client.put(
                f"/api/orgs/{tenant.org_name}/policy", json={"jurisdictions": ["US"]}
            )
            assert policy.status_code == 200
        async with fleet.client(key) as client:

            async def sees_only_us_models() -> bool:
                listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
                return listed == {MODEL}

            await wait_until(sees_only_us_models, timeout_s=10)
            refused = await client.post("/v1/chat/completions", json=_chat(EU_MODEL))
            assert refused.status_code == 451
            message = refused.json()["error"]["message"]
            assert "outside US (FR)" in message or "outside US (DE)" in message
            served = await client.post("/v1/chat/completions", json=_chat(MODEL))
            assert served.status_code == 200
            assert served.headers["x-souverain-datacenter"] == "iad1"

    async def test_relabelled_datacenter_has_its_replicas_replaced(self, fleet: Fleet) -> None:
        before = await deployment_ready(fleet, "eu-model")
        in_paris = [r for r in before["replica_details"] if r["datacenter_id"] == "par1"]
        assert in_paris, "the lowest-carbon EU datacenter should have been chosen first"
        async with fleet.client() as client:
            changed = await client.patch(
                "/api/datacenters/par1", json={"country": "US", "operator_country": "US"}
            )
            assert changed.status_code == 200

        async def moved() -> bool:
            async with fleet.client() as client:
                current = (await client.get("/api/deployments/eu-model")).json()
            details = current["replica_details"]
            return (
                current["status"] == "ready"
                and len(details) == 2
                and all(
                    r["datacenter_id"] == "fra1" and r["node_id"] == fleet.nodes["fra1"]
                    for r in details
                )
            )

        await wait_until(moved, timeout_s=120, interval_s=0.5)

    async def test_unschedulable_deployment_says_why_for_every_node(self, fleet: Fleet) -> None:
        async with fleet.client() as client:
            created = await client.post(
                "/api/deployments",
                json={"name": "swiss", "model": MODEL, "replicas": 1, "jurisdictions": ["CH"]},
            )
            assert created.status_code == 201

            async def explained() -> bool:
                current = (await client.get("/api/deployments/swiss")).json()
                return current["status"] == "unschedulable"

            await wait_until(explained, timeout_s=30)
            reason = (await client.get("/api/deployments/swiss")).json()["status_reason"]
        assert reason.startswith("0/5 nodes fit:")
        assert "outside CH" in reason and "no datacenter label" in reason


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


class TestEnergyOnRealReplicas:
    async def test_replica_energy_is_attributed_to_requests_and_conserved(
        self, fleet: Fleet
    ) -> None:
        await deployment_ready(fleet, "anywhere")
        tenant = await fleet.factory.tenant(roles={"e": Role.MEMBER})
        key = (await fleet.factory.member_key(tenant, "e", Role.MEMBER)).key
        async with fleet.client(key) as client:
            for _ in range(3):
                answer = await client.post("/v1/chat/completions", json=_chat(MODEL))
                assert answer.status_code == 200
                assert float(answer.headers["x-souverain-energy-joules"]) > 0

            async def attributed() -> bool:
                usage = (await client.get("/api/usage", params={"limit": 10})).json()["records"]
                return len(usage) == 3 and all(r["energy_j"] is not None for r in usage)

            await wait_until(attributed, timeout_s=30, interval_s=0.5)
            records = (await client.get("/api/usage", params={"limit": 10})).json()["records"]
        assert all(r["energy_source"] == "estimate" and r["energy_j"] > 0 for r in records), [
            (r["energy_source"], r["energy_j"], r["energy_estimate_j"]) for r in records
        ]
        assert all(
            r["co2e_g"] == pytest.approx(r["energy_j"] / 3.6e6 * 20) for r in records
        )  # iad1: 20 g/kWh
        engine = create_engine_unpooled(fleet_settings_url(fleet))
        async with session_factory(engine)() as session:
            from sqlalchemy import select

            from souverain.db.metering import EnergyIntervalRow

            intervals = list((await session.execute(select(EnergyIntervalRow))).scalars())
        await engine.dispose()
        assert intervals
        measured = sum(i.energy_j for i in intervals)
        assert measured > 0
        assert sum(i.attributed_j + i.idle_j for i in intervals) == pytest.approx(
            measured, rel=0.01
        )


def fleet_settings_url(fleet: Fleet) -> str:
    return fleet.database_url


class TestNodeLoss:
    """Runs last: it removes a node from the cluster."""

    async def test_replicas_of_a_lost_node_are_placed_elsewhere(self, fleet: Fleet) -> None:
        before = await deployment_ready(fleet, "anywhere")
        assert {r["datacenter_id"] for r in before["replica_details"]} == {"iad1"}
        cluster: Cluster = HANDLES["cluster"]  # type: ignore[assignment]
        cluster.remove_node(HANDLES["iad1"], allow_graceful=False)

        async def replaced() -> bool:
            async with fleet.client() as client:
                current = (await client.get("/api/deployments/anywhere")).json()
            details = current["replica_details"]
            return (
                current["status"] == "ready"
                and len(details) == 3
                and all(
                    r["node_id"] not in (None, fleet.nodes["iad1"], fleet.nodes["unlabelled"])
                    for r in details
                )
            )

        await wait_until(replaced, timeout_s=120, interval_s=0.5)

    async def test_a_lost_node_never_sends_its_replicas_across_a_border(self, fleet: Fleet) -> None:
        """fra1 is now the only EU datacenter (par1 was relabelled US above): when its node
        goes, the EU-only replicas have nowhere to go and none is placed outside the EU."""
        before = await deployment_ready(fleet, "eu-model")
        assert {r["datacenter_id"] for r in before["replica_details"]} == {"fra1"}
        cluster: Cluster = HANDLES["cluster"]  # type: ignore[assignment]
        cluster.remove_node(HANDLES["fra1"], allow_graceful=False)

        async def stranded() -> bool:
            async with fleet.client() as client:
                current = (await client.get("/api/deployments/eu-model")).json()
            return current["status"] == "unschedulable" and not current["replica_details"]

        await wait_until(stranded, timeout_s=120, interval_s=0.5)
        async with fleet.client() as client:
            current = (await client.get("/api/deployments/eu-model")).json()
            assert "outside" in current["status_reason"]  # why each remaining node was refused

        async def anywhere_on_par1() -> bool:
            async with fleet.client() as client:
                found = (await client.get("/api/deployments/anywhere")).json()
            details = found["replica_details"]
            return found["status"] == "ready" and all(
                r["datacenter_id"] == "par1" and r["node_id"] == fleet.nodes["par1"]
                for r in details
            )

        # The unconstrained deployment, on the other hand, is served from what is left.
        await wait_until(anywhere_on_par1, timeout_s=120, interval_s=0.5)
