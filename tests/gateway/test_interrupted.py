"""A server killed with SIGKILL mid-stream loses nothing: the usage record it left open is
settled `interrupted` when it starts again, and its budget reservation is charged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.metering import BudgetLedgerRow, BudgetRow
from souverain.db.tables import UsageRecordRow
from souverain.testing.factories import Key, Tenant
from souverain.testing.live import free_port
from tests.conftest import MASTER_KEY, Platform, usage_records, wait_until


def start_server(
    platform: Platform, port: int, data_dir: Path, *, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOUVERAIN_DATA_DIR": str(data_dir),
        "SOUVERAIN_DATABASE_URL": str(platform.settings.database_url),
        "SOUVERAIN_SECRET_KEY": MASTER_KEY,
        "SOUVERAIN_REPLICA_REFRESH_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


async def ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def serving(platform: Platform, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """A server process, once it answers and its route table holds the test's model."""
    server = start_server(platform, port, data_dir)
    try:
        await wait_until(lambda: ready(f"http://127.0.0.1:{port}"), timeout_s=60, interval_s=0.2)
    except BaseException:
        server.kill()
        raise
    await asyncio.sleep(0.5)  # the route table has the model and the budget
    return server


def key_client(key: Key) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {key.key}"}, timeout=30)


async def budgeted_owner(platform: Platform) -> tuple[str, Tenant, Key]:
    """A served model, and an owner's key of an organisation with a budget (whose requests
    take the synchronous usage path)."""
    model = await platform.served_model()
    tenant = await platform.factory.tenant(roles={"u": Role.OWNER})
    key = await platform.factory.member_key(tenant, "u", Role.OWNER)
    async with platform.client(key.key) as client:
        assert (
            await client.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": 10_000})
        ).status_code == 200
    return model, tenant, key


def streamed(model: str, prompt: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "stream": True,
    }


async def test_sigkill_mid_stream_is_settled_interrupted_at_restart(
    platform: Platform, tmp_path: Path
) -> None:
    model, tenant, key = await budgeted_owner(platform)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await serving(platform, port, tmp_path)
    try:
        async with (
            key_client(key) as client,
            client.stream(
                "POST", f"{url}/v1/chat/completions", json=streamed(model, "#slow")
            ) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    server.send_signal(signal.SIGKILL)  # mid-stream, no chance to settle
                    break
        server.wait(10)
        async with platform.sessions() as session:
            [record] = (
                await session.execute(select(UsageRecordRow).where(UsageRecordRow.key_id == key.id))
            ).scalars()
        assert record.status == "open" and record.reserved_tokens > 0
        server = start_server(platform, port, tmp_path)  # same host:port, same server identity
        await wait_until(lambda: ready(url), timeout_s=60, interval_s=0.2)
        async with platform.sessions() as session:
            settled = await session.get(UsageRecordRow, record.id, populate_existing=True)
            ledger = (
                await session.execute(
                    select(BudgetLedgerRow)
                    .join(BudgetRow, BudgetRow.id == BudgetLedgerRow.budget_id)
                    .where(BudgetRow.org_id == tenant.org_id)
                )
            ).scalar_one()
        assert (
            settled is not None
            and settled.status == "interrupted"
            and settled.settled_at is not None
        )
        assert ledger.reserved_tokens == 0 and ledger.used_tokens == record.reserved_tokens
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


async def test_sigkill_loses_no_usage_of_requests_without_a_budget(
    platform: Platform, tmp_path: Path
) -> None:
    """Usage reaches the database in batches, through a journal that survives the process."""
    model = await platform.served_model()
    tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
    key = await platform.factory.member_key(tenant, "u", Role.MEMBER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(platform, port, tmp_path)
    try:
        await wait_until(lambda: ready(url), timeout_s=60, interval_s=0.2)
        await asyncio.sleep(0.5)
        headers = {"Authorization": f"Bearer {key.key}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            done = await client.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "one two"}],
                    "max_tokens": 3,
                },
            )
            assert done.status_code == 200
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "#slow"}],
                "max_tokens": 16,
                "stream": True,
            }
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        server.send_signal(
                            signal.SIGKILL
                        )  # the answered request may not be written yet
                        break
        server.wait(10)
        server = start_server(platform, port, tmp_path)
        await wait_until(lambda: ready(url), timeout_s=60, interval_s=0.2)
        records = await usage_records(platform.sessions, 2, key_id=key.id)
        by_status = {r.status: r for r in records}
        assert set(by_status) == {"ok", "interrupted"}
        assert (by_status["ok"].prompt_tokens, by_status["ok"].completion_tokens) == (2, 3)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(30)


async def test_a_second_server_with_the_same_identity_stops_and_settles_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    """Started by mistake beside a running server (same data directory and port), a second
    process would have replayed the live journal and settled the first one's requests in
    flight as `interrupted`; it stops at start, naming the journal, and touches nothing."""
    model, _, key = await budgeted_owner(platform)
    port = free_port()
    server = await serving(platform, port, tmp_path)
    try:
        body = streamed(model, "#stall-stream")  # two tokens, then silence
        async with (
            key_client(key) as client,
            client.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body
            ) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()  # kept: a dropped iterator closes the stream
            while not (await anext(lines)).startswith("data: {"):
                pass
            second = start_server(platform, port, tmp_path, stderr=subprocess.PIPE)
            _, stderr = await asyncio.to_thread(second.communicate, timeout=60)
            assert second.returncode != 0
            assert "another souverain server is running" in stderr.decode()
            async with platform.sessions() as session:
                [record] = (
                    await session.execute(
                        select(UsageRecordRow).where(UsageRecordRow.key_id == key.id)
                    )
                ).scalars()
            assert record.status == "open"  # still the first server's, in flight
            assert (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        [settled] = await usage_records(platform.sessions, 1, key_id=key.id)
        assert settled.status not in ("open", "interrupted")
    finally:
        server.terminate()
        server.wait(30)
