"""A request for a model whose deployment is scaled to zero waits for a replica instead of
being refused: the controller sees it waiting (the server's demand row), and once a replica
is ready the request is answered. A replica that cannot start, or none ready in time, gives
the waiting request a 503 that says why. Clients are the official SDK; the controller's
part (placing the replica) is written as it would write it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from sqlalchemy import delete, select

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import (
    DeploymentRow,
    ModelArtifactRow,
    ModelRow,
    ReplicaRow,
)
from souverain.testing.factories import unique
from souverain.testing.live import free_port
from tests.conftest import Platform, usage_records, wait_until


async def asleep(platform: Platform, engine: str = "stand-in") -> tuple[str, str]:
    """A platform model whose only deployment is at zero replicas with minimum 0, known to
    the server's route table (`engine`: the deployment's; the stand-in serves it)."""
    name, deployment_id = unique("zero"), new_id("dep")
    async with platform.sessions.begin() as session:
        model = ModelRow(
            id=new_id("mdl"), name=name, owner_org_id=None, engine="stand-in",
            capabilities=["chat", "completions"], context_length=4096, description="",
        )  # fmt: skip
        session.add(model)
        await session.flush()
        session.add(
            ModelArtifactRow(
                id=new_id("art"), model_id=model.id, uri="file:///dev/null", sha256=None,
                size_bytes=None, format="gguf", license="test", source="test",
            )
        )  # fmt: skip
        session.add(
            DeploymentRow(
                id=deployment_id, name=unique("dep"), model_id=model.id, org_id=None,
                engine=engine, replicas=0, min_replicas=0, max_replicas=1,
                datacenters=[], cpus=1, gpus=0, engine_args={}, status="stopped",
                status_reason="scaled to zero while idle",
            )
        )  # fmt: skip
    async with platform.client(await platform.operator_key()) as client:
        # a change made through the API: every server reloads its routes
        touched = await client.patch(f"/api/deployments/{deployment_id}", json={})
        assert touched.status_code == 200, touched.text

        async def listed() -> bool:
            return name in {m["id"] for m in (await client.get("/v1/models")).json()["data"]}

        await wait_until(listed, timeout_s=10)
    return name, deployment_id


async def sdk(platform: Platform) -> openai.AsyncOpenAI:
    tenant = await platform.factory.tenant()
    key = await platform.factory.new_member(tenant.org_id, Role.MEMBER)
    return openai.AsyncOpenAI(
        base_url=f"{platform.url}/v1", api_key=key.key, max_retries=0, timeout=60
    )


async def waiting_seen(platform: Platform, deployment_id: str) -> bool:
    """Whether a server told the controller that a request waits for this deployment."""
    async with platform.sessions() as session:
        query = select(DeploymentDemandRow.waiting).where(
            DeploymentDemandRow.deployment_id == deployment_id
        )
        return any(waiting > 0 for waiting in (await session.execute(query)).scalars())


async def replica_ready(
    platform: Platform, deployment_id: str, url: str | None = None, adapters: tuple[str, ...] = ()
) -> str:
    """What the controller and the replica observer write once a replica has started (with
    these fine-tuned models' adapters loaded, numbered in order)."""
    async with platform.sessions.begin() as session:
        replica_id = new_id("rep")
        session.add(
            ReplicaRow(
                id=replica_id, deployment_id=deployment_id, actor_name=f"test-{replica_id}",
                datacenter_id=await platform.factory.datacenter("fr-test", country="FR"),
                node_id="node-test", url=url or f"{platform.stand_in_url}/r/{replica_id}",
                state="ready", reason="", engine_restarts=0,
                adapters=[{"model": m, "error": "", "lora": i} for i, m in enumerate(adapters)],
            )
        )  # fmt: skip
        deployment = await session.get(DeploymentRow, deployment_id)
        assert deployment is not None
        deployment.replicas, deployment.status = 1, "ready"
    return replica_id


async def deployment_says(
    platform: Platform, deployment_id: str, status: str, reason: str = ""
) -> None:
    """The controller has asked for one replica and the deployment says `status`."""
    async with platform.sessions.begin() as session:
        deployment = await session.get(DeploymentRow, deployment_id)
        assert deployment is not None
        deployment.replicas, deployment.status, deployment.status_reason = 1, status, reason


def ask(client: openai.AsyncOpenAI, model: str) -> asyncio.Task[object]:
    return asyncio.ensure_future(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "bonjour"}], max_tokens=3
        )
    )


@pytest.fixture
def short_wake(platform: Platform) -> Iterator[None]:
    before = platform.settings.wake_timeout_s
    platform.settings.wake_timeout_s = 1.0
    yield
    platform.settings.wake_timeout_s = before


class TestScaleToZero:
    async def test_a_request_wakes_the_deployment_and_is_answered(self, platform: Platform) -> None:
        model, deployment_id = await asleep(platform)
        request = ask(await sdk(platform), model)
        await wait_until(lambda: waiting_seen(platform, deployment_id), timeout_s=10)
        assert not request.done()  # it waits, not refused
        await replica_ready(platform, deployment_id)
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]
        [record] = await usage_records(platform.sessions, 1, model=model)
        assert record.status == "ok"

    async def test_a_replica_the_caller_may_not_use_does_not_stop_the_wake(
        self, platform: Platform
    ) -> None:
        """The model always on in the US and scaled to zero in France: an EU tenant's
        request wakes the French deployment and is answered there, not refused with 451."""
        model, deployment_id = await asleep(platform)
        async with platform.sessions.begin() as session:
            row = (
                await session.execute(select(ModelRow).where(ModelRow.name == model))
            ).scalar_one()
            always_on = DeploymentRow(
                id=new_id("dep"), name=unique("dep"), model_id=row.id, org_id=None,
                engine="stand-in", replicas=1, datacenters=[], cpus=1, gpus=0, engine_args={},
                status="ready", status_reason="",
            )  # fmt: skip
            session.add(always_on)
        us = await platform.factory.datacenter("us-test", country="US")
        async with platform.sessions.begin() as session:
            replica_id = new_id("rep")
            session.add(
                ReplicaRow(
                    id=replica_id, deployment_id=always_on.id, actor_name=f"test-{replica_id}",
                    datacenter_id=us, node_id="node-us",
                    url=f"{platform.stand_in_url}/r/{replica_id}", state="ready", reason="",
                    engine_restarts=0,
                )
            )  # fmt: skip
        tenant = await platform.factory.tenant()
        key = await platform.factory.new_member(tenant.org_id, Role.MEMBER)
        async with platform.client(await platform.operator_key()) as op:
            ceiling = await op.put(
                f"/api/orgs/{tenant.org_name}/policy", json={"jurisdictions": ["EU"]}
            )
            assert ceiling.status_code == 200
        client = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=key.key, max_retries=0, timeout=60
        )
        request = ask(client, model)
        await wait_until(lambda: waiting_seen(platform, deployment_id), timeout_s=10)
        assert not request.done()  # waits for the French replica, not a 451
        await replica_ready(platform, deployment_id)
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]
        [record] = await usage_records(platform.sessions, 1, model=model)
        assert record.datacenter_id == "fr-test"

    async def test_a_last_replica_just_released_makes_the_request_wait_not_fail(
        self, platform: Platform
    ) -> None:
        # The controller stopped the last replica's engine; the server's routes still name
        # it until their next refresh, so the request is refused by it (or, after the
        # refresh, finds none): either way it waits for the next replica.
        model, deployment_id = await asleep(platform)
        gone = await replica_ready(platform, deployment_id, url=f"https://127.0.0.1:{free_port()}")
        request = ask(await sdk(platform), model)
        await wait_until(lambda: waiting_seen(platform, deployment_id), timeout_s=10)
        async with platform.sessions.begin() as session:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.id == gone))
        await replica_ready(platform, deployment_id)
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]

    async def test_a_deployment_said_ready_with_no_replica_keeps_the_request_waiting(
        self, platform: Platform
    ) -> None:
        # Between one replica's removal and the next one's start the deployment may still
        # say ready while nothing serves it: the request waits on (a 451 is only for
        # replicas that run where the caller may not go; before, this was a 503).
        model, deployment_id = await asleep(platform)
        request = ask(await sdk(platform), model)
        await wait_until(lambda: waiting_seen(platform, deployment_id), timeout_s=10)
        await deployment_says(platform, deployment_id, "ready")
        await asyncio.sleep(1.0)  # the waiting request's route reloads (every 0.1 s) see it
        assert not request.done()
        await replica_ready(platform, deployment_id)
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            ("failed", "engine exited 3 times in 2 minutes (SIGILL)"),
            ("unschedulable", "0/2 nodes fit: 2 datacenter fra1 not allowed"),  # nodes gone
        ],
    )
    async def test_a_replica_that_cannot_start_ends_the_wait_with_its_reason(
        self, platform: Platform, status: str, reason: str
    ) -> None:
        model, deployment_id = await asleep(platform)
        request = ask(await sdk(platform), model)
        await wait_until(lambda: waiting_seen(platform, deployment_id), timeout_s=10)
        await deployment_says(platform, deployment_id, status, reason)
        with pytest.raises(openai.APIStatusError) as refused:
            await asyncio.wait_for(request, 30)
        assert refused.value.status_code == 503
        assert f"could not start: {reason}" in refused.value.message

    async def test_no_replica_in_time_is_a_clear_503(
        self, platform: Platform, short_wake: None
    ) -> None:
        model, _ = await asleep(platform)
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(await sdk(platform), model)
        assert refused.value.status_code == 503
        assert "scaled to zero and no replica became ready within 1s" in refused.value.message
