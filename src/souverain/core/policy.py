"""Sovereignty policies: where a tenant's data may be processed. Pure functions only.

A policy names allowed jurisdictions (ISO countries and groups such as EU, EEA), allowed
datacenters, required datacenter certifications, allowed operator headquarters
jurisdictions, prompt/completion retention, content logging and zero data retention.
`None` means "no restriction" for a set; an empty set allows nothing.

    effective = org ceiling ∩ project policy           (intersect)
    a project policy may only narrow its ceiling        (widenings → reasons; what it
                                                         leaves open, it inherits)
    a site complies when no constraint excludes it      (exclusion → a reason)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from souverain.core.errors import ZeroRetentionError
from souverain.core.jurisdictions import GROUPS, is_country


@dataclass(frozen=True)
class Site:
    """The facts about a datacenter that sovereignty is decided on."""

    id: str
    country: str
    operator_country: str
    certifications: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    jurisdictions: frozenset[str] | None = None  # countries and groups, as written
    datacenters: frozenset[str] | None = None
    certifications: frozenset[str] = field(default_factory=frozenset)  # all required
    operator_jurisdictions: frozenset[str] | None = None
    retention_days: int = 0  # 0: prompts and completions are not kept
    content_logging: bool = False
    # Nothing of the tenant's content may outlive a request: endpoints that must store
    # content (files, batches, fine-tuning) refuse. Either level turns it on.
    zero_retention: bool = False

    @property
    def countries(self) -> frozenset[str] | None:
        return None if self.jurisdictions is None else expand(self.jurisdictions)

    @property
    def operator_countries(self) -> frozenset[str] | None:
        return None if self.operator_jurisdictions is None else expand(self.operator_jurisdictions)


UNRESTRICTED = Policy()


def is_jurisdiction(code: str) -> bool:
    return code in GROUPS or is_country(code)


def expand(codes: Iterable[str]) -> frozenset[str]:
    """Groups to their member countries: {"EU", "CH"} -> the 27 member states and CH."""
    countries: set[str] = set()
    for code in codes:
        countries |= GROUPS.get(code, {code})
    return frozenset(countries)


def describe(codes: frozenset[str] | None) -> str:
    return "anywhere" if codes is None else "+".join(sorted(codes)) or "nowhere"


def _meet(
    a: frozenset[str] | None, b: frozenset[str] | None, *, countries: bool
) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    if not countries:
        return a & b
    common = expand(a) & expand(b)
    # Keep a group's name when the whole group survives, for readable policies.
    named = {g for g in (a | b) if g in GROUPS and GROUPS[g] <= common}
    covered = expand(named)
    return frozenset(named | (common - covered))


def intersect(ceiling: Policy, project: Policy) -> Policy:
    """The effective policy: everything both allow, everything either requires."""
    return Policy(
        jurisdictions=_meet(ceiling.jurisdictions, project.jurisdictions, countries=True),
        datacenters=_meet(ceiling.datacenters, project.datacenters, countries=False),
        certifications=ceiling.certifications | project.certifications,
        operator_jurisdictions=_meet(
            ceiling.operator_jurisdictions, project.operator_jurisdictions, countries=True
        ),
        retention_days=min(ceiling.retention_days, project.retention_days),
        content_logging=ceiling.content_logging and project.content_logging,
        zero_retention=ceiling.zero_retention or project.zero_retention,
    )


def widenings(ceiling: Policy, candidate: Policy) -> list[str]:
    """Why `candidate` allows more than `ceiling` (empty when it only narrows). A dimension
    the candidate leaves open (`None`, or no certification) inherits the ceiling's, since
    the effective policy is their intersection: only what it names can widen."""
    problems = []
    for name, wide, narrow in (
        ("jurisdictions", ceiling.countries, candidate.countries),
        ("datacenters", ceiling.datacenters, candidate.datacenters),
        ("operator_jurisdictions", ceiling.operator_countries, candidate.operator_countries),
    ):
        if wide is not None and narrow is not None and (extra := narrow - wide):
            problems.append(f"{name}: {', '.join(sorted(extra))} not allowed by the ceiling")
    if candidate.retention_days > ceiling.retention_days:
        problems.append(
            f"retention: {candidate.retention_days} days exceeds the ceiling's {ceiling.retention_days}"
        )
    if candidate.content_logging and not ceiling.content_logging:
        problems.append("content_logging: the ceiling forbids it")
    if ceiling.zero_retention and not candidate.zero_retention:
        problems.append("zero_retention: the ceiling requires it")
    return problems


def exclusion(policy: Policy, site: Site) -> str | None:
    """Why `site` may not process data under `policy`, or None when it may."""
    countries = policy.countries
    if countries is not None and site.country not in countries:
        return f"outside {describe(policy.jurisdictions)} ({site.country})"
    if policy.datacenters is not None and site.id not in policy.datacenters:
        return f"datacenter {site.id} not allowed"
    if missing := policy.certifications - site.certifications:
        return f"lacks {', '.join(sorted(missing))}"
    operators = policy.operator_countries
    if operators is not None and site.operator_country not in operators:
        return f"operator under {site.operator_country} law"
    return None


def complies(policy: Policy, site: Site) -> bool:
    return exclusion(policy, site) is None


def check_may_keep(policy: Policy, what: str, *, param: str | None = None) -> None:
    """Refuse to store `what` (files, a batch, a fine-tuning job) under zero retention."""
    if policy.zero_retention:
        raise ZeroRetentionError(
            f"Zero data retention is on for this organisation or project (the policy's "
            f"`zero_retention`): {what} would keep your content, so nothing was stored. "
            "Chat, completions and embeddings work and keep nothing.",
            param=param,
        )
