"""A fine-tuning job on a base scaled to zero: its model is shared (no engine of its own),
and the first request for it, sent through the official SDK as soon as the job says
`succeeded`, waits while the base wakes with the adapter and is then answered. The real
fine-tuning and deployment reconcilers on the live server's database, the in-memory
cluster in place of Ray, the stand-in engine serving the base's replica (what its node
reports is written as the replica observer writes it)."""

from __future__ import annotations

import asyncio

import openai
from sqlalchemy import update

from souverain.core.roles import Role
from souverain.db.tables import ReplicaRow, utcnow
from souverain.jobs.deployments.observer import observed_fields
from tests.conftest import Platform, usage_records, wait_until
from tests.gateway.test_scale_to_zero import ask, waiting_seen
from tests.jobs.conftest import new_world
from tests.jobs.test_shared_adapters import Shared
from tests.jobs.test_succeeded_job_serving import (
    base_deployment,
    deployment_of,
    started_for,
    succeeded,
)


async def woken(platform: Platform, base: Shared) -> str:
    """The controller's round for the base: it scales from zero and places a replica with
    the adapter; its node reports it ready, served here by the stand-in. Its id."""
    await base.reconciler.reconcile(base.base_deployment, await base.world.placer())
    [replica] = await base.replicas()
    status = base.world.cluster.replica_status(replica.actor_name)
    fields = observed_fields(replica, status) | {
        "url": f"{platform.stand_in_url}/r/{replica.id}", "updated_at": utcnow(),
    }  # fmt: skip
    async with platform.sessions.begin() as session:
        await session.execute(update(ReplicaRow).where(ReplicaRow.id == replica.id).values(fields))
    return replica.id


class TestSucceededJobOnABaseAtZero:
    async def test_its_first_request_wakes_the_base_and_is_answered(
        self, platform: Platform
    ) -> None:
        world = await new_world(platform.sessions)
        async with base_deployment(world, replicas=0, min_replicas=0, max_replicas=1) as base:
            job = await succeeded(base)
            deployment = await deployment_of(base, job)
            assert deployment.sharing == "shared", "a new engine would start for the model"
            key = await platform.factory.new_member(world.tenant.org_id, Role.MEMBER)
            sdk = openai.AsyncOpenAI(
                base_url=f"{platform.url}/v1", api_key=key.key, max_retries=0, timeout=60
            )

            async def listed() -> bool:
                return job.fine_tuned_model in {m.id async for m in sdk.models.list()}

            await wait_until(listed, timeout_s=10)
            request = ask(sdk, str(job.fine_tuned_model))
            await wait_until(lambda: waiting_seen(platform, base.base_deployment), timeout_s=10)
            assert not request.done()  # it waits for the base, not "no ready replica"

            replica_id = await woken(platform, base)
            answer = await asyncio.wait_for(request, 30)
            assert answer.choices[0].message.content  # type: ignore[attr-defined]
            [record] = await usage_records(platform.sessions, 1, model=job.fine_tuned_model)
            assert (record.deployment_id, record.replica_id) == (deployment.id, replica_id)
            assert started_for(base, deployment.id) == []  # no engine of its own
