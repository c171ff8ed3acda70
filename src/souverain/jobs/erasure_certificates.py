"""The certificate of an organisation's erasure: what was erased (counts and ids per kind),
the key material destroyed, the stores and datacenters that held its objects, and when;
signed with the installation's key exactly like a residency report, so anyone can check it
offline (`souverain reports verify`, or `souverain erasure verify`).

The certificate is kept (`erasure_certificates`), outside the organisation's own rows, so
that erasing an organisation with nothing left to erase answers the same certificate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain import __version__
from souverain.core.signing import canonical_json, sign
from souverain.db.exports import ErasureCertificateRow
from souverain.db.jobs import FileRow, OrgKeyRow
from souverain.db.tables import ModelAdapterRow, OrganisationRow

KIND = "souverain.erasure-certificate/v1"
KINDS = ("files", "models", "deployments", "fine_tuning_jobs", "batches", "exports", "keys")


@dataclass(frozen=True)
class Place:
    """Where one erased object was: its store and datacenter, and its object key."""

    store_uri: str
    datacenter_id: str
    object_key: str


@dataclass
class Inventory:
    """What an erasure finds, gathered before anything is changed."""

    ids: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    places: list[Place] = field(default_factory=list)
    key: dict[str, Any] | None = None

    def add(self, kind: str, ids: list[str]) -> None:
        self.ids[kind] += ids


async def key_of(session: AsyncSession, org_id: str) -> dict[str, Any] | None:
    """The organisation's key material as the certificate names it: an id derived from its
    salt (which says nothing of the key without the master key) and its creation time."""
    row = await session.get(OrgKeyRow, org_id)
    if row is None:
        return None
    return {
        "key_id": hashlib.sha256(f"{org_id}:{row.salt}".encode()).hexdigest()[:32],
        "created_at": row.created_at.isoformat(),
    }


async def find_certificate(session: AsyncSession, *, org_id: str) -> dict[str, Any] | None:
    row = await session.get(ErasureCertificateRow, org_id)
    return None if row is None else dict(json.loads(row.certificate))


async def has_anything_to_erase(session: AsyncSession, *, org_id: str) -> bool:
    """Key material, a readable file or an adapter: what a new erasure would destroy."""
    if await session.get(OrgKeyRow, org_id) is not None:
        return True
    live = select(FileRow.id).where(FileRow.org_id == org_id, FileRow.status == "processed")
    if (await session.execute(live.limit(1))).first() is not None:
        return True
    adapters = select(ModelAdapterRow.model_id).where(ModelAdapterRow.org_id == org_id)
    return (await session.execute(adapters.limit(1))).first() is not None


async def issue(
    session: AsyncSession,
    *,
    org: OrganisationRow,
    inventory: Inventory,
    requested_by: str | None,
    started_at: datetime,
    finished_at: datetime,
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Sign the certificate and keep it (replacing an earlier one, which it names)."""
    earlier = await session.get(ErasureCertificateRow, org.id)
    document = {
        "kind": KIND,
        "organisation": {"id": org.id, "name": org.name},
        "requested_by": requested_by,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "crypto_erased_key": inventory.key,
        "erased": {
            kind: {"count": len(ids), "ids": sorted(ids)} for kind, ids in inventory.ids.items()
        },
        "stores": sorted({p.store_uri for p in inventory.places}),
        "datacenters": sorted({p.datacenter_id for p in inventory.places if p.datacenter_id}),
        "objects_deleted": len(inventory.places),
        "previous_certificate": None if earlier is None else _digest(earlier.certificate),
        "platform_version": __version__,
    }
    signed = sign(signing_key, document)
    text = canonical_json(signed).decode()
    if earlier is None:
        session.add(ErasureCertificateRow(org_id=org.id, certificate=text, issued_at=finished_at))
    else:
        earlier.certificate, earlier.issued_at = text, finished_at
    await session.flush()
    return signed


def _digest(certificate: str) -> str:
    return hashlib.sha256(certificate.encode()).hexdigest()
