"""Who reads what inside an organisation: one rule for files, batches and their outputs,
fine-tuning and evaluation jobs (core/access.py, docs/architecture.md "Who sees what").

A member's files, batches and jobs are seen by that member and by the organisation's
managers (owners, admins) only; another member, a viewer or an auditor gets 404 as for
an id that does not exist, exactly like another tenant; an operator never reads a
tenant's data. Lists agree with lookups by id.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import httpx
import pytest

from souverain.core.roles import Role
from souverain.db.jobs import FineTuningJobRow
from souverain.testing.factories import unique
from tests.conftest import Platform, wait_until
from tests.security.helpers import assert_openai_error

ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN, "author": Role.MEMBER,
         "colleague": Role.MEMBER, "viewer": Role.VIEWER, "auditor": Role.AUDITOR}  # fmt: skip
READERS = {"author", "owner", "admin"}


@dataclass
class Office:
    """One organisation with a key per person, an operator key, and what the author made."""

    keys: dict[str, str]
    file_id: str
    batch_id: str
    output_file_id: str  # the batch's answers: a file of the author's too
    job_id: str


def batch_line(model: str) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "quarterly figures"}]}
    line = {"custom_id": "l1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


@pytest.fixture(scope="module")
async def office(platform: Platform) -> Office:
    tenant = await platform.factory.tenant(roles=dict(ROLES))
    keys = {name: (await platform.factory.member_key(tenant, name, role)).key
            for name, role in ROLES.items()}  # fmt: skip
    keys["operator"] = await platform.operator_key()
    model = await platform.served_model()
    async with platform.client(keys["author"]) as client:
        uploaded = await client.post(
            "/v1/files", data={"purpose": "batch"},
            files={"file": ("mine.jsonl", io.BytesIO(batch_line(model)))},
        )  # fmt: skip
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        created = await client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                 "completion_window": "24h"},
        )  # fmt: skip
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]

        async def done() -> bool:
            return (await client.get(f"/v1/batches/{batch_id}")).json()["status"] == "completed"

        await wait_until(done, timeout_s=120)
        output_file_id = (await client.get(f"/v1/batches/{batch_id}")).json()["output_file_id"]
    author = (await platform.factory.member_key(tenant, "author", Role.MEMBER)).id
    job_id = await _job_of(platform, tenant.org_id, author)
    return Office(keys, file_id, batch_id, output_file_id, job_id)


async def _job_of(platform: Platform, org_id: str, key_id: str) -> str:
    """A fine-tuning job row made by `key_id` (the rule is what is tested, not training)."""
    job_id = unique("ftjob")
    async with platform.sessions.begin() as session:
        session.add(
            FineTuningJobRow(
                id=job_id, org_id=org_id, project_id=None, key_id=key_id, shape="openai",
                method="supervised", base_model_id="mdl", base_model="m",
                training_files=[{"file_id": "file-x", "weight": 1.0}], hyperparameters={},
                resolved={}, seed=1, cpus=1.0, status="queued", wrapped_key="00",
            )
        )  # fmt: skip
    return job_id


async def _get(platform: Platform, key: str, path: str) -> httpx.Response:
    async with platform.client(key) as client:
        return await client.get(path)


PEOPLE = [*ROLES, "operator"]


class TestWhoReadsContent:
    @pytest.mark.parametrize("person", PEOPLE)
    @pytest.mark.parametrize("which", ["input", "output"])
    async def test_a_members_files_and_their_bytes(
        self, office: Office, platform: Platform, person: str, which: str
    ) -> None:
        """Training data, batch inputs and batch outputs alike."""
        key = office.keys[person]
        file_id = office.file_id if which == "input" else office.output_file_id
        for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
            response = await _get(platform, key, path)
            if person in READERS:
                assert response.status_code == 200, (person, path, response.text[:200])
            else:
                assert_openai_error(response, 404, "not_found")
        listed = await _get(platform, key, "/v1/files?limit=100")
        ids = {f["id"] for f in listed.json().get("data", [])}
        assert (file_id in ids) == (person in READERS), person

    @pytest.mark.parametrize("person", PEOPLE)
    async def test_a_members_batch(self, office: Office, platform: Platform, person: str) -> None:
        key = office.keys[person]
        for path in (f"/v1/batches/{office.batch_id}", f"/v1/batch/jobs/{office.batch_id}"):
            response = await _get(platform, key, path)
            if person in READERS:
                assert response.status_code == 200, (person, path, response.text[:200])
            elif person in ("viewer", "auditor"):
                assert_openai_error(response, 403)  # batches need the inference scope at all
            else:
                assert_openai_error(response, 404, "not_found")
        if person in READERS | {"colleague", "operator"}:
            listed = (await _get(platform, key, "/v1/batches?limit=100")).json()
            assert (office.batch_id in {b["id"] for b in listed["data"]}) == (person in READERS)

    @pytest.mark.parametrize("person", PEOPLE)
    async def test_a_members_fine_tuning_job(
        self, office: Office, platform: Platform, person: str
    ) -> None:
        """Jobs are work on the fleet: operators see them too, other members do not."""
        key = office.keys[person]
        readers = READERS | {"operator"}
        response = await _get(platform, key, f"/v1/fine_tuning/jobs/{office.job_id}")
        if person in readers:
            assert response.status_code == 200, (person, response.text[:200])
        else:
            assert_openai_error(response, 404, "not_found")
        listed = (await _get(platform, key, "/v1/fine_tuning/jobs?limit=100")).json()
        assert (office.job_id in {j["id"] for j in listed["data"]}) == (person in readers)

    async def test_a_cursor_naming_anothers_object_is_not_found(
        self, office: Office, platform: Platform
    ) -> None:
        """Paging after an id is a lookup too: it may not tell that the id exists."""
        response = await _get(
            platform, office.keys["colleague"], f"/v1/files?after={office.file_id}"
        )
        assert_openai_error(response, 404, "not_found")
        response = await _get(platform, office.keys["owner"], f"/v1/files?after={office.file_id}")
        assert response.status_code == 200
