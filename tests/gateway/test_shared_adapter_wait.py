"""A request for a fine-tuned model whose adapter a shared replica of its base is loading
(its job has just succeeded) waits for it, bounded, and is then answered, instead of a
503 "no ready replica"; an adapter the node refused ends the wait with a 503 that says
why, and so does the timeout. Clients are the official SDK, the base is served by the
stand-in engine; what the controller and the replica observer write is written here as
they would write it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import openai
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import DeploymentRow, ModelAdapterRow, ModelRow, ReplicaRow
from souverain.gateway import routing
from souverain.node.hosted_adapters import UNREADABLE
from souverain.testing.factories import unique
from tests.conftest import Platform, usage_records, wait_until
from tests.gateway.test_scale_to_zero import ask, waiting_seen

T = TypeVar("T")
Loader = Callable[[AsyncSession], Awaitable[list[T]]]


@dataclass
class Loading:
    client: openai.AsyncOpenAI  # the model's owner's
    model: str  # the fine-tuned model's name
    model_id: str
    deployment_id: str  # its shared deployment
    replica_id: str  # the base's replica that is to hold the adapter


@dataclass
class Base:
    org_id: str
    replica_id: str  # the base's one replica
    base_name: str


async def served_base(platform: Platform) -> Base:
    tenant = await platform.factory.tenant()
    replica_id = new_id("rep")
    base_name, _ = await platform.factory.served_model(
        url=f"{platform.stand_in_url}/r/{replica_id}",
        datacenter_id=await platform.factory.datacenter("fr-test", country="FR"),
        replica_id=replica_id,
    )
    return Base(tenant.org_id, replica_id, base_name)


async def register(platform: Platform, base: Base, *, idle: bool = False) -> tuple[str, str, str]:
    """What a succeeded job writes in one transaction: the fine-tuned model, its adapter and
    its shared deployment (`idle`: one the controller unloaded after its idle period, as
    jobs/deployments/idle_adapters.py leaves it). Its model id, deployment id and name."""
    model_id, deployment_id, name = new_id("mdl"), new_id("dep"), unique("ft")
    org_id = base.org_id
    async with platform.sessions.begin() as session:
        base_row = (
            await session.execute(select(ModelRow).where(ModelRow.name == base.base_name))
        ).scalar_one()
        session.add(ModelRow(
            id=model_id, name=name, owner_org_id=org_id, engine=base_row.engine,
            capabilities=["chat", "completions"], context_length=4096, description="",
            base_model_id=base_row.id,
        ))  # fmt: skip
        await session.flush()
        session.add(ModelAdapterRow(
            model_id=model_id, org_id=org_id, format="gguf-lora", store_uri="file:///x",
            object_key="adapter", object_id=f"{new_id('ftjob')}/adapter.gguf", wrapped_key="00",
            sha256="0" * 64, size_bytes=1, datacenter_id="fr-test",
        ))  # fmt: skip
        session.add(DeploymentRow(
            id=deployment_id, name=unique("dep"), model_id=model_id, org_id=org_id,
            engine=base_row.engine, replicas=0 if idle else 1, datacenters=[], cpus=1, gpus=0,
            engine_args={}, status="idle" if idle else "pending",
            status_reason=IDLE_REASON if idle else "a shared replica of its base is loading "
            "the adapter", sharing="shared", min_replicas=0, max_replicas=1,
        ))  # fmt: skip
        await _touch(session, base.replica_id)  # every server reloads its routes
    return model_id, deployment_id, name


async def loading(platform: Platform, *, idle: bool = False) -> Loading:
    """A tenant's fine-tuned model just registered by its succeeded job: a shared deployment
    whose adapter the base's one replica has not loaded yet."""
    base = await served_base(platform)
    key = await platform.factory.new_member(base.org_id, Role.MEMBER)
    model_id, deployment_id, name = await register(platform, base, idle=idle)
    client = openai.AsyncOpenAI(
        base_url=f"{platform.url}/v1", api_key=key.key, max_retries=0, timeout=60
    )

    async def known() -> bool:  # the servers' route tables have the model
        try:
            return (await client.models.retrieve(name)).id == name
        except openai.NotFoundError:
            return False

    await wait_until(known, timeout_s=10)
    return Loading(client, name, model_id, deployment_id, base.replica_id)


async def _touch(session: object, replica_id: str, **values: object) -> None:
    await session.execute(  # type: ignore[attr-defined]
        update(ReplicaRow)
        .where(ReplicaRow.id == replica_id)
        .values(updated_at=datetime.now(UTC), **values)
    )


async def node_reports(platform: Platform, found: Loading, *, error: str) -> None:
    """What the observer writes from the node's status (the adapter loaded as number 0,
    or refused with a category), then the controller's status of the shared deployment."""
    entry = {"model": found.model_id, "error": error, "lora": None if error else 0}
    async with platform.sessions.begin() as session:
        await _touch(session, found.replica_id, adapters=[entry])
        deployment = await session.get(DeploymentRow, found.deployment_id)
        assert deployment is not None
        deployment.status = "failed" if error else "ready"
        deployment.status_reason = (
            f"the adapter was refused: {error}" if error else "served by 1 shared replica(s)"
        )


IDLE_REASON = (
    "unloaded from the shared replicas of its base: idle for 301s (scale_down_idle_s 300); "
    "the next request loads it again"
)


async def in_flight_seen(platform: Platform, deployment_id: str) -> bool:
    """Whether a server told the controller that a request is being answered for this
    deployment."""
    async with platform.sessions() as session:
        query = select(DeploymentDemandRow.in_flight).where(
            DeploymentDemandRow.deployment_id == deployment_id
        )
        return any(count > 0 for count in (await session.execute(query)).scalars())


@pytest.fixture
def short_wake(platform: Platform) -> Iterator[None]:
    before = platform.settings.wake_timeout_s
    platform.settings.wake_timeout_s = 1.0
    yield
    platform.settings.wake_timeout_s = before


class TestAdapterBeingLoaded:
    async def test_the_request_waits_for_the_adapter_and_is_answered(
        self, platform: Platform
    ) -> None:
        found = await loading(platform)
        assert found.model in {m.id async for m in found.client.models.list()}
        request = ask(found.client, found.model)
        await asyncio.sleep(0.5)  # several route reloads later, still waiting
        assert not request.done(), f"refused while its adapter loaded: {request.exception()}"
        await wait_until(lambda: waiting_seen(platform, found.deployment_id), timeout_s=10)
        await node_reports(platform, found, error="")
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]
        [record] = await usage_records(platform.sessions, 1, model=found.model)
        assert record.status == "ok"

    async def test_a_refused_adapter_ends_the_wait_with_its_reason(
        self, platform: Platform
    ) -> None:
        found = await loading(platform)
        request = ask(found.client, found.model)
        await wait_until(lambda: waiting_seen(platform, found.deployment_id), timeout_s=10)
        await node_reports(platform, found, error=UNREADABLE)
        with pytest.raises(openai.APIStatusError) as refused:
            await asyncio.wait_for(request, 30)
        assert refused.value.status_code == 503
        assert f"could not be loaded: the adapter was refused: {UNREADABLE}" in (
            refused.value.message
        )
        assert found.replica_id not in refused.value.message  # nothing of the shared replica

    async def test_an_adapter_unloaded_as_the_request_arrives_is_a_503_to_retry(
        self, platform: Platform
    ) -> None:
        """The engine no longer holds the adapter the route named (unloaded while idle as
        the request went): not the client's mistake, so a 503 the SDKs retry, without the
        engine's adapter number."""
        found = await loading(platform)
        request = found.client.chat.completions.create(
            model=found.model, messages=[{"role": "user", "content": "#adapter-gone"}],
            max_tokens=3,
        )  # fmt: skip
        pending = asyncio.ensure_future(request)
        await wait_until(lambda: waiting_seen(platform, found.deployment_id), timeout_s=10)
        await node_reports(platform, found, error="")
        with pytest.raises(openai.APIStatusError) as refused:
            await asyncio.wait_for(pending, 30)
        assert refused.value.status_code == 503
        assert "was unloaded as this request arrived" in refused.value.message
        assert "lora adapter" not in refused.value.message

    async def test_no_adapter_in_time_is_a_clear_503(
        self, platform: Platform, short_wake: None
    ) -> None:
        found = await loading(platform)
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(found.client, found.model)
        assert refused.value.status_code == 503
        assert "being loaded onto a shared replica of its base and was not ready within 1s" in (
            refused.value.message
        )


class TestJustRegistered:
    async def test_a_model_the_route_table_knows_has_its_deployment_to_wait_for(
        self, platform: Platform, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A job registers its model and shared deployment in one transaction while a server
        reads its routes: whatever the moment, the table either does not know the model yet
        (a 404 that a retry answers) or knows it with a deployment to wait for, never a
        known model with nothing to wait for (a 503 "no ready replica" for a model that is
        being loaded)."""
        base = await served_base(platform)
        registered: list[str] = []

        this_test = asyncio.current_task()  # not the platform's own servers' refreshes

        def committing_after(load: Loader[T]) -> Loader[T]:
            async def read(session: AsyncSession) -> list[T]:
                rows = await load(session)
                if not registered and asyncio.current_task() is this_test:
                    # the job commits right after the first of the table's reads
                    registered.append((await register(platform, base))[0])
                return rows

            return read

        monkeypatch.setattr(routing, "load_models", committing_after(routing.load_models))
        monkeypatch.setattr(routing, "load_wakeable", committing_after(routing.load_wakeable))
        table = routing.RouteTable()
        await table.refresh(platform.sessions)
        [model_id] = registered
        assert model_id not in table.models or table.wakeable.get(model_id)
        await table.refresh(platform.sessions)  # the next refresh knows both
        assert model_id in table.models and table.wakeable.get(model_id)


class TestIdleUnloadedAdapter:
    async def test_a_request_waits_for_the_adapter_to_be_loaded_again_and_is_answered(
        self, platform: Platform
    ) -> None:
        found = await loading(platform, idle=True)
        request = ask(found.client, found.model)
        await wait_until(lambda: waiting_seen(platform, found.deployment_id), timeout_s=10)
        assert not request.done(), f"refused while its adapter was unloaded: {request}"
        async with platform.sessions.begin() as session:  # the controller: wanted again
            await session.execute(update(DeploymentRow).where(
                DeploymentRow.id == found.deployment_id).values(replicas=1))  # fmt: skip
        await node_reports(platform, found, error="")
        answer = await asyncio.wait_for(request, 30)
        assert answer.choices[0].message.content  # type: ignore[attr-defined]
        # its usage record names the shared deployment: the idle clock starts again from it
        [record] = await usage_records(platform.sessions, 1, model=found.model)
        assert (record.status, record.deployment_id) == ("ok", found.deployment_id)

    async def test_an_answer_in_progress_is_reported_for_the_shared_deployment(
        self, platform: Platform
    ) -> None:
        """A long answer on the shared replica counts for the model's own deployment (as
        well as for the base's), so the controller does not take its adapter as idle."""
        found = await loading(platform)
        await node_reports(platform, found, error="")
        stream = await found.client.chat.completions.create(
            model=found.model, messages=[{"role": "user", "content": "hi #stall-stream"}],
            max_tokens=8, stream=True,
        )  # fmt: skip
        try:
            await anext(aiter(stream))
            await wait_until(lambda: in_flight_seen(platform, found.deployment_id), timeout_s=10)
        finally:
            await stream.close()
