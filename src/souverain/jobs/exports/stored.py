"""What an export takes from the stores: the organisation's live files and its fine-tuned
models' adapters, decrypted here as they stream into the archive, each checked against the
sha256 it was stored with; with their metadata as JSON lines.

Batch inputs and outputs are files (purposes `batch`, `batch_output`, `batch_error`), so
they are exported with the files; `batches/batches.jsonl` names which is which.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.exports import safe_name
from souverain.db.jobs import BatchRow, FileRow, FineTuningJobRow
from souverain.db.tables import ModelAdapterRow, ModelRow
from souverain.files import service as files
from souverain.jobs.exports.archive import Entry, entry_of
from souverain.storage.crypto import open_sealed, unwrap
from souverain.storage.stores import store_from_uri

ADAPTER_SUFFIX = {"gguf-lora": "gguf", "peft": "safetensors"}


@dataclass
class Counts:
    """How many of each kind an export holds (kept on its row, shown by the API)."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.values[kind] = self.values.get(kind, 0) + n


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, default=_plain, ensure_ascii=False).encode() + b"\n" for r in rows
    )


def pretty(value: Any) -> bytes:
    return json.dumps(value, default=_plain, ensure_ascii=False, indent=2).encode() + b"\n"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def columns(row: Any, *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A row's columns by name, less those that are not the tenant's to keep (keys)."""
    return {
        attribute.columns[0].name: getattr(row, attribute.key)
        for attribute in inspect(type(row)).column_attrs
        if attribute.columns[0].name not in leave_out
    }


SEALING = frozenset({"wrapped_key", "object_key", "store_uri", "lock_token", "lock_expires_at"})


async def file_entries(
    sessions: async_sessionmaker[AsyncSession], *, org_id: str, master_key: bytes, counts: Counts
) -> AsyncIterator[Entry]:
    async with sessions() as session:
        query = select(FileRow).where(FileRow.org_id == org_id, FileRow.status == "processed")
        rows = list(
            (await session.execute(query.order_by(FileRow.created_at, FileRow.id))).scalars()
        )
    yield entry_of("files/files.jsonl", jsonl([columns(r, leave_out=SEALING) for r in rows]))
    for row in rows:
        async with sessions() as session:
            plaintext = await files.open_file(session, row=row, master_key=master_key)
        counts.add("files")
        path = f"files/{row.id}/{safe_name(row.filename)}"
        yield Entry(path, row.bytes, plaintext, sha256=row.sha256)


async def job_entries(
    sessions: async_sessionmaker[AsyncSession], *, org_id: str, counts: Counts
) -> AsyncIterator[Entry]:
    async with sessions() as session:
        batches = (await session.execute(
            select(BatchRow).where(BatchRow.org_id == org_id).order_by(BatchRow.created_at)
        )).scalars()  # fmt: skip
        batch_rows = [columns(b, leave_out=SEALING) for b in batches]
        jobs = (await session.execute(
            select(FineTuningJobRow).where(FineTuningJobRow.org_id == org_id)
            .order_by(FineTuningJobRow.created_at)
        )).scalars()  # fmt: skip
        job_rows = [columns(j, leave_out=SEALING) for j in jobs]
    counts.add("batches", len(batch_rows))
    counts.add("fine_tuning_jobs", len(job_rows))
    yield entry_of("batches/batches.jsonl", jsonl(batch_rows))
    yield entry_of("fine_tuning/jobs.jsonl", jsonl(job_rows))


async def model_entries(
    sessions: async_sessionmaker[AsyncSession], *, org_id: str, master_key: bytes, counts: Counts
) -> AsyncIterator[Entry]:
    """Each fine-tuned model's card (lineage) and its adapter, decrypted."""
    async with sessions() as session:
        query = select(ModelRow).where(
            ModelRow.owner_org_id == org_id, ModelRow.base_model_id.is_not(None)
        )
        models = list((await session.execute(query.order_by(ModelRow.created_at))).scalars())
        adapters = {
            a.model_id: a
            for a in (
                await session.execute(
                    select(ModelAdapterRow).where(ModelAdapterRow.org_id == org_id)
                )
            ).scalars()
        }
        kek = await files.organisation_kek(
            session, master_key=master_key, org_id=org_id, create=False
        ) if adapters else b""  # fmt: skip
    for model in models:
        counts.add("models")
        adapter = adapters.get(model.id)
        card = {**columns(model), "adapter": None if adapter is None else {
            "format": adapter.format, "sha256": adapter.sha256, "bytes": adapter.size_bytes,
            "datacenter": adapter.datacenter_id}}  # fmt: skip
        yield entry_of(f"models/{model.id}/model_card.json", pretty(card))
        if adapter is not None:
            suffix = ADAPTER_SUFFIX.get(adapter.format, "bin")
            yield Entry(
                f"models/{model.id}/adapter.{suffix}", adapter.size_bytes,
                _adapter_plaintext(adapter, kek), sha256=adapter.sha256,
            )  # fmt: skip


def _adapter_plaintext(adapter: ModelAdapterRow, kek: bytes) -> AsyncIterator[bytes]:
    data_key = unwrap(kek, bytes.fromhex(adapter.wrapped_key), adapter.object_id.split("/", 1)[0])
    store = store_from_uri(adapter.store_uri)
    return open_sealed(store.read(adapter.object_key), data_key, adapter.object_id)
