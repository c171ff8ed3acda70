"""The typed fine-tuning objects as clients read them: the openai SDK parses every one of
them (jobs, their events and checkpoints, lists), Mistral's shape carries its own fields,
and lists page the same way everywhere (`after` the last id while `has_more`).

Jobs are written straight into the database here: what is tested is what the API shows
of them, not training (tests/cluster and tests/e2e train)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import openai

from souverain.core.roles import Role
from souverain.db.jobs import FineTuningCheckpointRow, FineTuningEventRow, FineTuningJobRow
from souverain.db.tables import utcnow
from souverain.testing.factories import unique
from tests.conftest import Platform

RESOLVED = {"n_epochs": 2, "batch_size": 4, "learning_rate": 4e-4, "max_steps": 30,
            "seq_len": 512, "weight_decay": 0.1, "warmup_fraction": 0.05}  # fmt: skip


async def a_job(
    platform: Platform, org_id: str, key_id: str, *, shape: str = "openai", age_s: int = 0
) -> str:
    job_id = unique("ftjob")
    created = utcnow() - timedelta(seconds=age_s)
    async with platform.sessions.begin() as session:
        session.add(
            FineTuningJobRow(
                id=job_id, org_id=org_id, project_id=None, key_id=key_id, shape=shape,
                method="supervised", base_model_id="mdl", base_model="smollm2",
                training_files=[{"file_id": "file-train", "weight": 1.0}],
                hyperparameters={}, resolved=RESOLVED, seed=7, cpus=1.0, status="running",
                wrapped_key="00", step=10, total_steps=30, trained_tokens=1234,
                created_at=created,
            )
        )  # fmt: skip
        await session.flush()  # the job before what refers to it
        for seq in range(3):
            session.add(
                FineTuningEventRow(
                    id=f"{job_id}-e{seq}", job_id=job_id, seq=seq, level="info",
                    type="metrics", message=f"step {seq}", data={"step": seq},
                )
            )  # fmt: skip
        for step in (10, 20):
            session.add(
                FineTuningCheckpointRow(
                    id=f"{job_id}-c{step}", job_id=job_id, step=step,
                    metrics={"train_loss": 1.5}, store_uri="file:///x", object_key="k",
                    object_id="o", sha256="0" * 64, size_bytes=1,
                )
            )  # fmt: skip
    return job_id


async def owner(platform: Platform) -> tuple[str, str, str]:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    key = await platform.factory.member_key(tenant, "o", Role.OWNER)
    return tenant.org_id, key.id, key.key


def sdk(platform: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)


class TestOpenAIShape:
    async def test_the_sdk_reads_a_job_its_events_and_checkpoints(self, platform: Platform) -> None:
        org_id, key_id, key = await owner(platform)
        job_id = await a_job(platform, org_id, key_id)
        client = sdk(platform, key)
        job = await asyncio.to_thread(client.fine_tuning.jobs.retrieve, job_id)
        assert job.id == job_id and job.status == "running" and job.seed == 7
        assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
        assert job.hyperparameters.learning_rate_multiplier == 2.0  # 4e-4 over LoRA's 2e-4
        assert job.method is not None and job.method.type == "supervised"
        assert job.training_file == "file-train" and job.trained_tokens is None  # not done
        events = await asyncio.to_thread(client.fine_tuning.jobs.list_events, job_id)
        assert [e.message for e in events.data] == ["step 2", "step 1", "step 0"]
        checkpoints = await asyncio.to_thread(client.fine_tuning.jobs.checkpoints.list, job_id)
        assert [c.step_number for c in checkpoints.data] == [20, 10]
        assert checkpoints.data[0].metrics.train_loss == 1.5
        assert checkpoints.data[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-20")

    async def test_every_list_pages_after_the_last_id(self, platform: Platform) -> None:
        org_id, key_id, key = await owner(platform)
        jobs = [await a_job(platform, org_id, key_id, age_s=age) for age in (30, 20, 10)]
        client = sdk(platform, key)
        seen = [job.id for job in client.fine_tuning.jobs.list(limit=1)]  # the SDK pages on
        assert seen == list(reversed(jobs))
        first = await asyncio.to_thread(client.fine_tuning.jobs.list, limit=2)
        assert first.has_more and [j.id for j in first.data] == [jobs[2], jobs[1]]
        rest = await asyncio.to_thread(client.fine_tuning.jobs.list, limit=2, after=jobs[1])
        assert not rest.has_more and [j.id for j in rest.data] == [jobs[0]]
        events = await asyncio.to_thread(client.fine_tuning.jobs.list_events, jobs[0], limit=2)
        assert events.has_more and len(events.data) == 2
        after = await asyncio.to_thread(
            client.fine_tuning.jobs.list_events, jobs[0], limit=2, after=events.data[-1].id
        )
        assert not after.has_more and [e.message for e in after.data] == ["step 0"]

    async def test_limits_out_of_bounds_are_refused_in_the_api_shape(
        self, platform: Platform
    ) -> None:
        _, _, key = await owner(platform)
        async with platform.client(key) as client:
            for path in ("/v1/fine_tuning/jobs?limit=101", "/v1/batches?limit=0",
                         "/v1/files?limit=10001"):  # fmt: skip
                answer = await client.get(path)
                assert answer.status_code == 400, (path, answer.text)
                assert answer.json()["error"]["param"] == "query.limit"


class TestMistralShape:
    async def test_a_mistral_job_carries_its_events_and_checkpoints(
        self, platform: Platform
    ) -> None:
        org_id, key_id, key = await owner(platform)
        job_id = await a_job(platform, org_id, key_id, shape="mistral")
        async with platform.client(key) as client:
            job = (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
            listed = (await client.get("/v1/fine_tuning/jobs", params={"page_size": 5})).json()
        assert job["object"] == "job" and job["status"] == "RUNNING"
        assert job["hyperparameters"]["training_steps"] == 30
        assert [e["name"] for e in job["events"]] == ["step 0", "step 1", "step 2"]
        assert [c["step_number"] for c in job["checkpoints"]] == [20, 10]
        assert job["souverain"]["state"] == "running" and job["souverain"]["step"] == 10
        assert listed["total"] == 1 and listed["data"][0]["id"] == job_id
