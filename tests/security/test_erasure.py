"""Crypto-erasure of an organisation stops everything its keys protected: its fine-tuned
models stop being served at once and can never be deployed again, their deployments are
deleted (the controller stops their replicas, whose supervisors delete the decrypted
adapter from the node), and its fine-tuning jobs are cancelled and its batches fail."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.jobs import BatchRow
from souverain.db.tables import DeploymentRow, ModelAdapterRow, ModelRow, utcnow
from tests.conftest import Platform, wait_until
from tests.security.helpers import assert_openai_error, chat_body

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


async def fine_tuned_model(platform: Platform, org_id: str) -> tuple[str, str, str]:
    """A model of the organisation served with a (sealed) adapter, as a fine-tuning job
    leaves it: (model name, model id, its base model's name)."""
    dc = await platform.factory.datacenter("fr-test", country="FR")
    names = []
    for owner in (None, org_id):
        replica = new_id("rep")
        served, _ = await platform.factory.served_model(
            url=f"{platform.stand_in_url}/r/{replica}", datacenter_id=dc, replica_id=replica,
            owner_org_id=owner,
        )  # fmt: skip
        names.append(served)
    base, name = names
    async with platform.sessions.begin() as session:
        base_id = (
            await session.execute(select(ModelRow.id).where(ModelRow.name == base))
        ).scalar_one()
        model_id = (
            await session.execute(select(ModelRow.id).where(ModelRow.name == name))
        ).scalar_one()
        await session.execute(
            update(ModelRow).where(ModelRow.id == model_id).values(base_model_id=base_id)
        )
        session.add(ModelAdapterRow(
            model_id=model_id, org_id=org_id, format="gguf-lora", store_uri="file:///nowhere",
            object_key="adapter", object_id=f"{new_id('ftjob')}/adapter.gguf", wrapped_key="00",
            sha256="0" * 64, size_bytes=1, datacenter_id=dc,
        ))  # fmt: skip
    return name, model_id, base


async def queued_job(client: httpx.AsyncClient, model: str) -> str:
    uploaded = await client.post(
        "/v1/files",
        files={"file": ("t.jsonl", io.BytesIO(json.dumps(CHAT).encode() + b"\n"))},
        data={"purpose": "fine-tune"},
    )
    assert uploaded.status_code == 200, uploaded.text
    created = await client.post(
        "/v1/fine_tuning/jobs", json={"model": model, "training_file": uploaded.json()["id"]}
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


class TestCryptoErasure:
    async def test_fine_tuned_models_stop_being_served_and_cannot_be_deployed_again(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
        name, model_id, base = await fine_tuned_model(platform, tenant.org_id)
        async with platform.client(key) as client:
            await wait_until(lambda: _status(client, name, 200), timeout_s=10)  # served before
            job_id = await queued_job(client, base)
            erased = await client.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            assert erased.status_code == 200, erased.text
            await wait_until(lambda: _status(client, name, 404), timeout_s=5)
            refused = await client.post("/v1/chat/completions", json=chat_body(name))
            listed = (await client.get("/v1/models")).json()["data"]
            deployed = await client.post("/api/deployments", json={
                "name": "again", "model": model_id, "org": tenant.org_name})  # fmt: skip
            job = (await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
        assert_openai_error(refused, 404, "model_not_found")
        assert name not in {m["id"] for m in listed}
        assert_openai_error(deployed, 410)
        assert erased.json()["models"] == 1 and erased.json()["deployments"] == 1
        async with platform.sessions() as session:
            deployments = list(
                (
                    await session.execute(
                        select(DeploymentRow).where(DeploymentRow.model_id == model_id)
                    )
                ).scalars()
            )
        assert deployments and all(d.deleted and d.replicas == 0 for d in deployments)
        assert job["status"] == "cancelled" and job["error"]["code"] == "keys_erased"


async def _status(client: httpx.AsyncClient, model: str, status: int) -> bool:
    answer = await client.post("/v1/chat/completions", json=chat_body(model))
    return answer.status_code == status


class TestErasureStopsBatches:
    async def test_a_running_batch_fails_at_once_and_its_runner_lets_it_go(
        self, platform: Platform
    ) -> None:
        """A batch whose results could never be sealed or read again is not left to be
        claimed for ever: it fails with the reason, and the lease on it is gone."""
        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
        model = await platform.served_model()
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": chat_body(model)}  # fmt: skip
        async with platform.client(key) as client:
            uploaded = await client.post(
                "/v1/files", files={"file": ("b.jsonl", io.BytesIO(json.dumps(line).encode()))},
                data={"purpose": "batch"},
            )  # fmt: skip
            assert uploaded.status_code == 200, uploaded.text
            created = await client.post("/v1/batches", json={
                "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})  # fmt: skip
            assert created.status_code == 200, created.text
            batch_id = created.json()["id"]
            async with platform.sessions.begin() as session:  # held by a runner, mid-way
                await session.execute(
                    update(BatchRow).where(BatchRow.id == batch_id).values(
                        status="in_progress", lock_token="a-runner", lock_expires_at=utcnow()
                        + timedelta(minutes=5))
                )  # fmt: skip
            erased = await client.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            assert erased.status_code == 200, erased.text
            batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        assert erased.json()["batches"] == 1
        assert batch["status"] == "failed"
        assert batch["errors"]["data"][0]["code"] == "keys_erased"
        async with platform.sessions() as session:
            row = await session.get(BatchRow, batch_id)
        assert row is not None and row.lock_token is None
