"""The controller puts fine-tuned models' adapters on shared replicas of their base: only
where each owner's placement policy allows, new adapters loaded into the running replicas
(or, for an engine that loads them at start only, by a rolling replacement that keeps
every model answering), an unloaded adapter taken off the same way, and a shared
deployment that says where it is served. The real reconciler on the real database, the
in-memory cluster in place of Ray (its replicas report every adapter loaded)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime

import pytest
from sqlalchemy import delete, select, update

from souverain.catalog.routes import load_ready_routes
from souverain.core.fleet import ADAPTER_UNAVAILABLE, AdapterState
from souverain.core.ids import new_id
from souverain.db.tables import (
    DeploymentRow,
    ModelAdapterRow,
    ModelArtifactRow,
    ModelRow,
    ReplicaRow,
    utcnow,
)
from souverain.files import service as files
from souverain.installation.authority import Issuer
from souverain.jobs.deployments.observer import observed_fields
from souverain.jobs.deployments.reconciler import DeploymentReconciler, EngineDefaults
from souverain.jobs.energy import EnergyAccountant
from souverain.node import hosted_adapters
from souverain.testing.factories import Factory
from tests.jobs.conftest import KEY, World


@dataclass
class Shared:
    """A platform deployment of a llama.cpp base in two datacenters (one replica in each),
    and the fine-tuned models of two organisations on that base."""

    world: World
    reconciler: DeploymentReconciler
    base_deployment: str
    paris: str
    berlin: str
    made: list[str]

    async def fine_tuned(self, org_id: str, *, datacenters: list[str] | None = None) -> str:
        """A fine-tuned model of `org_id` with its sealed adapter and a shared deployment
        (its placement constraints: `datacenters`); returns the model id."""
        model_id, object_id = new_id("mdl"), f"{new_id('ftjob')}/adapter.gguf"
        async with self.world.sessions.begin() as session:
            base = await session.get(DeploymentRow, self.base_deployment)
            assert base is not None
            kek = await files.organisation_kek(session, master_key=KEY, org_id=org_id, create=True)
            _, wrapped = files.new_data_key(kek, object_id.split("/", 1)[0])
            session.add(ModelRow(
                id=model_id, name=new_id("ft"), owner_org_id=org_id, engine="llamacpp",
                capabilities=["chat"], context_length=4096, description="",
                base_model_id=base.model_id,
            ))  # fmt: skip
            await session.flush()
            session.add(ModelAdapterRow(
                model_id=model_id, org_id=org_id, format="gguf-lora", store_uri="file:///x",
                object_key="adapter", object_id=object_id, wrapped_key=wrapped,
                sha256="0" * 64, size_bytes=1, datacenter_id=self.paris,
            ))  # fmt: skip
            deployment_id = new_id("dep")
            session.add(DeploymentRow(
                id=deployment_id, name=deployment_id, model_id=model_id, org_id=org_id,
                engine="llamacpp", replicas=1, datacenters=datacenters or [], cpus=1, gpus=0,
                engine_args={}, status="pending", status_reason="", sharing="shared",
            ))  # fmt: skip
        self.made.append(deployment_id)
        return model_id

    async def round(self) -> None:
        """The base deployment reconciled; the replicas it placed report what their nodes
        did (the observer's write; the in-memory cluster's engines answer in clear, which
        the reconciler would drain, so the URL is the HTTPS one a real engine reports);
        then every shared deployment reconciled."""
        await self.reconciler.reconcile(self.base_deployment, await self.world.placer())
        async with self.world.sessions.begin() as session:
            for replica in await self.replicas(session):
                status = self.world.cluster.replica_status(replica.actor_name)
                for name, value in observed_fields(replica, status).items():
                    setattr(replica, name, value)
                if replica.url:
                    replica.url = replica.url.replace("http://", "https://")
        for deployment_id in self.made:
            await self.reconciler.reconcile(deployment_id, await self.world.placer())

    async def replicas(self, session: object = None) -> list[ReplicaRow]:
        query = select(ReplicaRow).where(ReplicaRow.deployment_id == self.base_deployment)
        if session is not None:
            return list((await session.execute(query)).scalars())  # type: ignore[attr-defined]
        async with self.world.sessions() as fresh:
            return list((await fresh.execute(query)).scalars())

    async def held(self) -> dict[str, list[tuple[str, ...]]]:
        """Datacenter -> the adapter sets its replicas hold."""
        found: dict[str, list[tuple[str, ...]]] = {self.paris: [], self.berlin: []}
        for replica in await self.replicas():
            found[replica.datacenter_id].append(tuple(e["model"] for e in replica.adapters))
        return found

    async def deployment(self, deployment_id: str) -> DeploymentRow:
        async with self.world.sessions() as session:
            row = await session.get(DeploymentRow, deployment_id)
            assert row is not None
            return row


@pytest.fixture
async def shared(world: World) -> AsyncIterator[Shared]:
    async with shared_base(world) as found:
        yield found


@contextlib.asynccontextmanager
async def shared_base(
    world: World, clock: Callable[[], datetime] = utcnow
) -> AsyncIterator[Shared]:
    """The base deployment of `Shared`, reconciled on `clock`; removed afterwards with the
    shared deployments made on it."""
    factory = Factory(world.sessions)
    paris, berlin = world.datacenter_id, await factory.datacenter(country="DE")
    world.cluster.add_node(new_id("node"), berlin)
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
            engine="llamacpp", replicas=2, datacenters=[paris, berlin], cpus=1, gpus=0,
            engine_args={}, status="pending", status_reason="", strategy="spread",
        ))  # fmt: skip
    reconciler = DeploymentReconciler(
        world.sessions, world.cluster, master_key=KEY,
        engine=EngineDefaults(threads=1, bind_host=None),
        energy=EnergyAccountant(world.sessions, interval_s=30.0, prompt_weight=1.0,
                                completion_weight=3.0),
        issuer=Issuer(world.sessions, KEY), clock=clock,
    )  # fmt: skip
    found = Shared(world, reconciler, base_deployment, paris, berlin, [])
    yield found
    async with world.sessions.begin() as session:
        ids = [base_deployment, *found.made]
        await session.execute(delete(ReplicaRow).where(ReplicaRow.deployment_id.in_(ids)))
        await session.execute(delete(DeploymentRow).where(DeploymentRow.id.in_(ids)))


class TestPlacement:
    async def test_an_adapter_goes_only_where_its_owners_policy_allows(
        self, shared: Shared
    ) -> None:
        other = await Factory(shared.world.sessions).tenant()
        await shared.round()
        assert await shared.held() == {shared.paris: [()], shared.berlin: [()]}
        in_paris_only = await shared.fine_tuned(shared.world.tenant.org_id,
                                                datacenters=[shared.paris])  # fmt: skip
        anywhere = await shared.fine_tuned(other.org_id)
        for _ in range(3):
            await shared.round()
        held = await shared.held()
        assert held[shared.paris] == [tuple(sorted((in_paris_only, anywhere)))]
        assert held[shared.berlin] == [(anywhere,)], "an adapter reached an excluded datacenter"
        for deployment_id in shared.made:
            row = await shared.deployment(deployment_id)
            assert row.status == "ready", row.status_reason
            assert "shared replica" in row.status_reason
        async with shared.world.sessions() as session:
            query = select(ReplicaRow).where(ReplicaRow.deployment_id.in_(shared.made))
            assert list((await session.execute(query)).scalars()) == []  # none of their own

    async def test_narrowed_constraints_take_the_adapter_off_an_excluded_site_at_once(
        self, shared: Shared
    ) -> None:
        model_id = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        berlin = next(r.id for r in await shared.replicas() if r.datacenter_id == shared.berlin)
        assert await self.served_at(shared, model_id) == {shared.paris, shared.berlin}
        async with shared.world.sessions.begin() as session:  # its owner narrows it to Paris
            await session.execute(update(DeploymentRow).where(
                DeploymentRow.id == shared.made[0]).values(datacenters=[shared.paris]))  # fmt: skip
        # before the controller runs: the gateway already sends it to Paris only
        assert await self.served_at(shared, model_id) == {shared.paris}
        await shared.reconciler.reconcile(shared.base_deployment, await shared.world.placer())
        # the Berlin replica held it: unloaded now, while the replica serves on
        assert (await shared.held())[shared.berlin] == [()]
        assert berlin in {r.id for r in await shared.replicas()}

    async def test_an_excluded_adapter_in_use_stops_its_replica_at_once(
        self, shared: Shared
    ) -> None:
        model_id = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        berlin = next(r.id for r in await shared.replicas() if r.datacenter_id == shared.berlin)
        shared.world.cluster.busy_adapters.add(model_id)  # a request applies it right now
        async with shared.world.sessions.begin() as session:
            await session.execute(update(DeploymentRow).where(
                DeploymentRow.id == shared.made[0]).values(datacenters=[shared.paris]))  # fmt: skip
        await shared.reconciler.reconcile(shared.base_deployment, await shared.world.placer())
        # it could not be unloaded: stopped now, not once its replacement is ready
        assert berlin not in {r.id for r in await shared.replicas()}

    @staticmethod
    async def served_at(shared: Shared, model_id: str) -> set[str]:
        async with shared.world.sessions() as session:
            routes = await load_ready_routes(session)
        return {r.datacenter_id for r in routes if r.model_id == model_id}

    async def test_two_shared_deployments_of_one_model_load_it_once(self, shared: Shared) -> None:
        model_id = await shared.fine_tuned(shared.world.tenant.org_id)
        twin = new_id("dep")
        async with shared.world.sessions.begin() as session:
            first = await session.get(DeploymentRow, shared.made[0])
            assert first is not None
            session.add(DeploymentRow(
                id=twin, name=twin, model_id=model_id, org_id=first.org_id, engine="llamacpp",
                replicas=1, datacenters=[], cpus=1, gpus=0, engine_args={}, status="pending",
                status_reason="", sharing="shared",
            ))  # fmt: skip
        shared.made.append(twin)
        for _ in range(3):
            await shared.round()
        assert await shared.held() == {shared.paris: [(model_id,)], shared.berlin: [(model_id,)]}
        async with shared.world.sessions() as session:
            routes = [r for r in await load_ready_routes(session) if r.model_id == model_id]
        assert {r.deployment_id for r in routes} == {shared.made[0]}  # the oldest owns it
        assert {r.lora_id for r in routes} == {0}

    async def test_the_route_carries_the_number_the_node_reported(self, shared: Shared) -> None:
        first = await shared.fine_tuned(shared.world.tenant.org_id)
        second = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        async with shared.world.sessions.begin() as session:  # a run that numbered otherwise
            for replica in await shared.replicas(session):
                replica.adapters = [{"model": first, "error": "", "lora": 1},
                                    {"model": second, "error": "", "lora": None}]  # fmt: skip
        async with shared.world.sessions() as session:
            routes = [r for r in await load_ready_routes(session) if r.model_id in (first, second)]
        assert routes and {(r.model_id, r.lora_id) for r in routes} == {(first, 1)}


class TestRuntimeLoad:
    async def test_a_new_shared_model_is_loaded_into_the_running_replicas(
        self, shared: Shared
    ) -> None:
        first = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        before = {r.id for r in await shared.replicas()}
        started = len(shared.world.cluster.replica_specs)
        second = await shared.fine_tuned(shared.world.tenant.org_id)
        await shared.round()
        # no replica started or stopped: both running ones took the new adapter
        assert {r.id for r in await shared.replicas()} == before
        assert len(shared.world.cluster.replica_specs) == started
        both = tuple(sorted((first, second)))
        assert await shared.held() == {shared.paris: [both], shared.berlin: [both]}
        asked = [models for _, models in shared.world.cluster.changes]
        assert asked == [both, both]
        # the route carries the id the running engine gave it (the next one)
        async with shared.world.sessions() as session:
            routes = await load_ready_routes(session)
        assert {r.lora_id for r in routes if r.model_id == second} == {1}
        assert {r.lora_id for r in routes if r.model_id == first} == {0}
        await shared.round()
        assert (await shared.deployment(shared.made[1])).status == "ready"

    async def test_an_erased_adapter_is_unloaded_while_the_replica_serves(
        self, shared: Shared
    ) -> None:
        kept = await shared.fine_tuned(shared.world.tenant.org_id)
        other = await Factory(shared.world.sessions).tenant()
        erased = await shared.fine_tuned(other.org_id)
        for _ in range(3):
            await shared.round()
        before = {r.id for r in await shared.replicas()}
        async with shared.world.sessions.begin() as session:  # its organisation's keys erased
            await session.execute(delete(ModelAdapterRow).where(ModelAdapterRow.model_id == erased))
        await shared.reconciler.reconcile(shared.base_deployment, await shared.world.placer())
        assert {r.id for r in await shared.replicas()} == before
        assert await shared.held() == {shared.paris: [(kept,)], shared.berlin: [(kept,)]}

    async def test_an_adapter_its_store_could_not_serve_is_asked_for_again_next_round(
        self, shared: Shared
    ) -> None:
        model_id = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        cluster, asked = shared.world.cluster, len(shared.world.cluster.changes)
        for name, status in list(cluster.replicas.items()):  # a store error for a moment
            unavailable = tuple(
                AdapterState(s.model_id, ADAPTER_UNAVAILABLE) for s in status.adapters
            )
            cluster.replicas[name] = replace(
                status, adapters=unavailable, version=status.version + 1
            )
        await shared.round()  # the nodes' refusal observed
        assert (await shared.deployment(shared.made[0])).status == "failed"
        await shared.round()  # the same set sent again: the nodes try it again
        assert [models for _, models in cluster.changes[asked:]] == [(model_id,), (model_id,)]
        for replica in await shared.replicas():
            assert [(e["model"], e["error"]) for e in replica.adapters] == [(model_id, "")]
        await shared.round()
        assert (await shared.deployment(shared.made[0])).status == "ready"


class TestRollingReplacement:
    async def test_the_old_replica_serves_until_one_with_the_new_set_is_ready(
        self, shared: Shared
    ) -> None:
        await shared.round()
        before = {r.id for r in await shared.replicas()}
        # engines that load adapters at start only (built without souverain's patch)
        shared.world.cluster.start_only |= {r.actor_name for r in await shared.replicas()}
        await shared.fine_tuned(shared.world.tenant.org_id)
        placer = await shared.world.placer()
        await shared.reconciler.reconcile(shared.base_deployment, placer)
        # the new replicas are placed, not ready yet: the old ones keep serving
        async with shared.world.sessions.begin() as session:
            new = [r for r in await shared.replicas(session) if r.id not in before]
            for replica in new:
                replica.state = "starting"
        assert len(new) == 2
        await shared.reconciler.reconcile(shared.base_deployment, await shared.world.placer())
        assert before <= {r.id for r in await shared.replicas()}
        await shared.round()  # the observer: the new ones are ready
        await shared.round()  # and now the old ones stop
        ids = {r.id for r in await shared.replicas()}
        assert ids.isdisjoint(before) and len(ids) == 2

    async def test_a_stopped_shared_deployment_is_unloaded(self, shared: Shared) -> None:
        model_id = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        assert (await shared.held())[shared.paris] == [(model_id,)]
        async with shared.world.sessions.begin() as session:
            await session.execute(
                update(DeploymentRow).where(DeploymentRow.id == shared.made[0]).values(replicas=0)
            )
        for _ in range(3):
            await shared.round()
        assert await shared.held() == {shared.paris: [()], shared.berlin: [()]}


class TestRefusedAdapter:
    async def test_a_node_that_refuses_an_adapter_fails_its_deployment_only(
        self, shared: Shared
    ) -> None:
        good = await shared.fine_tuned(shared.world.tenant.org_id)
        bad = await shared.fine_tuned(shared.world.tenant.org_id)
        for _ in range(3):
            await shared.round()
        async with shared.world.sessions.begin() as session:  # what a node says of a bad file
            for replica in await shared.replicas(session):
                replica.adapters = [
                    {"model": e["model"], "error": hosted_adapters.UNREADABLE if e["model"] == bad
                     else ""} for e in replica.adapters
                ]  # fmt: skip
        for deployment_id in shared.made:
            await shared.reconciler.reconcile(deployment_id, await shared.world.placer())
        good_row, bad_row = [await shared.deployment(d) for d in shared.made]
        assert good_row.status == "ready"
        assert bad_row.status == "failed" and "checksum" in bad_row.status_reason
        assert good != bad
