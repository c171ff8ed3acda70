"""Crypto-erasure of an organisation: everything its keys protected stops, in one
transaction.

Deleting the organisation's key material (`files.crypto_erase`) makes its files
unreadable; what was made from them must stop too. Its fine-tuned models lose their
adapters (the rows that named the sealed objects and their wrapped keys), so they can
never be deployed again; their deployments are deleted, which takes them out of the
gateway's routes at its next refresh and makes the controller stop their replicas, whose
supervisors delete the decrypted adapter from the node as they stop; its fine-tuning
jobs are cancelled, which deletes their decrypted data on the training node; its
batches that have not ended fail, and its exports are erased.

Then deletion: once that transaction committed, the objects it made unreadable (files,
adapters, export archives) are deleted from their stores (`remove_objects`). The whole
erasure is one transaction, so it is never half done; a crash before the deletions leaves
only ciphertext nobody can open, and erasing again is answered with the same certificate
(`jobs.erasure_certificates`), signed by the installation's key.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.status import BATCH_ACTIVE
from souverain.db.exports import ExportRow
from souverain.db.jobs import BatchRow, FileRow, FineTuningJobRow
from souverain.db.tables import DeploymentRow, ModelAdapterRow, OrganisationRow, utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.jobs import erasure_certificates as certificates
from souverain.jobs.deployments.service import retire
from souverain.jobs.erasure_certificates import Place
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.storage.stores import StoreError, store_from_uri

REASON = "its organisation's keys were erased"


@dataclass(frozen=True)
class Erased:
    files: int
    models: int
    deployments: int
    jobs: int
    batches: int


@dataclass(frozen=True)
class Erasure:
    """What one call did: the counts, the signed certificate, and the objects whose
    deletion from their stores is the caller's once the erasure is committed (empty when
    the organisation had nothing left: the certificate is then the one issued before)."""

    erased: Erased
    certificate: dict[str, Any]
    objects: list[Place]


async def erase_organisation(
    session: AsyncSession, *, principal: Principal, org_id: str, signing_key: Ed25519PrivateKey
) -> Erasure:
    """Owners and operators; audited. Idempotent: an organisation with nothing left to
    erase answers the certificate it was given; one with new data is erased again, and its
    new certificate names the previous one."""
    check_org(principal, org_id, Scope.OWN)
    earlier = await certificates.find_certificate(session, org_id=org_id)
    if earlier is not None and not await certificates.has_anything_to_erase(session, org_id=org_id):
        return Erasure(_counts_of(earlier), earlier, [])
    started, org = utcnow(), await session.get(OrganisationRow, org_id)
    assert org is not None  # the caller resolved it
    inventory = certificates.Inventory(key=await certificates.key_of(session, org_id))
    await _inventory_files(session, org_id, inventory)
    await _inventory_exports(session, org_id, inventory)
    erased = await _erase(session, principal=principal, org_id=org_id, inventory=inventory)
    certificate = await certificates.issue(
        session, org=org, inventory=inventory, requested_by=principal.key_id,
        started_at=started, finished_at=utcnow(), signing_key=signing_key,
    )  # fmt: skip
    await audit.record(
        session, actor=audit.actor_of(principal), action="org.erasure_certificate",
        org_id=org_id, target_type="organisation", target_id=org_id,
        details={kind: len(ids) for kind, ids in inventory.ids.items()},
    )  # fmt: skip
    return Erasure(erased, certificate, inventory.places)


def _counts_of(certificate: dict[str, Any]) -> Erased:
    erased = certificate["document"]["erased"]
    return Erased(*(erased[kind]["count"] for kind in
                    ("files", "models", "deployments", "fine_tuning_jobs", "batches")))  # fmt: skip


async def _inventory_files(
    session: AsyncSession, org_id: str, inventory: certificates.Inventory
) -> None:
    query = select(FileRow).where(FileRow.org_id == org_id, FileRow.status == "processed")
    for row in (await session.execute(query)).scalars():
        inventory.add("files", [row.id])
        inventory.places.append(Place(row.store_uri, row.datacenter_id, row.object_key))
    if inventory.key is not None:
        inventory.add("keys", [inventory.key["key_id"]])


async def _inventory_exports(
    session: AsyncSession, org_id: str, inventory: certificates.Inventory
) -> None:
    """Exports were sealed with the organisation's key: they go with it. One still being
    written fails (its runner loses its lease) and leaves nothing."""
    query = select(ExportRow).where(ExportRow.org_id == org_id, ExportRow.status != "erased")
    for row in (await session.execute(query)).scalars():
        inventory.add("exports", [row.id])
        if row.store_uri and row.object_key:
            inventory.places.append(Place(row.store_uri, row.datacenter_id or "", row.object_key))
        # a runner writing it keeps its lease: its write-back sees `erased` and deletes
        # the object it wrote
        row.status, row.error = "erased", f"Export erased: {REASON}"


async def _erase(
    session: AsyncSession,
    *,
    principal: Principal,
    org_id: str,
    inventory: certificates.Inventory,
) -> Erased:
    erased_files = await files.crypto_erase(session, principal=principal, org_id=org_id)
    actor = audit.actor_of(principal)
    adapters = list(
        (
            await session.execute(select(ModelAdapterRow).where(ModelAdapterRow.org_id == org_id))
        ).scalars()
    )
    models = [a.model_id for a in adapters]
    inventory.add("models", models)
    inventory.places += [Place(a.store_uri, a.datacenter_id, a.object_key) for a in adapters]
    await session.execute(delete(ModelAdapterRow).where(ModelAdapterRow.org_id == org_id))
    deployments = list(
        (
            await session.execute(
                select(DeploymentRow).where(
                    DeploymentRow.model_id.in_(models), DeploymentRow.deleted.is_(False)
                )
            )
        ).scalars()
    )
    for deployment in deployments:
        await retire(session, deployment=deployment, actor=actor, reason=REASON)
    inventory.add("deployments", [d.id for d in deployments])
    jobs = list(
        (
            await session.execute(
                select(FineTuningJobRow).where(
                    FineTuningJobRow.org_id == org_id,
                    FineTuningJobRow.status.in_(fine_tuning.ACTIVE),
                )
            )
        ).scalars()
    )
    for job in jobs:
        await _cancel(session, job)
    inventory.add("fine_tuning_jobs", [j.id for j in jobs])
    stopped = await _fail_batches(session, org_id=org_id)
    inventory.add("batches", stopped)
    return Erased(erased_files, len(models), len(deployments), len(jobs), len(stopped))


async def remove_objects(objects: list[Place]) -> None:
    """Delete the erased objects from their stores (after the erasure committed: their
    keys are gone already, so what a crash leaves here is unreadable ciphertext)."""
    for place in objects:
        with contextlib.suppress(StoreError, OSError):
            await store_from_uri(place.store_uri).delete(place.object_key)


async def _fail_batches(session: AsyncSession, *, org_id: str) -> list[str]:
    """The organisation's batches that have not ended fail at once: their results could
    never be sealed or read again. A runner holding one loses its lease and stops."""
    batches = list(
        (
            await session.execute(
                select(BatchRow).where(BatchRow.org_id == org_id, BatchRow.status.in_(BATCH_ACTIVE))
            )
        ).scalars()
    )
    now = utcnow()
    for batch in batches:
        batch.status, batch.failed_at = "failed", now
        batch.errors = [{"code": "keys_erased", "message": f"Batch failed: {REASON}",
                         "param": None, "line": None}]  # fmt: skip
        batch.lock_token, batch.lock_expires_at = None, None
    return [b.id for b in batches]


async def _cancel(session: AsyncSession, job: FineTuningJobRow) -> None:
    """Stop the job: at once if nothing runs, else the controller kills its worker."""
    job.wanted = "cancel"
    if job.status != "running" and not (job.status == "paused" and job.node_id is not None):
        job.status, job.finished_at = "cancelled", utcnow()
    job.error = {"code": "keys_erased", "message": f"Job cancelled: {REASON}", "param": None}
    await fine_tuning.add_event(session, job, f"Job cancelled: {REASON}", level="warn")
