"""What an export takes from the database: usage records (CSV and JSON lines), monthly
invoices, policies and data controls, keys' metadata, the audit events with their chain
proof, and a signed residency report. Never a key's secret or hash, never another
organisation's row (every query names the organisation).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.signing import sign
from souverain.db.audit import AuditEventRow, AuditSealRow
from souverain.db.data_controls import DataControlsRow
from souverain.db.tables import (
    ApiKeyRow,
    OrganisationRow,
    SovereigntyPolicyRow,
    UsageRecordRow,
)
from souverain.evidence.audit_log import as_dict, seal_dict
from souverain.jobs.exports.archive import Entry, entry_of
from souverain.jobs.exports.stored import Counts, columns, jsonl, pretty
from souverain.metering.invoices import invoice_of
from souverain.sovereignty.residency import report_of

PAGE = 5000
KEY_SECRETS = frozenset({"secret_hash"})


async def usage_entries(
    sessions: async_sessionmaker[AsyncSession], *, org: OrganisationRow, counts: Counts
) -> AsyncIterator[Entry]:
    """Usage records in CSV and JSON lines, then an invoice per month that has any."""
    rows = await _usage(sessions, org.id)
    counts.add("usage_records", len(rows))
    yield entry_of("usage/usage_records.jsonl", jsonl(rows))
    yield entry_of("usage/usage_records.csv", _csv(rows))
    months = sorted({row["created_at"].strftime("%Y-%m") for row in rows})
    for month in months:
        async with sessions() as session:
            invoice = await invoice_of(session, org_id=org.id, org_name=org.name, period=month)
        counts.add("invoices")
        yield entry_of(f"invoices/{month}.json", pretty(invoice))


async def _usage(sessions: async_sessionmaker[AsyncSession], org_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        async with sessions() as session:
            query = (
                select(UsageRecordRow)
                .where(UsageRecordRow.org_id == org_id, UsageRecordRow.id > after)
                .order_by(UsageRecordRow.id)
                .limit(PAGE)
            )
            page = [columns(r) for r in (await session.execute(query)).scalars()]
        found += page
        if len(page) < PAGE:
            return sorted(found, key=lambda r: (r["created_at"], r["id"]))
        after = page[-1]["id"]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    names = [c.key for c in UsageRecordRow.__table__.columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue().encode()


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


async def settings_entries(
    sessions: async_sessionmaker[AsyncSession], *, org_id: str, counts: Counts
) -> AsyncIterator[Entry]:
    """Policies (every version), data controls and API keys' metadata."""
    async with sessions() as session:
        versions = (await session.execute(
            select(SovereigntyPolicyRow).where(SovereigntyPolicyRow.org_id == org_id)
            .order_by(SovereigntyPolicyRow.created_at, SovereigntyPolicyRow.id)
        )).scalars()  # fmt: skip
        policies = [columns(v) for v in versions]
        controls = await session.get(DataControlsRow, org_id)
        keys = (await session.execute(
            select(ApiKeyRow).where(ApiKeyRow.org_id == org_id).order_by(ApiKeyRow.created_at)
        )).scalars()  # fmt: skip
        key_rows = [columns(k, leave_out=KEY_SECRETS) for k in keys]
    counts.add("api_keys", len(key_rows))
    document = {
        "sovereignty_policies": policies,
        "data_controls": None if controls is None else columns(controls),
    }
    yield entry_of("policies/policies.json", pretty(document))
    yield entry_of("keys/api_keys.json", pretty(key_rows))


async def audit_entries(
    sessions: async_sessionmaker[AsyncSession], *, org_id: str, sealed_seq: int, counts: Counts
) -> AsyncIterator[Entry]:
    """The organisation's events up to the seal taken when the export started, and the
    proof: every link (seq, prev_hash, hash; no content) from its first event to that
    seal, and the seal itself. Other organisations' events appear only as hashes."""
    async with sessions() as session:
        events = [
            as_dict(r)
            for r in (await session.execute(
                select(AuditEventRow)
                .where(AuditEventRow.org_id == org_id, AuditEventRow.seq <= sealed_seq)
                .order_by(AuditEventRow.seq)
            )).scalars()
        ]  # fmt: skip
        first = int(events[0]["seq"]) if events else sealed_seq
        links = [
            {"seq": seq, "prev_hash": prev, "hash": digest}
            for seq, prev, digest in (await session.execute(
                select(AuditEventRow.seq, AuditEventRow.prev_hash, AuditEventRow.hash)
                .where(AuditEventRow.seq >= first, AuditEventRow.seq <= sealed_seq)
                .order_by(AuditEventRow.seq)
            )).all()
        ]  # fmt: skip
        seal = await session.get(AuditSealRow, sealed_seq)
    counts.add("audit_events", len(events))
    proof = {"links": links, "seal": None if seal is None else seal_dict(seal)}
    yield entry_of("audit/events.jsonl", jsonl(events))
    yield entry_of("audit/chain_proof.json", pretty(proof))


async def residency_entry(
    sessions: async_sessionmaker[AsyncSession],
    *,
    org: OrganisationRow,
    until: datetime,
    signing_key: Ed25519PrivateKey,
    requested_by: str | None,
) -> AsyncIterator[Entry]:
    """A residency report over the organisation's whole life, signed like any other."""
    async with sessions() as session:
        document = await report_of(
            session, org=org, since=org.created_at, until=until, generated_by=requested_by
        )
    yield entry_of("reports/residency.json", pretty(sign(signing_key, document)))
