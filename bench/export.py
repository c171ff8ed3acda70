"""What an organisation's export and its erasure cost.

    python bench/export.py [--records 10000] [--files 100] [--file-mb 1] [--models 3]
        [--adapter-mb 20] [--database sqlite|postgresql://…/db]

One organisation on a fresh database (SQLite in a temporary directory unless given
PostgreSQL) with `--records` usage records, `--files` files of `--file-mb` MiB of random
bytes, spread over 3 datacenters with a local store each, and `--models` fine-tuned models
whose sealed adapters are `--adapter-mb` MiB. Its export is then written by the
controller's runner (every object decrypted, hashed, archived, sealed and stored), read
back and checked offline with `verify_archive`; then the organisation is erased (key
material, rows, then every object in the 3 stores). Prints seconds, sizes and MiB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.exports import verify_archive
from souverain.core.ids import new_id
from souverain.core.policy import UNRESTRICTED
from souverain.core.principal import Principal
from souverain.core.roles import Role, scopes_of
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.db.exports import ExportRow
from souverain.db.tables import ModelAdapterRow, ModelRow, UsageRecordRow, utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.files.uploads import Checked, Owner, store_plaintext
from souverain.jobs import erasures
from souverain.jobs.exports.runner import ExportRunner
from souverain.storage.crypto import Sealer, open_sealed, unwrap
from souverain.storage.stores import store_from_uri
from souverain.testing.factories import Factory

MASTER = b"e" * 32
MIB = 1024 * 1024
DATACENTERS = ("fr-par-1", "de-fra-1", "nl-ams-1")


@dataclass(frozen=True)
class Context:
    """What storing a file needs (`files.uploads.FileContext`): one datacenter's store."""

    sessions: async_sessionmaker[AsyncSession]
    master_key: bytes
    file_stores: dict[str, str]
    files_quota_bytes: int = 2**40


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(data), MIB):
        yield data[at : at + MIB]


async def _files(sessions: async_sessionmaker[AsyncSession], root: Path, org: str, n: int,
                 size: int) -> None:  # fmt: skip
    owner = Owner(org, None, None, UNRESTRICTED, audit.SYSTEM_SERVER)
    for i in range(n):
        dc = DATACENTERS[i % len(DATACENTERS)]
        state = Context(sessions, MASTER, {dc: f"file://{root / dc}"})

        async def finish(*_: object, i: int = i) -> Checked:
            return Checked(f"data-{i}.bin", "user_data", None)

        await store_plaintext(state, owner=owner, plaintext=_chunks(os.urandom(size)),
                              finish=finish)  # fmt: skip


async def _usage(sessions: async_sessionmaker[AsyncSession], org: str, n: int) -> None:
    start = utcnow() - timedelta(days=90)
    async with sessions.begin() as session:
        session.add_all(
            UsageRecordRow(
                id=new_id("req"),
                org_id=org,
                key_id="k",
                user_id="u",
                endpoint="chat",
                model="mistral-small",
                stream=False,
                datacenter_id=DATACENTERS[i % 3],
                country="FR",
                status="ok",
                prompt_tokens=120,
                completion_tokens=300,
                cost=0.0002,
                currency="EUR",
                energy_j=40.0,
                co2e_g=0.0006,
                server_id="bench",
                created_at=start + timedelta(minutes=13 * i),
                ledger_ids=[],
            )
            for i in range(n)
        )


async def _sealed(data: bytes, data_key: bytes, object_id: str) -> AsyncIterator[bytes]:
    sealer = Sealer(data_key, object_id)
    yield sealer.header
    async for chunk in _chunks(data):
        for piece in sealer.feed(chunk):
            yield piece
    yield sealer.finish()


async def _models(sessions: async_sessionmaker[AsyncSession], root: Path, org: str, n: int,
                  size: int) -> None:  # fmt: skip
    """Fine-tuned models with adapters sealed as a training job seals them."""
    for i in range(n):
        dc, job = DATACENTERS[i % 3], new_id("ftjob")
        async with sessions.begin() as session:
            kek = await files.organisation_kek(session, master_key=MASTER, org_id=org, create=True)
        data_key, wrapped = files.new_data_key(kek, job)
        object_id, data = f"{job}/adapter", os.urandom(size)
        store = store_from_uri(f"file://{root / dc}")
        object_key = new_id("obj")
        await store.write(object_key, _sealed(data, data_key, object_id))
        async with sessions.begin() as session:
            model = ModelRow(id=new_id("mdl"), name=f"ft-{i}", owner_org_id=org,
                             engine="llamacpp", capabilities=["chat"], context_length=2048,
                             base_model_id="base", lineage={"job": job})  # fmt: skip
            session.add(model)
            await session.flush()
            session.add(ModelAdapterRow(
                model_id=model.id, org_id=org, format="gguf-lora", store_uri=store.uri,
                object_key=object_key, object_id=object_id, wrapped_key=wrapped,
                sha256=hashlib.sha256(data).hexdigest(), size_bytes=size, datacenter_id=dc,
            ))  # fmt: skip


async def _download(sessions: async_sessionmaker[AsyncSession], export_id: str,
                    into: Path) -> None:  # fmt: skip
    async with sessions() as session:
        row = await session.get(ExportRow, export_id)
        assert row is not None and row.status == "succeeded", row and row.error
        kek = await files.organisation_kek(session, master_key=MASTER, org_id=row.org_id,
                                           create=False)  # fmt: skip
    data_key = unwrap(kek, bytes.fromhex(row.wrapped_key or ""), row.id)
    with into.open("wb") as out:
        async for piece in open_sealed(
            store_from_uri(row.store_uri or "").read(row.object_key or ""), data_key, row.id
        ):
            out.write(piece)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.database if args.database != "sqlite" else f"sqlite+aiosqlite:///{root}/b.db"
        engine = create_engine_unpooled(url)
        await upgrade(engine)
        sessions = session_factory(engine)
        factory = Factory(sessions)
        for dc in DATACENTERS:
            await factory.datacenter(dc, country=dc[:2].upper())
        tenant = await factory.tenant(roles={"own": Role.OWNER})
        org = tenant.org_id
        began = time.perf_counter()
        await _usage(sessions, org, args.records)
        await _files(sessions, root / "stores", org, args.files, args.file_mb * MIB)
        await _models(sessions, root / "stores", org, args.models, args.adapter_mb * MIB)
        print(f"setup: {time.perf_counter() - began:.1f} s")

        key = Ed25519PrivateKey.generate()
        stores = {dc: f"file://{root / 'stores' / dc}" for dc in DATACENTERS}
        runner = ExportRunner(sessions, master_key=MASTER, signing_key=key, file_stores=stores)
        async with sessions.begin() as session:
            row = ExportRow(id=new_id("exp"), org_id=org, status="queued", attempts=0)
            session.add(row)
        began = time.perf_counter()
        assert await runner.run_once() == 1
        export_s = time.perf_counter() - began
        archive = root / "export.tar"
        await _download(sessions, row.id, archive)
        began = time.perf_counter()
        verdict = verify_archive(archive, key.public_key())
        verify_s = time.perf_counter() - began
        assert verdict.ok, verdict.problems
        size = archive.stat().st_size
        print(f"export: {export_s:.2f} s for {verdict.objects} objects, archive {size / MIB:.1f} "
              f"MiB ({size / MIB / export_s:.0f} MiB/s); offline verification {verify_s:.2f} s")  # fmt: skip

        operator = Principal("bench", "bench", "bench", None, None, Role.OPERATOR,
                             scopes_of(Role.OPERATOR))  # fmt: skip
        began = time.perf_counter()
        async with sessions.begin() as session:
            erasure = await erasures.erase_organisation(
                session, principal=operator, org_id=org, signing_key=key
            )
        committed_s = time.perf_counter() - began
        await erasures.remove_objects(erasure.objects)
        erase_s = time.perf_counter() - began
        document = erasure.certificate["document"]
        print(f"erasure: {erase_s:.2f} s (its transaction {committed_s:.2f} s), "
              f"{document['objects_deleted']} objects deleted in "
              f"{len(document['datacenters'])} datacenters")  # fmt: skip
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--file-mb", type=int, default=1)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--adapter-mb", type=int, default=20)
    parser.add_argument("--database", default="sqlite")
    asyncio.run(main(parser.parse_args()))
