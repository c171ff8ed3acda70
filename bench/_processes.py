"""What the benchmarks share: start a process, wait for it to answer, reset a database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

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
    # readiness only: the engines' certificates are checked by the gateway, not here
    async with httpx.AsyncClient(verify=False) as client:  # noqa: S501
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


async def tls_stand_in(
    database_url: str, master_key: str, port: int, directory: Path
) -> tuple[subprocess.Popen[bytes], bytes]:
    """The stand-in engine serving HTTPS with a certificate for every replica's name from
    the installation's authority (kept in `database_url`, whose schema a server made): the
    gateway calls no engine in clear. Returns the process and the authority's PEM."""
    from souverain.db.engine import session_factory
    from souverain.installation import authority
    from souverain.testing.tls import every_replica_files

    engine = create_engine_unpooled(normalise_database_url(database_url))
    try:
        sessions = session_factory(engine)
        files = await every_replica_files(sessions, master_key.encode(), directory)
        pem = (await authority.load_or_create(sessions, master_key.encode())).certificate_pem
    finally:
        await engine.dispose()
    process = spawn([sys.executable, "-m", "souverain.testing.stand_in", "--port", str(port),
                     "--master-key", master_key, "--ssl-cert-file", str(files.certificate),
                     "--ssl-key-file", str(files.key)])  # fmt: skip
    return process, pem


async def share_authority(source_url: str, target_url: str) -> None:
    """Give a second installation the first one's authority (same master key), so one
    engine serves both in a benchmark."""
    from souverain.db.engine import session_factory
    from souverain.db.installation import InstallationSecretRow
    from souverain.installation.authority import AUTHORITY

    source = create_engine_unpooled(normalise_database_url(source_url))
    target = create_engine_unpooled(normalise_database_url(target_url))
    try:
        async with session_factory(source)() as session:
            row = await session.get(InstallationSecretRow, AUTHORITY)
            assert row is not None, "the first installation has no authority yet"
            copy = InstallationSecretRow(name=row.name, public=row.public, sealed=row.sealed)
        async with session_factory(target).begin() as session:
            await session.merge(copy)
    finally:
        await source.dispose()
        await target.dispose()
