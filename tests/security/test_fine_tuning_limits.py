"""What an organisation may start at once holds under concurrency: "at most 4 fine-tuning
jobs not ended" is counted under a lock on the organisation, never checked and then
inserted by two requests side by side (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import io
import json

from souverain.core.ids import new_id
from souverain.core.roles import Role
from tests.conftest import Platform

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


class TestActiveJobs:
    async def test_twelve_concurrent_creations_start_at_most_four_jobs(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
        dc = await platform.factory.datacenter("fr-test", country="FR")
        model, _ = await platform.factory.served_model(
            url=f"{platform.stand_in_url}/r/{new_id('rep')}", datacenter_id=dc,
            owner_org_id=tenant.org_id,
        )  # fmt: skip
        limit = platform.settings.finetune_max_active_jobs
        async with platform.client(key) as client:
            uploaded = await client.post(
                "/v1/files",
                files={"file": ("t.jsonl", io.BytesIO(json.dumps(CHAT).encode() + b"\n"))},
                data={"purpose": "fine-tune"},
            )
            assert uploaded.status_code == 200, uploaded.text
            body = {"model": model, "training_file": uploaded.json()["id"]}
            answers = await asyncio.gather(
                *(client.post("/v1/fine_tuning/jobs", json=body) for _ in range(3 * limit))
            )
            listed = (await client.get("/v1/fine_tuning/jobs", params={"limit": 100})).json()
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] * limit + [429] * (2 * limit), [a.text[:200] for a in answers]
        assert len(listed["data"]) == limit
        refused = next(answer for answer in answers if answer.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "Retry-After" in refused.headers
