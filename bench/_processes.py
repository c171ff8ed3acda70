"""What the benchmarks share: start a process, wait for it to answer, reset a database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import httpx
from sqlalchemy import text

from souverain.db.engine import create_engine_unpooled
from souverain.settings import normalise_database_url


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_http(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                await client.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


async def reset_postgres(url: str) -> None:
    """Empty a PostgreSQL database the benchmark may own."""
    engine = create_engine_unpooled(normalise_database_url(url))
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
