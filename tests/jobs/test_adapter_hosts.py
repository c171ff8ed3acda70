"""Which base deployments may host an organisation's adapter (catalog/hosting.py), the one
rule behind a succeeded job's serving, the controller's wake-up and the gateway's wake
list: the platform's deployments host anyone's, an organisation's only its own, never one
of another base, a deleted one or one whose engine cannot hold adapters. On the real
database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.catalog.hosting import Owner, adapter_hosts
from souverain.core.ids import new_id
from souverain.db.tables import DeploymentRow, ModelRow
from souverain.testing.factories import Factory


@dataclass
class Bases:
    """Two base models, two organisations, and deployments made by `deploy`."""

    sessions: async_sessionmaker[AsyncSession]
    base: str
    other_base: str
    alice: str
    bob: str
    made: dict[str, str] = field(default_factory=dict)  # label -> deployment id

    async def deploy(self, label: str, *, org_id: str | None, base: str | None = None,
                     **fields: Any) -> None:  # fmt: skip
        """A llama-server deployment of `base` (the first base by default), owned by
        `org_id` (None: the platform's); `fields` override its columns."""
        deployment_id = new_id("dep")
        columns: dict[str, Any] = {
            "engine": "llamacpp", "replicas": 1, "datacenters": [], "cpus": 1, "gpus": 0,
            "engine_args": {}, "status": "ready", "status_reason": "",
        } | fields  # fmt: skip
        async with self.sessions.begin() as session:
            session.add(DeploymentRow(id=deployment_id, name=deployment_id,
                                      model_id=base or self.base, org_id=org_id, **columns))  # fmt: skip
        self.made[label] = deployment_id

    async def hosts(self, org_id: str | None, base: str | None = None) -> set[str]:
        """The labels of the deployments that may host `org_id`'s adapter of `base`."""
        owner = Owner(base or self.base, org_id)
        async with self.sessions() as session:
            found = (await adapter_hosts(session, [owner]))[owner]
        labels = {deployment_id: label for label, deployment_id in self.made.items()}
        return {labels[d.id] for d in found if d.id in labels}


async def base_model(sessions: async_sessionmaker[AsyncSession]) -> str:
    model_id = new_id("mdl")
    async with sessions.begin() as session:
        session.add(ModelRow(id=model_id, name=model_id, owner_org_id=None, engine="llamacpp",
                             capabilities=["chat"], context_length=4096, description=""))  # fmt: skip
    return model_id


@pytest.fixture
async def bases(sessions: async_sessionmaker[AsyncSession]) -> Bases:
    factory = Factory(sessions)
    alice, bob = await factory.tenant(), await factory.tenant()
    return Bases(
        sessions, await base_model(sessions), await base_model(sessions), alice.org_id, bob.org_id
    )


class TestAdapterHosts:
    async def test_the_platforms_deployment_hosts_any_organisations_adapter(
        self, bases: Bases
    ) -> None:
        await bases.deploy("platform", org_id=None)
        assert await bases.hosts(bases.alice) == {"platform"}
        assert await bases.hosts(bases.bob) == {"platform"}
        assert await bases.hosts(None) == {"platform"}  # a platform-owned adapter too

    async def test_an_organisations_deployment_hosts_its_own_adapters_only(
        self, bases: Bases
    ) -> None:
        await bases.deploy("platform", org_id=None)
        await bases.deploy("alice's", org_id=bases.alice)
        assert await bases.hosts(bases.alice) == {"platform", "alice's"}
        assert await bases.hosts(bases.bob) == {"platform"}  # never another's
        assert await bases.hosts(None) == {"platform"}

    async def test_a_deployment_of_another_base_never_hosts(self, bases: Bases) -> None:
        await bases.deploy("other base", org_id=None, base=bases.other_base)
        await bases.deploy("alice's other base", org_id=bases.alice, base=bases.other_base)
        assert await bases.hosts(bases.alice) == set()
        assert await bases.hosts(bases.alice, bases.other_base) == {
            "other base", "alice's other base"
        }  # fmt: skip

    async def test_a_deleted_one_never_hosts_one_at_zero_still_does(self, bases: Bases) -> None:
        await bases.deploy("deleted", org_id=None, deleted=True, status="deleting")
        await bases.deploy("stopped", org_id=None, replicas=0, status="stopped")
        await bases.deploy("idle", org_id=bases.alice, replicas=0, min_replicas=0,
                           max_replicas=2, status="stopped")  # fmt: skip
        # at zero it is still a host: its callers decide whether to wake it
        assert await bases.hosts(bases.alice) == {"stopped", "idle"}
        assert await bases.hosts(bases.bob) == {"stopped"}

    async def test_only_an_engine_that_holds_adapters_hosts(self, bases: Bases) -> None:
        await bases.deploy("llama-server", org_id=None)
        await bases.deploy("one adapter", org_id=None,
                           engine_args={"runtime": "llama-cpp-python"})  # fmt: skip
        await bases.deploy("embeddings", org_id=None, engine_args={"embedding": True})
        await bases.deploy("vllm", org_id=None, engine="vllm")
        assert await bases.hosts(bases.alice) == {"llama-server"}

    async def test_several_owners_in_one_call(self, bases: Bases) -> None:
        await bases.deploy("platform", org_id=None)
        await bases.deploy("bob's", org_id=bases.bob)
        await bases.deploy("bob's other base", org_id=bases.bob, base=bases.other_base)
        owners = [Owner(bases.base, bases.alice), Owner(bases.base, bases.bob),
                  Owner(bases.other_base, bases.bob)]  # fmt: skip
        async with bases.sessions() as session:
            found = await adapter_hosts(session, owners)
        ids = {owner: {d.id for d in hosts} for owner, hosts in found.items()}
        assert ids == {
            owners[0]: {bases.made["platform"]},
            owners[1]: {bases.made["platform"], bases.made["bob's"]},
            owners[2]: {bases.made["bob's other base"]},
        }
