"""A server SIGKILLed in the middle of a batch: another server takes the batch over when
the lease runs out, and the output answers every custom_id exactly once, with exactly one
settled usage record per line. Real server processes, a real engine process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import func, select

from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.db.jobs import BatchItemRow
from souverain.db.tables import UsageRecordRow
from souverain.node.engines.base import TlsFiles
from souverain.settings import normalise_database_url
from souverain.testing.factories import Factory
from souverain.testing.live import free_port
from souverain.testing.tls import every_replica_files
from tests.conftest import DATABASES, MASTER_KEY, fresh_database_url, wait_until
from tests.faults.conftest import Tally

pytestmark = pytest.mark.slow

LINES = 60
LEASE_S = 3


def start_server(directory: Path, database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOUVERAIN_DATA_DIR": str(directory),
        "SOUVERAIN_DATABASE_URL": database_url,
        "SOUVERAIN_SECRET_KEY": MASTER_KEY,
        "SOUVERAIN_REPLICA_REFRESH_S": "0.2",
        "SOUVERAIN_BATCH_LEASE_S": str(LEASE_S),
        "SOUVERAIN_BATCH_CONCURRENCY": "8",
        "SOUVERAIN_FILE_STORES": json.dumps({"batch-dc": f"file://{directory / 'files'}"}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_stand_in(port: int, secret: str, tls: TlsFiles) -> subprocess.Popen[bytes]:
    """An engine whose answers take 0.05 s a token, so the batch is caught mid-way."""
    return subprocess.Popen(
        [sys.executable, "-m", "souverain.testing.stand_in", "--port", str(port),
         "--token-delay", "0.05", "--ssl-cert-file", str(tls.certificate),
         "--ssl-key-file", str(tls.key)],
        env={**os.environ, "SOUVERAIN_ENGINE_SECRET": secret},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("database", DATABASES)
async def test_sigkill_mid_batch_answers_every_line_exactly_once(
    tmp_path: Path, database: str, tally: Tally
) -> None:
    url_db = await fresh_database_url(database, tmp_path, database="batchfaults")
    engine = create_engine_unpooled(normalise_database_url(url_db))
    await upgrade(engine)
    factory = Factory(session_factory(engine))
    tenant = await factory.tenant(roles={"b": Role.OWNER})
    key = (await factory.member_key(tenant, "b", Role.OWNER)).key
    replica_id = new_id("rep")
    port = free_port()
    tls = await every_replica_files(factory.sessions, MASTER_KEY.encode(), tmp_path / "tls")
    stand_in = start_stand_in(port, replica_secret(MASTER_KEY.encode(), replica_id), tls)
    model, _ = await factory.served_model(
        url=f"https://127.0.0.1:{port}", datacenter_id=await factory.datacenter("batch-dc"),
        replica_id=replica_id,
    )  # fmt: skip
    first_port, second_port = free_port(), free_port()
    first = start_server(tmp_path, url_db, first_port)
    second: subprocess.Popen[bytes] | None = None
    try:
        first_url = f"http://127.0.0.1:{first_port}"
        await wait_until(lambda: answers(first_url), timeout_s=60, interval_s=0.2)
        sdk = openai.OpenAI(base_url=f"{first_url}/v1", api_key=key, max_retries=2)
        content = b"".join(
            json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": model, "max_tokens": 8,
                                 "messages": [{"role": "user", "content": f"q{i}"}]}}).encode() + b"\n"
            for i in range(LINES)
        )  # fmt: skip

        async def listed() -> bool:
            return model in {m.id for m in await asyncio.to_thread(sdk.models.list)}

        await wait_until(listed, timeout_s=20)
        uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")  # fmt: skip

        async def some_done() -> bool:
            async with factory.sessions() as session:
                done = await session.scalar(
                    select(func.count()).where(BatchItemRow.batch_id == batch.id,
                                               BatchItemRow.status == "done"))  # fmt: skip
            return bool(done and 5 <= done < LINES)

        await wait_until(some_done, timeout_s=60, interval_s=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = start_server(tmp_path, url_db, second_port)
        second_url = f"http://127.0.0.1:{second_port}"
        await wait_until(lambda: answers(second_url), timeout_s=60, interval_s=0.2)
        sdk = openai.OpenAI(base_url=f"{second_url}/v1", api_key=key, max_retries=2)

        async def finished() -> bool:
            found = await asyncio.to_thread(sdk.batches.retrieve, batch.id)
            return found.status == "completed"

        await wait_until(finished, timeout_s=120, interval_s=0.5)
        print(f"[fault] batch resumed and finished {time.monotonic() - killed:.1f}s after SIGKILL")
        done = sdk.batches.retrieve(batch.id)
        output = [json.loads(x) for x in sdk.files.content(done.output_file_id).read().splitlines()]
        ids = [line["custom_id"] for line in output]
        assert sorted(ids) == sorted(f"c{i}" for i in range(LINES))  # each once, none lost
        async with factory.sessions() as session:
            records = list((await session.execute(
                select(UsageRecordRow).where(UsageRecordRow.batch_id == batch.id)
            )).scalars())  # fmt: skip
        assert len(records) == LINES and {r.status for r in records} == {"ok"}
        tally.sent, tally.answered, tally.records = LINES, len(output), len(records)
    finally:
        for process in (first, second, stand_in):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        await engine.dispose()
