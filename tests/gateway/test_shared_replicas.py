"""A fine-tuned model served by a shared replica of its base is load on the base: the
server reports its requests (answering, and waiting for a slot) under the base deployment,
which is the one that scales, since the shared deployment has no replica of its own; and a
request for it while the base is scaled to zero wakes the base and is answered. Clients
are the official SDK; the controller's and the node's parts are written as they would
write them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import openai
from sqlalchemy import select, update

from souverain.catalog.routes import load_wakeable
from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import DeploymentRow, ModelRow, ReplicaRow, utcnow
from souverain.testing.factories import Tenant, unique
from tests.conftest import Platform, usage_records, wait_until
from tests.gateway.test_scale_to_zero import asleep, replica_ready, waiting_seen
from tests.server.test_shared_deployments_api import fine_tuned, model_id_of


@dataclass
class SharedModel:
    name: str  # the fine-tuned model
    model_id: str
    deployment_id: str  # its shared deployment
    org_id: str
    base_deployment_id: str
    sdk: openai.AsyncOpenAI  # its owner's


async def base_replica(platform: Platform, deployment_id: str) -> str:
    async with platform.sessions() as session:
        query = select(ReplicaRow.id).where(ReplicaRow.deployment_id == deployment_id)
        return str((await session.execute(query)).scalar_one())


async def shared_model(platform: Platform, base: str) -> SharedModel:
    """A new tenant's fine-tuned model of `base` with a shared deployment (no replica of
    its own)."""
    tenant: Tenant = await platform.factory.tenant(roles={"ana": Role.OWNER})
    key = (await platform.factory.member_key(tenant, "ana", Role.OWNER)).key
    name = await fine_tuned(platform, base, tenant)
    model_id, deployment_id = await model_id_of(platform, name), new_id("dep")
    async with platform.sessions.begin() as session:
        base_deployment = (await session.execute(
            select(DeploymentRow.id).join(ModelRow, ModelRow.id == DeploymentRow.model_id)
            .where(ModelRow.name == base))).scalar_one()  # fmt: skip
        session.add(DeploymentRow(
            id=deployment_id, name=unique("d"), model_id=model_id, org_id=tenant.org_id,
            engine="llamacpp", replicas=1, datacenters=[], cpus=1, gpus=0, engine_args={},
            status="pending", status_reason="", sharing="shared",
        ))  # fmt: skip
    sdk = openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)
    return SharedModel(name, model_id, deployment_id, tenant.org_id, base_deployment, sdk)


async def holds(
    platform: Platform, replica_id: str, model_ids: list[str], *, slots: int | None = None
) -> None:
    """The replica reports these adapters loaded, numbered in order (the observer's write),
    and `slots` requests at once."""
    async with platform.sessions.begin() as session:
        await session.execute(update(ReplicaRow).where(ReplicaRow.id == replica_id).values(
            adapters=[{"model": m, "error": "", "lora": i} for i, m in enumerate(model_ids)],
            slots=slots, updated_at=utcnow(),  # the servers' route tables reload on it
        ))  # fmt: skip


async def demand(platform: Platform) -> dict[str, tuple[int, int]]:
    """(in flight, waiting) per deployment, summed over the servers' rows."""
    async with platform.sessions() as session:
        rows = (await session.execute(select(DeploymentDemandRow))).scalars()
        found: dict[str, tuple[int, int]] = {}
        for row in rows:
            in_flight, waiting = found.get(row.deployment_id, (0, 0))
            found[row.deployment_id] = (in_flight + row.in_flight, waiting + row.waiting)
    return found


def ask(sdk: openai.AsyncOpenAI, model: str, text: str = "bonjour") -> asyncio.Task[object]:
    return asyncio.ensure_future(
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=3
        )
    )


async def answered(sdk: openai.AsyncOpenAI, model: str) -> bool:
    try:
        await ask(sdk, model)
    except openai.APIStatusError:
        return False  # not routed yet: the route table has not reloaded
    return True


async def listed(shared: SharedModel) -> bool:
    return shared.name in {m.id async for m in shared.sdk.models.list()}


class TestLoadOnTheBase:
    async def test_a_fine_tuned_models_requests_count_for_the_base_deployment(
        self, platform: Platform
    ) -> None:
        base = await platform.served_model()
        shared = await shared_model(platform, base)
        replica_id = await base_replica(platform, shared.base_deployment_id)
        await holds(platform, replica_id, [shared.model_id], slots=1)
        await wait_until(lambda: answered(shared.sdk, shared.name), timeout_s=10)

        # one request holds the replica's only slot; the next one waits for it
        stream = await shared.sdk.chat.completions.create(
            model=shared.name, messages=[{"role": "user", "content": "#stall-stream"}],
            max_tokens=8, stream=True,
        )  # fmt: skip
        await anext(aiter(stream))
        waiting = ask(shared.sdk, shared.name)

        async def seen() -> bool:
            return (await demand(platform)).get(shared.base_deployment_id) == (1, 1)

        await wait_until(seen, timeout_s=10)
        # the same requests are reported for the model's own shared deployment too (its idle
        # clock: its adapter is not idle while they run), beside the base's own count
        assert (await demand(platform)).get(shared.deployment_id) == (1, 1)
        await stream.close()
        await asyncio.wait_for(waiting, 30)
        records = await usage_records(platform.sessions, 3, model=shared.name)
        # the usage records still name the shared deployment, on the base's replica
        assert {(r.deployment_id, r.replica_id) for r in records} == {
            (shared.deployment_id, replica_id)
        }

    async def test_a_request_for_a_fine_tuned_model_wakes_its_base_at_zero(
        self, platform: Platform
    ) -> None:
        base, base_deployment = await asleep(platform, engine="llamacpp")
        shared = await shared_model(platform, base)
        async with platform.client(await platform.operator_key()) as client:
            touched = await client.patch(f"/api/deployments/{base_deployment}", json={})
            assert touched.status_code == 200, touched.text  # the route tables reload
        await wait_until(lambda: listed(shared), timeout_s=10)

        request = ask(shared.sdk, shared.name)
        await wait_until(lambda: waiting_seen(platform, base_deployment), timeout_s=10)
        assert not request.done()  # it waits for the base, not "no ready replica"
        replica_id = await replica_ready(platform, base_deployment, adapters=(shared.model_id,))
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]
        [record] = await usage_records(platform.sessions, 1, model=shared.name)
        assert (record.deployment_id, record.replica_id) == (shared.deployment_id, replica_id)


class TestWhatWakes:
    async def test_only_the_bases_that_may_hold_the_adapter_wake_for_it(
        self, platform: Platform
    ) -> None:
        """The platform's llama-server deployment wakes for a tenant's fine-tuned model;
        another organisation's private deployment of the same base, a llama-cpp-python one
        and one on another engine do not (none of them would load the adapter)."""
        base, platform_base = await asleep(platform, engine="llamacpp")
        shared = await shared_model(platform, base)
        other = await platform.factory.tenant()
        async with platform.sessions.begin() as session:
            base_id = await session.scalar(select(DeploymentRow.model_id).where(
                DeploymentRow.id == platform_base))  # fmt: skip
            for org_id, engine, args in ((other.org_id, "llamacpp", {}),
                                         (None, "llamacpp", {"runtime": "llama-cpp-python"}),
                                         (None, "stand-in", {})):  # fmt: skip
                session.add(DeploymentRow(
                    id=new_id("dep"), name=unique("d"), model_id=base_id, org_id=org_id,
                    engine=engine, engine_args=args, replicas=0, min_replicas=0,
                    max_replicas=1, datacenters=[], cpus=1, gpus=0, status="stopped",
                    status_reason="scaled to zero while idle",
                ))  # fmt: skip
        async with platform.sessions() as session:
            woken = [w for w in await load_wakeable(session) if w.model_id == shared.model_id]
        bases = [(w.deployment_id, w.org_id) for w in woken if not w.shared]
        assert bases == [(platform_base, shared.org_id)]
        # and the shared deployment itself, whose adapter a request waits for
        assert [w.deployment_id for w in woken if w.shared] == [shared.deployment_id]
