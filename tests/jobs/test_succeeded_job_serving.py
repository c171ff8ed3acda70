"""A succeeded job's model is served by its base's deployment that can hold adapters: a
shared deployment, no replica (no engine) of its own, whether a replica of the base runs,
is starting (kept, not replaced: it takes the adapter once ready), or the base is scaled
to zero (the first request for the model wakes it, and its replica starts with the
adapter). Only where no deployment of the base would take the adapter (its replicas cannot
hold adapters, none runs or may run where the job's model may be served, a base at zero
may be placed where it may not, or the organisation is at its cap) does it get a replica
of its own. The real fine-tuning and deployment
reconcilers on the real database, the in-memory cluster in place of Ray."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from souverain.catalog.routes import load_ready_routes, load_wakeable
from souverain.core.fleet import SealedObject, training_actor_name
from souverain.core.ids import new_id
from souverain.db.demand import DeploymentDemandRow
from souverain.db.jobs import FineTuningEventRow, FineTuningJobRow
from souverain.db.tables import DeploymentRow, ModelArtifactRow, ModelRow, ReplicaRow, utcnow
from souverain.installation.authority import Issuer
from souverain.jobs.deployments import autoscaling, sharing
from souverain.jobs.deployments.reconciler import DeploymentReconciler, EngineDefaults
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.fine_tuning.reconciler import FineTuneReconciler, TrainingDefaults
from souverain.jobs.runner import Controller
from souverain.testing.factories import Factory
from tests.jobs.conftest import KEY, World
from tests.jobs.test_shared_adapters import Shared


@pytest.fixture
async def base(world: World) -> AsyncIterator[Shared]:
    """A platform deployment of a llama.cpp base with one replica in the world's datacenter,
    running llama-server (as its node reports it)."""
    async with base_deployment(world, replicas=1) as found:
        await found.round()
        await running_as(found, "llama-server")
        yield found


@pytest.fixture
async def asleep(world: World) -> AsyncIterator[Shared]:
    """A platform deployment of a llama.cpp base scaled to zero (minimum 0, no replica),
    allowed only in the world's datacenter."""
    async with base_deployment(
        world, replicas=0, min_replicas=0, max_replicas=1, datacenters=[world.datacenter_id]
    ) as found:
        yield found


@contextlib.asynccontextmanager
async def base_deployment(
    world: World, *, datacenters: list[str] | None = None, **counts: Any
) -> AsyncIterator[Shared]:
    """A platform deployment of a llama.cpp base (`counts`: replicas, min_replicas,
    max_replicas; `datacenters`: the only ones it may run in) with its reconciler; its
    rows removed after."""
    base_model, base_deployment = new_id("mdl"), new_id("dep")
    async with world.sessions.begin() as session:
        session.add(ModelRow(
            id=base_model, name=new_id("base"), owner_org_id=None, engine="llamacpp",
            capabilities=["chat"], context_length=4096, description="",
        ))  # fmt: skip
        await session.flush()
        session.add(ModelArtifactRow(
            id=new_id("art"), model_id=base_model, uri="builtin://smollm2-135m-instruct",
            sha256=None, size_bytes=None, format="gguf", license="test", source="test",
        ))  # fmt: skip
        session.add(DeploymentRow(
            id=base_deployment, name=base_deployment, model_id=base_model, org_id=None,
            engine="llamacpp", cpus=1, gpus=0, engine_args={}, status="pending",
            status_reason="", strategy="spread", datacenters=datacenters or [], **counts,
        ))  # fmt: skip
    reconciler = DeploymentReconciler(
        world.sessions, world.cluster, master_key=KEY,
        engine=EngineDefaults(threads=1, bind_host=None),
        energy=EnergyAccountant(world.sessions, interval_s=30.0, prompt_weight=1.0,
                                completion_weight=3.0),
        issuer=Issuer(world.sessions, KEY),
    )  # fmt: skip
    found = Shared(world, reconciler, base_deployment, world.datacenter_id, "", [])
    try:
        yield found
    finally:
        async with world.sessions.begin() as session:
            ids = [base_deployment, *found.made]
            await session.execute(delete(DeploymentDemandRow).where(
                DeploymentDemandRow.deployment_id.in_(ids)))  # fmt: skip
            await session.execute(delete(ReplicaRow).where(ReplicaRow.deployment_id.in_(ids)))
            await session.execute(delete(DeploymentRow).where(DeploymentRow.id.in_(ids)))


async def running_as(base: Shared, runtime: str) -> None:
    """What the observer writes from the node's status: the program serving the base."""
    async with base.world.sessions.begin() as session:
        await session.execute(
            update(ReplicaRow)
            .where(ReplicaRow.deployment_id == base.base_deployment)
            .values(runtime=runtime)
        )


async def succeeded(base: Shared, *, jurisdictions: list[str] | None = None) -> FineTuningJobRow:
    """A supervised job on the base, run to success (its worker sealed an adapter)."""
    world = base.world
    job_id = await world.queued_job()
    async with world.sessions.begin() as session:
        deployment = await session.get(DeploymentRow, base.base_deployment)
        assert deployment is not None
        await session.execute(
            update(FineTuningJobRow)
            .where(FineTuningJobRow.id == job_id)
            .values(base_model_id=deployment.model_id, jurisdictions=jurisdictions)
        )
    loop = FineTuneReconciler(
        world.sessions, world.cluster, master_key=KEY,
        defaults=TrainingDefaults(file_stores={world.datacenter_id: "file:///tmp"}),
    )  # fmt: skip
    await loop.reconcile(job_id, await world.placer())
    sealed = tuple(
        SealedObject(name, f"{job_id}/{name}", f"{job_id}/{name}", "0" * 64, 10, 3)
        for name in ("adapter.gguf", "adapter-peft.tar")
    )
    world.cluster.set_training(training_actor_name(job_id), state="succeeded", step=3,
                               sealed=sealed)  # fmt: skip
    await loop.reconcile(job_id, await world.placer())
    job = await world.job(job_id)
    assert job.status == "succeeded" and job.result_model_id, job.error
    return job


async def deployment_of(base: Shared, job: FineTuningJobRow) -> DeploymentRow:
    async with base.world.sessions() as session:
        query = select(DeploymentRow).where(DeploymentRow.model_id == job.result_model_id)
        deployment = (await session.execute(query)).scalar_one()
    base.made.append(deployment.id)
    return deployment


async def events(world: World, job: FineTuningJobRow) -> list[str]:
    async with world.sessions() as session:
        query = select(FineTuningEventRow.message).where(FineTuningEventRow.job_id == job.id)
        return list((await session.execute(query)).scalars())


async def routed(base: Shared, model_id: str | None) -> list[str]:
    """The deployments the ready routes for a model name."""
    async with base.world.sessions() as session:
        routes = await load_ready_routes(session)
    return [r.deployment_id for r in routes if r.model_id == model_id]


def started_for(base: Shared, deployment_id: str) -> list[str]:
    """The engines the cluster was asked to start for a deployment."""
    specs = base.world.cluster.replica_specs.values()
    return [s.replica_id for s in specs if s.deployment_id == deployment_id]


class TestSucceededJobServing:
    async def test_a_running_replica_of_the_base_serves_the_model_no_engine_of_its_own(
        self, base: Shared
    ) -> None:
        job = await succeeded(base)
        deployment = await deployment_of(base, job)
        assert deployment.sharing == "shared", "a new engine would start for the model"
        assert deployment.org_id == job.org_id and deployment.replicas == 1
        # its adapter is unloaded after the default idle period without a request
        # (jobs/deployments/idle_adapters.py), and loaded again by the next one
        assert (deployment.min_replicas, deployment.max_replicas) == (0, 1)
        assert deployment.scale_down_idle_s == autoscaling.DEFAULT_IDLE_S
        assert any(
            "served by a running replica of its base" in m for m in await events(base.world, job)
        )
        for _ in range(3):
            await base.round()
        assert started_for(base, deployment.id) == []  # the controller starts none for it
        async with base.world.sessions() as session:
            routes = [r for r in await load_ready_routes(session)
                      if r.model_id == job.result_model_id]  # fmt: skip
            mine = await session.get(DeploymentRow, deployment.id)
        assert routes and {r.deployment_id for r in routes} == {deployment.id}
        assert mine is not None and mine.status == "ready", mine and mine.status_reason

    async def test_a_base_whose_replicas_cannot_hold_adapters_gives_a_replica_of_its_own(
        self, base: Shared
    ) -> None:
        await running_as(base, "llama-cpp-python")  # serves one adapter, fixed at start
        job = await succeeded(base)
        deployment = await deployment_of(base, job)
        assert deployment.sharing == "dedicated"
        await base.reconciler.reconcile(deployment.id, await base.world.placer())
        assert len(started_for(base, deployment.id)) == 1

    async def test_no_shared_replica_where_the_jobs_jurisdictions_exclude_it(
        self, base: Shared
    ) -> None:
        # the base's only replica runs in Germany; the job's model may be served in France
        germany = await Factory(base.world.sessions).datacenter(country="DE")
        async with base.world.sessions.begin() as session:
            await session.execute(
                update(ReplicaRow)
                .where(ReplicaRow.deployment_id == base.base_deployment)
                .values(datacenter_id=germany)
            )
        job = await succeeded(base, jurisdictions=["FR"])
        assert (await deployment_of(base, job)).sharing == "dedicated"

    async def test_a_starting_replica_of_the_base_serves_the_model(self, base: Shared) -> None:
        await starting(base)
        job = await succeeded(base)
        assert (await deployment_of(base, job)).sharing == "shared"
        assert any(
            "replica of its base that is starting" in m for m in await events(base.world, job)
        )

    async def test_the_starting_replica_is_kept_and_takes_the_adapter_once_ready(
        self, base: Shared
    ) -> None:
        await starting(base)
        [before] = await base.replicas()
        job = await succeeded(base)
        await deployment_of(base, job)
        await base.reconciler.reconcile(base.base_deployment, await base.world.placer())
        # not stopped and replaced for its new set: a base whose set changes more often
        # than it takes to start would never become ready
        assert [r.id for r in await base.replicas()] == [before.id]
        assert base.world.cluster.changes == []  # not ready yet: nothing sent
        await base.round()  # the observer: it is ready
        await base.round()  # the wanted set is sent to it
        [after] = await base.replicas()
        assert after.id == before.id
        assert base.world.cluster.changes == [(before.actor_name, (job.result_model_id,))]
        assert [e["model"] for e in after.adapters] == [job.result_model_id]
        assert await routed(base, job.result_model_id) == [(await deployment_of(base, job)).id]


async def starting(base: Shared) -> None:
    """The base's replica as its node first reports it: starting, its program not named."""
    async with base.world.sessions.begin() as session:
        await session.execute(
            update(ReplicaRow)
            .where(ReplicaRow.deployment_id == base.base_deployment)
            .values(state="starting", runtime=None, url=None)
        )


async def wait_for_the_model(base: Shared) -> None:
    """A request for the model waits: its server reports it waiting for the base at zero
    (`gateway/demand.py`), the reading the controller scales on."""
    async with base.world.sessions.begin() as session:
        session.add(DeploymentDemandRow(
            server_id=new_id("srv"), deployment_id=base.base_deployment, in_flight=0,
            waiting=1, draining=0, updated_at=utcnow(),
        ))  # fmt: skip


class TestABaseScaledToZero:
    async def test_the_model_is_shared_and_a_request_wakes_the_base_with_its_adapter(
        self, asleep: Shared
    ) -> None:
        job = await succeeded(asleep, jurisdictions=["FR"])
        deployment = await deployment_of(asleep, job)
        assert deployment.sharing == "shared", "a new engine would start for the model"
        assert any("once one starts" in m for m in await events(asleep.world, job))
        async with asleep.world.sessions() as session:
            woken = await load_wakeable(session)
        # a request for the model wakes the base (and waits for the model's adapter)
        assert {w.deployment_id for w in woken if w.model_id == job.result_model_id} == {
            asleep.base_deployment,
            deployment.id,
        }
        assert await routed(asleep, job.result_model_id) == []

        await wait_for_the_model(asleep)
        await asleep.round()
        [replica] = await asleep.replicas()  # started with the adapter
        assert [e["model"] for e in replica.adapters] == [job.result_model_id]
        assert await routed(asleep, job.result_model_id) == [deployment.id]
        assert started_for(asleep, deployment.id) == []  # no engine of its own

    async def test_a_policy_that_excludes_the_bases_only_datacenter_gives_a_replica_of_its_own(
        self, world: World
    ) -> None:
        germany = await Factory(world.sessions).datacenter(country="DE")
        async with base_deployment(
            world, replicas=0, min_replicas=0, max_replicas=1, datacenters=[germany]
        ) as asleep:
            job = await succeeded(asleep, jurisdictions=["FR"])
            assert (await deployment_of(asleep, job)).sharing == "dedicated"
            assert any("a replica of its own" in m for m in await events(world, job))

    async def test_a_base_that_may_wake_where_the_jobs_policy_excludes_gives_a_replica_of_its_own(
        self, world: World
    ) -> None:
        # the base is placed by its own policy and carbon: in Germany as well as in France
        germany = await Factory(world.sessions).datacenter(country="DE")
        async with base_deployment(
            world, replicas=0, min_replicas=0, max_replicas=1,
            datacenters=[world.datacenter_id, germany],
        ) as asleep:  # fmt: skip
            job = await succeeded(asleep, jurisdictions=["FR"])
            assert (await deployment_of(asleep, job)).sharing == "dedicated"

    async def test_an_organisation_at_its_cap_on_the_base_gives_a_replica_of_its_own(
        self, asleep: Shared
    ) -> None:
        for _ in range(sharing.PER_ORG):  # its shared models its first replica would hold
            await asleep.fine_tuned(asleep.world.tenant.org_id)
        job = await succeeded(asleep, jurisdictions=["FR"])
        assert (await deployment_of(asleep, job)).sharing == "dedicated"

    async def test_a_request_for_the_idle_model_wakes_the_base_started_with_its_adapter(
        self, asleep: Shared
    ) -> None:
        job = await succeeded(asleep, jurisdictions=["FR"])
        deployment = await deployment_of(asleep, job)
        async with asleep.world.sessions.begin() as session:  # unloaded while idle
            await session.execute(
                update(DeploymentRow).where(DeploymentRow.id == deployment.id).values(replicas=0)
            )
        await wait_for_the_model(asleep)  # the server waits on the base and on the model
        async with asleep.world.sessions.begin() as session:
            session.add(DeploymentDemandRow(
                server_id=new_id("srv"), deployment_id=deployment.id, in_flight=0,
                waiting=1, draining=0, updated_at=utcnow(),
            ))  # fmt: skip
        controller = Controller(
            asleep.world.sessions, asleep.world.cluster, master_key=KEY,
            issuer=Issuer(asleep.world.sessions, KEY),
            engine=EngineDefaults(threads=1, bind_host=None),
        )  # fmt: skip
        controller.deployments = asleep.reconciler
        await controller.wake_from_zero()
        # one engine started, with the adapter: not one without it, then another
        [started] = started_for(asleep, asleep.base_deployment)
        [replica] = await asleep.replicas()
        assert replica.id == started
        assert [e["model"] for e in replica.adapters] == [job.result_model_id]
