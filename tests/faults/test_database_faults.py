"""Faults under the usage path: a usage journal that cannot be written, and PostgreSQL
restarted under load. Requests are answered or refused with a clear 503, and no usage
record is lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_URL
from tests.faults.conftest import FaultPlatform, Tally

pytestmark = pytest.mark.slow


def chat(model: str, prompt: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def journal_dir(platform: FaultPlatform) -> Path:
    [directory] = [p for p in (platform.settings.data_dir / "journal").iterdir() if p.is_dir()]
    return directory


@contextlib.contextmanager
def replaced_by_a_file(directory: Path) -> Iterator[None]:
    """The journal's directory is gone and a file sits at its path: every new journal file
    fails with ENOTDIR, as on a volume that was unmounted or replaced."""
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.write_text("not a directory")
    try:
        yield
    finally:
        directory.unlink()
        aside.rename(directory)


@contextlib.contextmanager
def full_disk(directory: Path) -> Iterator[None]:
    """A 64 KiB filesystem over the journal's directory, filled up: writes fail with ENOSPC."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        with (directory / "filler").open("wb") as filler, contextlib.suppress(OSError):
            filler.write(b"\0" * 256 * 1024)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


class TestUnwritableJournal:
    @pytest.mark.parametrize("breakage", [replaced_by_a_file, full_disk], ids=["enotdir", "enospc"])
    async def test_requests_are_refused_then_served_again(
        self, faulty: FaultPlatform, tally: Tally, breakage: object
    ) -> None:
        model, _ = await faulty.model_on_engines(1)
        async with faulty.client() as client:
            with breakage(journal_dir(faulty)):  # type: ignore[operator]
                for _ in range(3):
                    refused = await client.post("/v1/chat/completions", json=chat(model))
                    tally.saw(refused.status_code)
                    assert refused.status_code == 503
                    assert "Usage cannot be recorded" in refused.json()["error"]["message"]
            for _ in range(3):
                answer = await client.post("/v1/chat/completions", json=chat(model))
                tally.saw(answer.status_code)
                assert answer.status_code == 200
        records = await faulty.settled(model, 3)  # the refused ones were never admitted
        tally.records = len(records)
        assert {r.status for r in records} == {"ok"}

    async def test_a_settlement_the_journal_refuses_still_reaches_the_database(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, _ = await faulty.model_on_engines(1)
        directory = journal_dir(faulty)
        async with faulty.client() as client:
            body = chat(model, "#slow stream", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                tally.saw(response.status_code)
                lines = response.aiter_lines()
                await anext(lines)
                await asyncio.sleep(0.2)  # the opening entry reached the database
                with replaced_by_a_file(directory):
                    rest = [line async for line in lines]
                    assert "data: [DONE]" in rest
                    [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "ok" and record.completion_tokens == 16


def pg_cluster() -> tuple[str, str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return version, "main"


@pytest.mark.postgres
@pytest.mark.exclusive  # `make test` runs it alone: other tests use the same PostgreSQL server
@pytest.mark.skipif(
    not POSTGRES_URL or shutil.which("pg_ctlcluster") is None,
    reason="needs the local PostgreSQL cluster and pg_ctlcluster",
)
class TestPostgresRestart:
    async def test_restart_under_load_loses_nothing(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        if faulty.settings.sqlalchemy_url.startswith("sqlite"):
            pytest.skip("this leg is the PostgreSQL one")
        model, _ = await faulty.model_on_engines(1)
        stop = asyncio.Event()
        statuses: list[int] = []

        async def worker(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    answer = await client.post("/v1/chat/completions", json=chat(model))
                    statuses.append(answer.status_code)
                    if answer.status_code != 200:
                        body = answer.json()["error"]
                        assert answer.status_code == 503, body
                        await asyncio.sleep(0.1)
                except httpx.HTTPError as error:  # the server must always answer
                    raise AssertionError(f"no answer: {error!r}") from error

        async with faulty.client() as client:
            workers = [asyncio.create_task(worker(client)) for _ in range(4)]
            await asyncio.sleep(2.0)
            version, name = pg_cluster()
            restarted = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                ["pg_ctlcluster", version, name, "restart", "-m", "fast"],
                check=True,
                capture_output=True,
            )
            print(f"[fault] PostgreSQL restarted in {time.monotonic() - restarted:.1f}s")
            await asyncio.sleep(4.0)
            stop.set()
            await asyncio.gather(*workers)
            after = await client.post("/v1/chat/completions", json=chat(model))
            statuses.append(after.status_code)
            assert after.status_code == 200  # recovered without restarting the server
        for status in statuses:
            tally.saw(status)
        assert set(statuses) <= {200, 503}
        records = await faulty.settled(model, tally.answered)
        tally.records = len(records)
        assert {r.status for r in records} == {"ok"}
