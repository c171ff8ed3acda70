"""The usage journal: usage records leave the request path and reach the database in batches.

Opening and settling a usage record are appended, as JSON lines, to a journal file of this
server process (one `write` to a file opened O_APPEND: the kernel holds the bytes even if
the process is killed the next instant) and queued in memory. A writer task applies the
queue to the database in one transaction every few milliseconds (an open and its
settlement in the same batch become one INSERT), then deletes the journal files the batch
covered. At start, a server replays what a killed predecessor left in its journal (opens
inserted once, settlements applied once), so a SIGKILL loses nothing; records still open
afterwards are then settled `interrupted`.

A journal belongs to one server process (its directory is named after the host and
port): the process holds an exclusive lock on it while it runs. A second process started
with the same identity would replay the live journal and settle the first one's requests
in flight as `interrupted`; it stops at start with an error naming the directory instead.
The kernel drops the lock of a killed process, so a restart after SIGKILL replays as
before.

Requests of organisations with a budget do not use the journal for their opening: their
reservation must be taken atomically in the database before the engine is called.

If the journal cannot be written (disk full, directory gone or read-only), a new request
is refused with 503 before anything is processed; a settlement that cannot be journaled
still reaches the database through the in-memory queue (it is only unprotected against
a SIGKILL in the next few milliseconds), and the failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import ServiceUnavailableError
from souverain.db.tables import utcnow
from souverain.metering import usage
from souverain.metering.usage import OpenRecord, Settlement
from souverain.metering.usage_rollups import Changes

log = logging.getLogger(__name__)

Entry = dict[str, Any]


class JournalInUseError(RuntimeError):
    """Another running server process owns this journal."""


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    return value


def _decode(entry: Entry) -> Entry:
    return {
        k: datetime.fromisoformat(v["$t"]) if isinstance(v, dict) and "$t" in v else v
        for k, v in entry.items()
    }


class UsageJournal:
    def __init__(
        self, directory: Path, sessions: async_sessionmaker[AsyncSession], *, flush_s: float = 0.02
    ) -> None:
        self._directory = directory
        self._sessions = sessions
        self._flush_s = flush_s
        self._queue: list[Entry] = []
        self._wake = asyncio.Event()
        self._generation = 0
        self._fd: int | None = None
        self._files: list[Path] = []  # files holding entries not yet in the database
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._lock_fd: int | None = None
        self.failures = 0  # batches the database refused
        self.write_failures = 0  # entries the journal file refused

    # the request path

    def open(self, record: OpenRecord) -> None:
        """Journal an admitted request; raises 503 if the journal cannot be written."""
        entry = {"op": "open", **usage.row_values(record)}
        try:
            self._write(entry)
        except OSError as error:
            self.write_failures += 1
            self._drop_fd()
            log.error("the usage journal cannot be written (%s): refusing requests", error)
            raise ServiceUnavailableError(
                "Usage cannot be recorded right now (the server's usage journal is not "
                "writable); the request was not processed. Retry shortly."
            ) from None
        self._enqueue(entry)

    def settle(self, record_id: str, settlement: Settlement) -> None:
        entry = {
            "op": "settle",
            "id": record_id,
            **usage.settlement_values(settlement),
            "settled_at": utcnow(),
        }
        try:
            self._write(entry)
        except OSError as error:
            self.write_failures += 1
            self._drop_fd()
            log.error(
                "the usage journal cannot be written (%s); settlement of %s kept in memory "
                "until the database has it",
                error,
                record_id,
            )
        self._enqueue(entry)

    def tag_languages(self, tags: list[Entry]) -> None:
        """Languages of settled reasoning requests (best effort: a tag that cannot be
        journaled still goes through the queue)."""
        for tag in tags:
            entry = {"op": "languages", **tag}
            with contextlib.suppress(OSError):
                self._write(entry)
            self._enqueue(entry)

    def _write(self, entry: Entry) -> None:
        line = json.dumps({k: _encode(v) for k, v in entry.items()}, separators=(",", ":")) + "\n"
        os.write(self._current_fd(), line.encode())

    def _enqueue(self, entry: Entry) -> None:
        self._queue.append(entry)
        self._wake.set()

    def _drop_fd(self) -> None:
        """After a failed write, start a new file next time (the directory may be back)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _current_fd(self) -> int:
        if self._fd is None:
            self._generation += 1
            path = self._directory / f"usage-{os.getpid()}-{self._generation:08d}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._files.append(path)
        return self._fd

    # the writer

    async def start(self) -> int:
        """Replay what a previous process left, then start writing. Returns entries replayed."""
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock()
        replayed = await self.replay()
        self._writer = asyncio.get_running_loop().create_task(self._run())
        return replayed

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        await self._flush()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _lock(self) -> None:
        fd = os.open(self._directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalInUseError(
                f"another souverain server is running with the usage journal {self._directory} "
                "(same data directory, host and port); give each server process its own port "
                "(SOUVERAIN_PORT) or data directory"
            ) from None
        self._lock_fd = fd

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._flush_s)  # let a batch gather
            try:
                await self._flush()
            except Exception:
                self.failures += 1
                log.exception(
                    "writing usage records failed; they stay in the journal and will be retried"
                )
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _flush(self) -> None:
        if not self._queue:
            return
        batch, covered = self._queue, self._files
        self._queue, self._files = [], []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            async with self._sessions.begin() as session:
                await apply(session, batch)
        except BaseException:
            self._queue = batch + self._queue  # retried with what came since
            self._files = covered + self._files
            raise
        for path in covered:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def replay(self) -> int:
        leftovers = sorted(self._directory.glob("usage-*.jsonl"))
        entries = list(_read(leftovers))
        if entries:
            async with self._sessions.begin() as session:
                await apply(session, entries, replaying=True)
            log.warning("replayed %d usage journal entries left by a stopped server", len(entries))
        for path in leftovers:
            path.unlink()
        return len(entries)


def _read(paths: list[Path]) -> Iterator[Entry]:
    for path in paths:
        for line in path.read_text().splitlines():
            try:
                yield _decode(json.loads(line))
            except ValueError:
                continue  # a line cut short by the crash: its request never reached the engine


async def apply(session: AsyncSession, entries: list[Entry], *, replaying: bool = False) -> None:
    """Opens become INSERTs (merged with their settlement when both are here); other
    settlements are guarded UPDATEs, so nothing is counted twice, also when replaying."""
    opens: dict[str, Entry] = {}
    settles: list[Entry] = []
    tags: list[Entry] = []
    for entry in entries:
        fields = {k: v for k, v in entry.items() if k != "op"}
        if entry["op"] == "open":
            opens[fields["id"]] = fields
        elif entry["op"] == "languages":
            if fields["id"] in opens and not replaying:
                opens[fields["id"]] |= fields
            else:
                tags.append(fields)
        elif fields["id"] in opens and not replaying:
            opens[fields["id"]] |= fields | {"status": fields["status"]}
        else:
            settles.append(fields)
    changes = Changes()  # the rollups move once, after the records
    if opens:
        await usage.insert_rows(
            session, rows=list(opens.values()), if_absent=replaying, changes=changes
        )
    for fields in settles:
        await usage.settle_unbudgeted(
            session,
            record_id=fields["id"],
            settlement=usage.settlement_from(fields),
            settled_at=fields["settled_at"],
            changes=changes,
        )
    await usage.tag_languages(session, tags=tags, changes=changes)
    await changes.write(session)
