"""Shared and dedicated deployments through the API and the CLI: a fine-tuned model can ask
to be served by its base's shared replicas, a base model cannot (a 400 naming the field);
a shared replica shows the adapters it holds, each tenant seeing its own organisation's
only; `deployments list` tells a shared deployment from a dedicated one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, update

from souverain.catalog.routes import load_wakeable
from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.tables import DeploymentRow, ModelAdapterRow, ModelRow, ReplicaRow
from souverain.testing.factories import Tenant, unique
from tests.conftest import Platform
from tests.server.test_autoscaling_api import cli, refusal


async def fine_tuned(platform: Platform, base: str, tenant: Tenant) -> str:
    """A fine-tuned model of `tenant` on the model named `base`, with its adapter row."""
    name, model_id = unique("ft"), new_id("mdl")
    async with platform.sessions.begin() as session:
        base_id = (
            await session.execute(select(ModelRow.id).where(ModelRow.name == base))
        ).scalar_one()
        session.add(ModelRow(
            id=model_id, name=name, owner_org_id=tenant.org_id, engine="stand-in",
            capabilities=["chat"], context_length=4096, description="", base_model_id=base_id,
        ))  # fmt: skip
        await session.flush()
        session.add(ModelAdapterRow(
            model_id=model_id, org_id=tenant.org_id, format="gguf-lora", store_uri="file:///x",
            object_key="adapter", object_id=f"{new_id('ftjob')}/adapter.gguf", wrapped_key="00",
            sha256="0" * 64, size_bytes=1, datacenter_id="fr-test",
        ))  # fmt: skip
    return name


async def model_id_of(platform: Platform, name: str) -> str:
    async with platform.sessions() as session:
        query = select(ModelRow.id).where(ModelRow.name == name)
        return str((await session.execute(query)).scalar_one())


async def owner(platform: Platform, user: str) -> tuple[Tenant, str]:
    """A new organisation and the key of `user`, its owner."""
    tenant = await platform.factory.tenant(roles={user: Role.OWNER})
    return tenant, (await platform.factory.member_key(tenant, user, Role.OWNER)).key


@dataclass
class Mine:
    """A served base model, and an organisation's owner (`key`) with a fine-tuned model of
    it (`model`, its name)."""

    base: str
    tenant: Tenant
    key: str
    model: str

    def asked(self, **fields: Any) -> dict[str, Any]:
        """A shared deployment of the model, as its owner asks for it."""
        return {"name": unique("d"), "model": self.model, "sharing": "shared",
                "org": self.tenant.org_id} | fields  # fmt: skip


@pytest.fixture
async def alice(platform: Platform) -> Mine:
    base = await platform.served_model()
    tenant, key = await owner(platform, "alice")
    return Mine(base, tenant, key, await fine_tuned(platform, base, tenant))


class TestSharing:
    async def test_a_base_model_cannot_be_shared(self, platform: Platform) -> None:
        base = await platform.served_model()
        async with platform.client(await platform.operator_key()) as client:
            response = await client.post(
                "/api/deployments", json={"name": unique("d"), "model": base, "sharing": "shared"}
            )
        error = refusal(response)
        assert error["param"] == "sharing" and "not a fine-tuned model" in error["message"]

    async def test_options_a_shared_deployment_would_ignore_are_refused(
        self, platform: Platform, alice: Mine
    ) -> None:
        asked = alice.asked()
        async with platform.client(alice.key) as client:
            for extra, param in (({"engine_args": {"parallel": 4}}, "engine_args"),
                                 ({"replicas": 3, "cpus": 2}, "replicas"),
                                 ({"min_replicas": 0, "max_replicas": 2}, "max_replicas")):  # fmt: skip
                error = refusal(await client.post("/api/deployments", json=asked | extra))
                assert error["param"] == param and "shared deployment" in error["message"]
            created = await client.post("/api/deployments", json=asked)
        assert created.status_code == 201, created.text
        # the CLI sends every default: a plain `--shared` is accepted
        made = await cli(platform, alice.key, "deployments", "create", unique("d"),
                         "--model", alice.model, "--shared", "--org", alice.tenant.org_id)  # fmt: skip
        assert made.returncode == 0, made.stderr + made.stdout
        async with platform.sessions.begin() as session:  # a row made before this check
            await session.execute(update(DeploymentRow).where(
                DeploymentRow.id == created.json()["id"]).values(min_replicas=0, max_replicas=2))  # fmt: skip
            # its base's replicas serve it: a request waits for its adapter to load, never
            # for a replica of its own to start
            wakeable = {w.deployment_id: w.shared for w in await load_wakeable(session)}
        assert wakeable[created.json()["id"]] is True

    async def test_a_shared_deployment_can_be_set_to_unload_its_adapter_while_idle(
        self, platform: Platform, alice: Mine
    ) -> None:
        async with platform.client(alice.key) as client:
            created = (await client.post("/api/deployments", json=alice.asked())).json()
            path = f"/api/deployments/{created['id']}"
            idle = await client.patch(path, json={"min_replicas": 0, "max_replicas": 1,
                                                  "scale_down_idle_s": 900})  # fmt: skip
            assert idle.status_code == 200, idle.text
            shown = idle.json()
            assert shown["autoscaling"] and shown["scale_down_idle_s"] == 900
            assert (shown["min_replicas"], shown["max_replicas"]) == (0, 1)
            # more than one copy of an adapter means nothing on shared replicas
            error = refusal(await client.patch(path, json={"max_replicas": 2}))
            assert error["param"] == "max_replicas" and "at most 1" in error["message"]
        reason = "unloaded from the shared replicas of its base: idle for 901s"
        async with platform.sessions.begin() as session:  # as the controller writes it
            await session.execute(update(DeploymentRow).where(
                DeploymentRow.id == created["id"]).values(
                replicas=0, status="idle", status_reason=reason))  # fmt: skip
        listed = await cli(platform, alice.key, "deployments", "list")
        assert listed.returncode == 0, listed.stderr
        assert "unloaded while idle" in listed.stdout and "idle for 901s" in listed.stdout

    async def test_a_shared_deployments_idle_period_has_a_floor_on_create_and_update(
        self, platform: Platform, alice: Mine
    ) -> None:
        asked = alice.asked(min_replicas=0, max_replicas=1)
        async with platform.client(alice.key) as client:
            for idle_s in (0, 59):  # its adapter would come and go with each request
                error = refusal(await client.post(
                    "/api/deployments", json=asked | {"scale_down_idle_s": idle_s}))  # fmt: skip
                assert error["param"] == "scale_down_idle_s" and "at least 60" in error["message"]
            created = await client.post("/api/deployments", json=asked | {"scale_down_idle_s": 60})
            assert created.status_code == 201, created.text
            shown = created.json()
            assert shown["autoscaling"] and shown["scale_down_idle_s"] == 60
            assert (shown["min_replicas"], shown["max_replicas"]) == (0, 1)
            path = f"/api/deployments/{shown['id']}"
            error = refusal(await client.patch(path, json={"scale_down_idle_s": 0}))
            assert error["param"] == "scale_down_idle_s" and "at least 60" in error["message"]
            # the same refusal on create as on update: one copy of an adapter at most
            error = refusal(await client.post(
                "/api/deployments", json=asked | {"name": unique("d"), "max_replicas": 2}))  # fmt: skip
            assert error["param"] == "max_replicas" and "at most 1" in error["message"]
            kept = await client.get(path)
        assert kept.json()["scale_down_idle_s"] == 60

    async def test_each_tenant_sees_its_own_adapters_on_a_shared_replica(
        self, platform: Platform, alice: Mine
    ) -> None:
        bob, bob_key = await owner(platform, "bob")
        theirs = await fine_tuned(platform, alice.base, bob)
        async with platform.client(alice.key) as client:
            created = await client.post("/api/deployments", json=alice.asked())
        assert created.status_code == 201, created.text
        assert created.json()["sharing"] == "shared"
        held = [await model_id_of(platform, alice.model), await model_id_of(platform, theirs)]
        async with platform.sessions.begin() as session:  # as the observer writes it
            base_deployment = (await session.execute(
                select(DeploymentRow.id).join(ModelRow, ModelRow.id == DeploymentRow.model_id)
                .where(ModelRow.name == alice.base))).scalar_one()  # fmt: skip
            await session.execute(update(ReplicaRow).where(
                ReplicaRow.deployment_id == base_deployment).values(
                adapters=[{"model": held[0], "error": ""}, {"model": held[1], "error": None}]))  # fmt: skip

        async def replica_adapters(key: str) -> list[dict[str, str]]:
            async with platform.client(key) as client:
                found = (await client.get(f"/api/deployments/{base_deployment}")).json()
            assert found["adapters"] == len(found["replica_details"][0]["adapters"])
            return [{k: a[k] for k in ("model_id", "state")}
                    for a in found["replica_details"][0]["adapters"]]  # fmt: skip

        assert await replica_adapters(alice.key) == [{"model_id": held[0], "state": "loaded"}]
        assert await replica_adapters(bob_key) == [{"model_id": held[1], "state": "loading"}]
        assert len(await replica_adapters(await platform.operator_key())) == 2
        listed = await cli(platform, alice.key, "deployments", "list")
        assert listed.returncode == 0, listed.stderr
        assert "shared (on its base's replicas)" in listed.stdout
        assert "dedicated, +1 adapter(s)" in listed.stdout
