"""Residency reports: where an organisation's requests were processed, checked against the
policy in force at the time of each request, signed by the platform.

Each usage record carries the facts of the site that processed it (datacenter, country,
operator's country, certifications) as they were then, so a datacenter changed later
does not rewrite history.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain import __version__
from souverain.core.access import check_org
from souverain.core.errors import InvalidRequestError
from souverain.core.policy import Site, describe, exclusion
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.signing import sign
from souverain.db.jobs import FileRow
from souverain.db.tables import DatacenterRow, OrganisationRow, UsageRecordRow, utcnow
from souverain.evidence import audit
from souverain.fleet.datacenters import site_of
from souverain.metering.usage import as_utc
from souverain.sovereignty import policies
from souverain.tenancy import orgs


async def residency(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    since: datetime,
    until: datetime,
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.AUDIT)
    since, until = as_utc(since), as_utc(until)
    if until <= since:
        raise InvalidRequestError("'to' must be after 'from'", param="to")
    document = await report_of(
        session, org=org, since=since, until=until, generated_by=principal.key_id
    )
    await audit.record(
        session,
        actor=audit.actor_of(principal),
        action="report.residency",
        org_id=org.id,
        target_type="organisation",
        target_id=org.id,
        details={
            "from": since.isoformat(),
            "to": until.isoformat(),
            "records": document["records"]["count"],
        },
    )
    return sign(signing_key, document)


async def report_of(
    session: AsyncSession,
    *,
    org: OrganisationRow,
    since: datetime,
    until: datetime,
    generated_by: str | None,
) -> dict[str, Any]:
    """The report's document, unsigned (the caller checked who may read it)."""
    history = await policies.history(session, org_id=org.id)
    query = (
        select(UsageRecordRow)
        .where(UsageRecordRow.org_id == org.id)
        .where(UsageRecordRow.created_at >= since, UsageRecordRow.created_at < until)
        .order_by(UsageRecordRow.created_at, UsageRecordRow.id)
    )
    records = list((await session.execute(query)).scalars())
    stored = await _files(session, org.id, since, until, history)
    document = {
        "kind": "souverain.residency-report/v1",
        "organisation": {"id": org.id, "name": org.name},
        "period": {"from": since.isoformat(), "to": until.isoformat()},
        "generated_at": utcnow().isoformat(),
        "generated_by": generated_by,
        "platform_version": __version__,
        **_tally(records, history),
        "files": stored,
    }
    document["compliant"] = document["compliant"] and not stored["violations"]
    return document


async def _files(
    session: AsyncSession,
    org_id: str,
    since: datetime,
    until: datetime,
    history: list[policies.PolicyVersion],
) -> dict[str, Any]:
    """Where the organisation's files stored in the period are kept, each checked against
    the policy in force when it was stored."""
    query = (
        select(FileRow, DatacenterRow)
        .join(DatacenterRow, DatacenterRow.id == FileRow.datacenter_id)
        .where(FileRow.org_id == org_id, FileRow.created_at >= since, FileRow.created_at < until)
    )
    per_site: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    violations = []
    for row, dc in (await session.execute(query)).all():
        totals = per_site[(dc.id, dc.country)]
        totals[0] += 1
        totals[1] += row.bytes
        site = site_of(dc)
        policy = policies.in_force(history, project_id=row.project_id, at=row.created_at)
        reason = exclusion(policy, site)
        if reason is not None:
            violations.append({"file_id": row.id, "datacenter": dc.id, "reason": reason})
    return {
        "by_datacenter": [
            {"datacenter": dc, "country": country, "files": n, "bytes": size}
            for (dc, country), (n, size) in sorted(per_site.items())
        ],
        "violations": violations,
    }


def _tally(records: list[UsageRecordRow], history: list[policies.PolicyVersion]) -> dict[str, Any]:
    per_site: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    per_country: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    violations = []
    not_processed = 0
    for record in records:
        if record.datacenter_id is None or record.country is None:
            not_processed += 1  # refused or failed before any engine saw it
            continue
        tokens = (1, record.prompt_tokens, record.completion_tokens)
        for totals in (
            per_site[(record.datacenter_id, record.country)],
            per_country[record.country],
        ):
            for i, value in enumerate(tokens):
                totals[i] += value
        site = Site(
            record.datacenter_id,
            record.country,
            record.operator_country or record.country,
            frozenset(record.certifications or ()),
        )
        policy = policies.in_force(history, project_id=record.project_id, at=record.created_at)
        reason = exclusion(policy, site)
        if reason is not None:
            violations.append(
                {
                    "record_id": record.id,
                    "at": record.created_at.isoformat(),
                    "datacenter": record.datacenter_id,
                    "country": record.country,
                    "policy_jurisdictions": describe(policy.jurisdictions),
                    "reason": reason,
                }
            )
    return {
        "records": {
            "count": len(records),
            "processed": len(records) - not_processed,
            "not_processed": not_processed,
            "first": _edge(records[0]) if records else None,
            "last": _edge(records[-1]) if records else None,
        },
        "by_datacenter": [
            {
                "datacenter": dc,
                "country": country,
                "requests": r,
                "prompt_tokens": p,
                "completion_tokens": c,
            }
            for (dc, country), (r, p, c) in sorted(per_site.items())
        ],
        "by_country": [
            {"country": country, "requests": r, "prompt_tokens": p, "completion_tokens": c}
            for country, (r, p, c) in sorted(per_country.items())
        ],
        "violations": violations,
        "compliant": not violations,
    }


def _edge(record: UsageRecordRow) -> dict[str, str]:
    return {"id": record.id, "at": record.created_at.isoformat()}
