"""Two organisations' fine-tuned models on one real llama-server replica of their base, with
the official openai SDK through souverain: each model answers with its own adapter and
only its owner can reach it; a client cannot pick an adapter itself; the base model still
answers as the base; an adapter that does not fit the base is refused on the node, with
its reason, while the replica serves the others; usage goes to the adapter's owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import openai
import pytest
from sqlalchemy import select, update

from souverain.core.fleet import HostedAdapter
from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.tables import (
    DeploymentRow,
    ModelAdapterRow,
    ModelRow,
    ReplicaRow,
    UsageRecordRow,
)
from souverain.node import hosted_adapters
from souverain.storage.stores import LocalStore
from souverain.testing.factories import Tenant
from tests.llamacpp_target import LlamaTarget, llamacpp_target
from tests.lora_files import adapter_file, sealed_adapter

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@dataclass
class Tenants:
    target: LlamaTarget
    alice: Tenant  # the target's own tenant: owns model `a`
    bob: Tenant  # owns model `b`
    alice_key: str
    bob_key: str
    a: str  # model names
    b: str
    refused: str  # model id of the adapter of another base

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.target.url}/v1", api_key=key, max_retries=0)


IDS = {"a": new_id("mdl"), "refused": new_id("mdl"), "b": new_id("mdl")}


@pytest.fixture(scope="module")
async def tenants(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tenants]:
    directory = tmp_path_factory.mktemp("shared")
    store = LocalStore(directory / "store")
    files = {"a": adapter_file(directory, seed=1), "b": adapter_file(directory, seed=3),
             "refused": adapter_file(directory, seed=2, hidden=512)}  # fmt: skip
    adapters = tuple([
        HostedAdapter(IDS[key], await sealed_adapter(store, files[key].read_bytes(), key))
        for key in ("a", "refused", "b")
    ])  # fmt: skip
    async with llamacpp_target(directory, "llama-server", engine_args={"parallel": 2},
                               adapters=adapters) as target:  # fmt: skip
        bob = await target.factory.tenant(roles={"bob": Role.OWNER})
        bob_key = (await target.factory.member_key(bob, "bob", Role.OWNER)).key
        names = await _shared_models(target, {"a": target.tenant.org_id, "b": bob.org_id,
                                              "refused": bob.org_id})  # fmt: skip
        found = Tenants(target, target.tenant, bob, target.key, bob_key, names["a"],
                        names["b"], IDS["refused"])  # fmt: skip
        await _listed(found)
        yield found


async def _shared_models(target: LlamaTarget, owners: dict[str, str]) -> dict[str, str]:
    """The fine-tuned models with their shared deployments, and the replica's adapters as
    the observer writes them from the node's status."""
    status = target.supervisor.status()
    names = {}
    async with target.factory.sessions.begin() as session:
        replica = (await session.execute(select(ReplicaRow))).scalars().one()
        base = await session.get(DeploymentRow, replica.deployment_id)
        assert base is not None
        for key, org_id in owners.items():
            names[key] = f"ft-{key}-{new_id('x')[-6:]}"
            session.add(ModelRow(
                id=IDS[key], name=names[key], owner_org_id=org_id, engine="llamacpp",
                capabilities=["chat", "completions"], context_length=4096, description="",
                base_model_id=base.model_id,
            ))  # fmt: skip
            await session.flush()
            session.add(ModelAdapterRow(
                model_id=IDS[key], org_id=org_id, format="gguf-lora", store_uri="file:///x",
                object_key="adapter", object_id=f"{new_id('ftjob')}/adapter.gguf",
                wrapped_key="00", sha256="0" * 64, size_bytes=1, datacenter_id="llama-dc",
            ))  # fmt: skip
            session.add(DeploymentRow(
                id=new_id("dep"), name=names[key], model_id=IDS[key], org_id=org_id,
                engine="llamacpp", replicas=1, datacenters=[], cpus=1, gpus=0, engine_args={},
                status="ready", status_reason="", sharing="shared",
            ))  # fmt: skip
        await session.execute(
            update(ReplicaRow).where(ReplicaRow.id == replica.id).values(
                adapters=[{"model": a.model_id, "error": a.error, "lora": a.lora_id}
                          for a in status.adapters],
                updated_at=datetime.now(UTC),  # the servers' route tables reload on it
            )
        )  # fmt: skip
    return names


async def _listed(found: Tenants) -> None:
    for _ in range(100):
        models = [m.id async for m in found.sdk(found.alice_key).models.list()]
        if found.a in models:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the shared model never reached the route table")


async def answer(client: openai.AsyncOpenAI, model: str) -> str:
    done = await client.chat.completions.create(
        model=model,
        messages=ASK,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    return done.choices[0].message.content or ""


class TestOneEngineManyAdapters:
    async def test_each_model_answers_with_its_own_adapter(self, tenants: Tenants) -> None:
        alice, bob = tenants.sdk(tenants.alice_key), tenants.sdk(tenants.bob_key)
        base = await answer(alice, tenants.target.model)
        a = await answer(alice, tenants.a)
        b = await answer(bob, tenants.b)
        assert len({base, a, b}) == 3, (base, a, b)
        # interleaved, on the same slots: nothing of one request's adapter stays for the next
        assert await answer(alice, tenants.a) == a
        assert await answer(bob, tenants.target.model) == base
        assert await answer(bob, tenants.b) == b
        assert tenants.target.engine_alive()

    async def test_an_adapter_of_another_base_is_refused_and_the_others_serve(
        self, tenants: Tenants
    ) -> None:
        states = {s.model_id: s.error for s in tenants.target.supervisor.status().adapters}
        assert states[tenants.refused] == hosted_adapters.NOT_FOR_BASE  # no node detail
        assert states[IDS["a"]] == states[IDS["b"]] == ""

    async def test_usage_goes_to_the_adapters_owner(self, tenants: Tenants) -> None:
        await answer(tenants.sdk(tenants.bob_key), tenants.b)
        async with tenants.target.factory.sessions() as session:
            for _ in range(100):
                query = select(UsageRecordRow).where(UsageRecordRow.org_id == tenants.bob.org_id)
                rows = list((await session.execute(query)).scalars())
                if rows and all(r.status != "open" for r in rows):
                    break
                await asyncio.sleep(0.1)
        assert rows and {r.model for r in rows} <= {tenants.b, tenants.target.model}
        assert any(r.model == tenants.b and r.completion_tokens > 0 for r in rows)


class TestIsolationAttacks:
    async def test_a_tenant_naming_anothers_model_finds_nothing(self, tenants: Tenants) -> None:
        with pytest.raises(openai.NotFoundError):
            await answer(tenants.sdk(tenants.bob_key), tenants.a)
        with pytest.raises(openai.NotFoundError):
            await answer(tenants.sdk(tenants.alice_key), tenants.b)

    async def test_a_client_cannot_pick_an_adapter_itself(self, tenants: Tenants) -> None:
        for model in (tenants.target.model, tenants.b):
            with pytest.raises(openai.BadRequestError) as refused:
                await tenants.sdk(tenants.bob_key).chat.completions.create(
                    model=model, messages=ASK, max_tokens=4,  # type: ignore[arg-type]
                    extra_body={"lora": [{"id": 0, "scale": 1.0}]},
                )  # fmt: skip
            assert "lora" in str(refused.value)
