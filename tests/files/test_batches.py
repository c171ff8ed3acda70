"""Batches with the official SDKs, on the stand-in engine: every line answered exactly
once through the same admission and metering as a live request; bad inputs fail whole;
cancelling stops it; another tenant sees nothing."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import openai
import pytest
from mistralai.client import Mistral
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.tables import UsageRecordRow
from tests.conftest import Platform, on_one_database


def lines(model: str, count: int, prefix: str = "line", **body: Any) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "max_tokens": 4,
                             "messages": [{"role": "user", "content": f"question {i}"}], **body}}
                   ).encode() + b"\n"
        for i in range(count)
    )  # fmt: skip


async def member(platform: Platform) -> tuple[str, str]:
    tenant = await platform.factory.tenant(roles={"m": Role.MEMBER})
    return tenant.org_id, (await platform.factory.member_key(tenant, "m", Role.MEMBER)).key


def client(platform: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)


async def wait_done(sdk: openai.OpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await asyncio.to_thread(sdk.batches.retrieve, batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        await asyncio.sleep(0.3)


class TestOpenAIBatches:
    async def test_every_line_is_answered_once_and_metered(self, platform: Platform) -> None:
        model = await platform.served_model()
        org_id, key = await member(platform)
        sdk = client(platform, key)
        uploaded = sdk.files.create(
            file=("in.jsonl", io.BytesIO(lines(model, 25))), purpose="batch"
        )
        created = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"job": "nightly"},
        )  # fmt: skip
        assert created.status == "validating" and created.metadata == {"job": "nightly"}
        done = await wait_done(sdk, created.id)
        assert done.status == "completed", done
        assert done.request_counts.total == 25 and done.request_counts.completed == 25
        assert done.error_file_id is None
        output = [json.loads(x) for x in sdk.files.content(done.output_file_id).read().splitlines()]
        assert sorted(o["custom_id"] for o in output) == sorted(f"line-{i}" for i in range(25))
        assert all(o["response"]["status_code"] == 200 for o in output)
        assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in output)
        async with platform.sessions() as session:
            records = list((await session.execute(
                select(UsageRecordRow).where(UsageRecordRow.batch_id == created.id)
            )).scalars())  # fmt: skip
        assert len(records) == 25 and {r.status for r in records} == {"ok"}
        assert {r.org_id for r in records} == {org_id}
        assert {o["response"]["request_id"] for o in output} == {r.id for r in records}
        assert sdk.batches.list().data[0].id == created.id

    async def test_bad_lines_fail_the_batch_with_their_line_numbers(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        _, key = await member(platform)
        sdk = client(platform, key)
        content = lines(model, 2) + lines("no-such-model", 1, prefix="other")
        uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
        done = await wait_done(sdk, created.id)
        assert done.status == "failed"
        assert done.errors.data[0].line == 3 and "no-such-model" in done.errors.data[0].message

    async def test_lines_the_engine_refuses_go_to_the_error_file(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key = await member(platform)
        sdk = client(platform, key)
        failing = lines(model, 1, prefix="broken").replace(b"question 0", b"#fail-500")
        content = lines(model, 3) + failing
        uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
        done = await wait_done(sdk, created.id)
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
        [error] = [json.loads(x) for x in sdk.files.content(done.error_file_id).read().splitlines()]
        assert error["custom_id"] == "broken-0" and error["response"]["status_code"] == 502

    async def test_cancel(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key = await member(platform)
        sdk = client(platform, key)
        slow = (
            lines(model, 40)
            .replace(b"question", b"#slow question")
            .replace(b'"max_tokens": 4', b'"max_tokens": 4, "stream": false')
        )
        uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(slow)), purpose="batch")
        created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
        cancelled = sdk.batches.cancel(created.id)
        assert cancelled.status == "cancelling"
        done = await wait_done(sdk, created.id)
        assert done.status == "cancelled"
        assert (
            done.request_counts.completed + done.request_counts.failed == done.request_counts.total
        )

    async def test_another_tenant_sees_nothing(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key_a = await member(platform)
        _, key_b = await member(platform)
        a = client(platform, key_a)
        uploaded = a.files.create(file=("in.jsonl", io.BytesIO(lines(model, 1))), purpose="batch")
        created = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")  # fmt: skip
        b = client(platform, key_b)
        with pytest.raises(openai.NotFoundError):
            b.batches.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            b.batches.cancel(created.id)
        with pytest.raises(openai.NotFoundError):  # nor use a's file for its own batch
            b.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                             completion_window="24h")  # fmt: skip
        assert created.id not in {x.id for x in b.batches.list().data}


class TestMistralBatches:
    async def test_inline_requests_round_trip(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key = await member(platform)
        mistral = Mistral(api_key=key, server_url=platform.url)
        job = mistral.batch.jobs.create(
            endpoint="/v1/chat/completions", model=model,
            requests=[{"custom_id": f"r{i}", "body": {"max_tokens": 4, "messages":
                       [{"role": "user", "content": f"hello {i}"}]}} for i in range(5)],
        )  # fmt: skip
        assert job.status == "QUEUED"
        deadline = time.monotonic() + 60
        while (job := mistral.batch.jobs.get(job_id=job.id)).status not in ("SUCCESS", "FAILED"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        assert job.status == "SUCCESS" and job.succeeded_requests == 5
        output = mistral.files.download(file_id=job.output_file).read().splitlines()
        assert sorted(json.loads(x)["custom_id"] for x in output) == [f"r{i}" for i in range(5)]
        assert job.id in {j.id for j in mistral.batch.jobs.list().data}


class TestCarbonAwareBatches:
    async def test_a_batch_waits_for_the_cleanest_hours_that_meet_its_window(
        self, platform: Platform
    ) -> None:
        from datetime import UTC, datetime, timedelta

        from souverain.core.ids import new_id

        dc = await platform.factory.datacenter(new_id("green"), country="FR", carbon=300)
        replica = new_id("rep")
        model, _ = await platform.factory.served_model(
            url=f"{platform.stand_in_url}/r/{replica}", datacenter_id=dc, replica_id=replica
        )
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        dirty, clean = 450.0, 25.0
        points = [{"hour": (now + timedelta(hours=h)).isoformat(),
                   "g_per_kwh": clean if h in (5, 6) else dirty} for h in range(24)]  # fmt: skip
        async with platform.client(await platform.operator_key()) as op:
            loaded = await op.put(f"/api/datacenters/{dc}/carbon", json={"points": points})
            assert loaded.status_code == 200, loaded.text
        await asyncio.sleep(0.6)
        _, key = await member(platform)
        sdk = client(platform, key)
        uploaded = sdk.files.create(
            file=("in.jsonl", io.BytesIO(lines(model, 10))), purpose="batch"
        )
        created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
        deadline = time.monotonic() + 30
        while (found := sdk.batches.retrieve(created.id)).status == "validating":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        extras = found.model_extra["souverain"]  # type: ignore[index]
        assert found.status == "in_progress" and found.request_counts.completed == 0
        assert extras["not_before"] == int((now + timedelta(hours=5)).timestamp())
        assert extras["co2e_saved_g"] > 0
        print(f"[batch] deferred to +5 h (25 g/kWh instead of 450): "
              f"{extras['co2e_saved_g']:.3g} gCO2e saved")  # fmt: skip
        await asyncio.sleep(2.0)  # the runner leaves it alone until then
        assert sdk.batches.retrieve(created.id).request_counts.completed == 0
        sdk.batches.cancel(created.id)  # a deferred batch can be cancelled at once
        done = await wait_done(sdk, created.id)
        assert done.status == "cancelled" and done.request_counts.failed == 10


@on_one_database()
class TestCli:
    async def test_upload_run_follow_and_download(self, platform: Platform, tmp_path: Any) -> None:
        import os
        import re
        import subprocess
        import sys

        model = await platform.served_model()
        _, key = await member(platform)
        source = tmp_path / "in.jsonl"
        source.write_bytes(lines(model, 5))
        env = {**os.environ, "SOUVERAIN_URL": platform.url, "SOUVERAIN_API_KEY": key,
               "COLUMNS": "200"}  # fmt: skip

        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "souverain.cli.main", *args], env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        uploaded = await asyncio.to_thread(cli, "files", "upload", str(source))
        file_id = re.search(r"(file_[0-9a-f]+)", uploaded).group(1)  # type: ignore[union-attr]
        shown = await asyncio.to_thread(cli, "batches", "create", file_id, "--wait")
        assert "completed: 5 answered, 0 failed of 5" in shown
        output_id = re.search(r"output: (file_[0-9a-f]+)", shown).group(1)  # type: ignore[union-attr]
        target = tmp_path / "out.jsonl"
        await asyncio.to_thread(cli, "files", "download", output_id, "-o", str(target))
        assert len(target.read_text().splitlines()) == 5
        assert "completed" in await asyncio.to_thread(cli, "batches", "list")


class TestTheLivePath:
    """A batch line goes through the gateway's one `execute`: whatever a live request
    gets, in bounds and in shaping, a line gets too."""

    async def test_a_reasoning_line_is_answered_as_a_live_request_is(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model(capabilities=("chat", "completions", "reasoning"))
        _, key = await member(platform)
        sdk = client(platform, key)
        content = lines(model, 1, reasoning_effort="medium", max_tokens=64)
        content = content.replace(b"question 0", b"why? #think")
        uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
        done = await wait_done(sdk, created.id)
        assert done.status == "completed", done
        [line] = [json.loads(x) for x in sdk.files.content(done.output_file_id).read().splitlines()]
        message = line["response"]["body"]["choices"][0]["message"]
        assert message["content"] == "It stays here."  # the thinking apart, as live
        assert message["reasoning_content"] == "the tenant asks"
        usage = line["response"]["body"]["usage"]
        assert usage["completion_tokens_details"]["reasoning_tokens"] > 0

    async def test_an_embeddings_line_over_the_live_bounds_is_refused_like_a_live_request(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model(capabilities=("embeddings",))
        _, key = await member(platform)
        sdk = client(platform, key)
        too_many = ["word"] * (platform.settings.embeddings_max_inputs + 1)
        async with platform.client(key) as http:
            live = await http.post("/v1/embeddings", json={"model": model, "input": too_many})
        assert live.status_code == 400, live.text
        body = {"model": model, "input": too_many}
        line = {"custom_id": "wide", "method": "POST", "url": "/v1/embeddings", "body": body}
        uploaded = sdk.files.create(
            file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch"
        )
        created = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        done = await wait_done(sdk, created.id)
        assert done.status == "failed", done
        assert done.errors.data[0].message == live.json()["error"]["message"]
        assert not [r for r in platform.stand_in.requests if r.get("input") == too_many]
