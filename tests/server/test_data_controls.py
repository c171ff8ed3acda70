"""Zero data retention and the data controls: who may set them, what a zero-retention
tenant is refused (files, batches, fine-tuning: 403 `zero_data_retention`, nothing stored),
and what still works (chat keeps nothing). Clients are the official SDKs."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import openai
import pytest
from sqlalchemy import func, select

from souverain.core.roles import Role
from souverain.db.audit import AuditEventRow
from souverain.db.jobs import BatchRow, FileRow
from souverain.db.tables import ProjectRow, utcnow
from souverain.testing.factories import Tenant
from tests.conftest import Platform, wait_until

LINE = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip


def sdk(platform: Platform, key: str) -> openai.AsyncOpenAI:
    # a request the server leaves unanswered fails here in 60 s (as the platform's own client
    # does: past SQLite's 30 s wait for a lock), not the SDK's 600 s
    return openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)


async def _stored(platform: Platform, org_id: str) -> tuple[int, int]:
    async with platform.sessions() as session:
        files = select(func.count()).select_from(FileRow).where(FileRow.org_id == org_id)
        batches = select(func.count()).select_from(BatchRow).where(BatchRow.org_id == org_id)
        return (await session.execute(files)).scalar_one(), (
            await session.execute(batches)
        ).scalar_one()


async def _refused_everywhere(platform: Platform, tenant: Tenant, key: str) -> None:
    client = sdk(platform, key)
    with pytest.raises(openai.PermissionDeniedError) as upload:
        await client.files.create(file=("a.jsonl", io.BytesIO(json.dumps(LINE).encode())),
                                  purpose="batch")  # fmt: skip
    assert upload.value.code == "zero_data_retention"
    assert "zero_retention" in upload.value.message
    with pytest.raises(openai.PermissionDeniedError) as batch:
        await client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions",
                                    completion_window="24h")  # fmt: skip
    assert batch.value.code == "zero_data_retention"
    with pytest.raises(openai.PermissionDeniedError) as job:
        await client.fine_tuning.jobs.create(model="m", training_file="file-x")
    assert job.value.code == "zero_data_retention"
    inline = {"endpoint": "/v1/chat/completions", "model": "m",
              "requests": [{"custom_id": "1", "body": {"messages": [{"role": "user", "content": "x"}]}}]}  # fmt: skip
    async with platform.client(key) as http:
        answer = await http.post("/v1/batch/jobs", json=inline)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "zero_data_retention"
    assert await _stored(platform, tenant.org_id) == (0, 0)


class TestZeroRetention:
    async def test_the_organisations_switch_refuses_what_would_store_content(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        model = await platform.served_model(owner_org_id=tenant.org_id)
        async with platform.client(owner.key) as client:
            answer = await client.put(
                f"/api/orgs/{tenant.org_name}/data-controls", json={"zero_retention": True}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["zero_retention_effective"] is True
        await _wait_refused(platform, owner.key)
        await _refused_everywhere(platform, tenant, owner.key)
        chat = await sdk(platform, owner.key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}]
        )
        assert chat.choices[0].message.content  # live requests keep working
        async with platform.sessions() as session:
            query = select(AuditEventRow.details).where(
                AuditEventRow.org_id == tenant.org_id, AuditEventRow.action == "data_controls.set"
            )
            assert '"zero_retention":true' in (await session.execute(query)).scalar_one()

    async def test_the_operators_ceiling_cannot_be_turned_off_by_the_tenant(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        org = tenant.org_name
        async with platform.client(await platform.operator_key()) as op:
            ceiling = await op.put(f"/api/orgs/{org}/policy", json={"zero_retention": True})
            assert ceiling.status_code == 200, ceiling.text
        async with platform.client(owner.key) as client:
            off = await client.put(f"/api/orgs/{org}/data-controls", json={"zero_retention": False})
            assert off.status_code == 200
            assert off.json()["zero_retention_effective"] is True
            project = await client.put(
                f"/api/orgs/{org}/projects/default/policy", json={"zero_retention": False}
            )
            assert project.status_code == 403
            assert "zero_retention: the ceiling requires it" in project.json()["error"]["message"]
        await _wait_refused(platform, owner.key)
        await _refused_everywhere(platform, tenant, owner.key)

    async def test_a_project_policy_turns_it_on_for_its_project(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ad": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ad", Role.ADMIN)
        async with platform.client(admin.key) as client:
            answer = await client.put(
                f"/api/orgs/{tenant.org_name}/projects/default/policy",
                json={"zero_retention": True},
            )
            assert answer.status_code == 200, answer.text
        await _wait_refused(platform, admin.key)
        await _refused_everywhere(platform, tenant, admin.key)

    async def test_it_cannot_start_under_a_batch_that_stores_results(
        self, platform: Platform
    ) -> None:
        """A batch that has not ended writes its results: turning zero retention on under it
        is refused (409, naming it) by the tenant's switch, the ceiling and a project policy,
        and nothing changes."""
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        org = tenant.org_name
        async with platform.sessions.begin() as session:
            default = select(ProjectRow.id).where(
                ProjectRow.org_id == tenant.org_id, ProjectRow.name == "default"
            )
            session.add(
                BatchRow(
                    id="batch_zdr_running", org_id=tenant.org_id, key_id=owner.id,
                    project_id=(await session.execute(default)).scalar_one(),
                    shape="openai", endpoint="/v1/chat/completions", input_file_ids=[],
                    status="in_progress", wrapped_key="00", deadline=utcnow() + timedelta(hours=1),
                    lock_token="held", lock_expires_at=utcnow() + timedelta(hours=1),
                )
            )  # fmt: skip
        async with platform.client(owner.key) as client:
            switch = await client.put(
                f"/api/orgs/{org}/data-controls", json={"zero_retention": True}
            )
            project = await client.put(
                f"/api/orgs/{org}/projects/default/policy", json={"zero_retention": True}
            )
            view = (await client.get(f"/api/orgs/{org}/data-controls")).json()
        async with platform.client(await platform.operator_key()) as op:
            ceiling = await op.put(f"/api/orgs/{org}/policy", json={"zero_retention": True})
        for refused in (switch, ceiling, project):
            assert refused.status_code == 409, refused.text
            assert "batch_zdr_running" in refused.json()["error"]["message"]
        assert view["zero_retention_effective"] is False


async def _wait_refused(platform: Platform, key: str) -> None:
    """Servers learn a policy change within their refresh (0.2 s in the suite); until then
    this upload is refused for its bad line, so it stores nothing either way."""

    async def refused() -> bool:
        try:
            await sdk(platform, key).files.create(
                file=("a.jsonl", io.BytesIO(b"not json\n")), purpose="batch"
            )
        except openai.PermissionDeniedError:
            return True
        except openai.BadRequestError:
            return False
        raise AssertionError("a bad batch file was accepted")

    await wait_until(refused, timeout_s=5)


class TestDataControlsAccess:
    async def test_owners_set_members_read_other_tenants_see_nothing(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "mem": Role.MEMBER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        member = await platform.factory.member_key(tenant, "mem", Role.MEMBER)
        stranger = await platform.factory.tenant(roles={"own": Role.OWNER})
        outsider = await platform.factory.member_key(stranger, "own", Role.OWNER)
        path = f"/api/orgs/{tenant.org_name}/data-controls"
        body = {"retention": {"files_days": 30, "usage_days": 400}}
        async with platform.client(owner.key) as client:
            set_ = await client.put(path, json=body)
            assert set_.status_code == 200, set_.text
            assert set_.json()["retention"]["files_days"] == 30
            too_long = await client.put(path, json={"retention": {"audit_days": 0}})
            assert too_long.status_code == 422
            assert too_long.json()["error"]["param"] == "retention.audit_days"
        async with platform.client(member.key) as client:
            assert (await client.get(path)).json()["retention"]["usage_days"] == 400
            assert (await client.put(path, json=body)).status_code == 403
        async with platform.client(outsider.key) as client:
            assert (await client.get(path)).status_code == 404
            assert (await client.put(path, json=body)).status_code == 404
