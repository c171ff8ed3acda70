"""Policies: the effective policy is the intersection, and a project may only narrow."""

from __future__ import annotations

from souverain.core.jurisdictions import EU
from souverain.core.policy import Policy, Site, complies, exclusion, intersect, widenings

PARIS = Site("par1", "FR", "FR", frozenset({"SecNumCloud", "HDS"}))
ZURICH = Site("zrh1", "CH", "CH", frozenset({"ISO27001"}))
VIRGINIA = Site("iad1", "US", "US", frozenset({"ISO27001"}))
FRANKFURT_US_OPERATOR = Site("fra2", "DE", "US", frozenset({"C5"}))


def jur(*codes: str) -> frozenset[str]:
    return frozenset(codes)


class TestExclusion:
    def test_unrestricted_allows_everything(self) -> None:
        assert all(complies(Policy(), site) for site in (PARIS, ZURICH, VIRGINIA))

    def test_groups_expand_to_their_countries(self) -> None:
        eu = Policy(jurisdictions=jur("EU"))
        assert complies(eu, PARIS)
        assert exclusion(eu, VIRGINIA) == "outside EU (US)"
        assert exclusion(eu, ZURICH) == "outside EU (CH)"
        assert complies(Policy(jurisdictions=jur("EU", "CH")), ZURICH)

    def test_certifications_are_all_required(self) -> None:
        policy = Policy(certifications=jur("SecNumCloud", "HDS"))
        assert complies(policy, PARIS)
        assert exclusion(Policy(certifications=jur("SecNumCloud", "C5")), PARIS) == "lacks C5"

    def test_operator_headquarters_can_exclude_an_eu_datacenter(self) -> None:
        policy = Policy(jurisdictions=jur("EU"), operator_jurisdictions=jur("EU"))
        assert exclusion(policy, FRANKFURT_US_OPERATOR) == "operator under US law"

    def test_empty_set_allows_nothing(self) -> None:
        assert not complies(Policy(jurisdictions=frozenset()), PARIS)


class TestIntersect:
    def test_effective_is_narrowest_of_both(self) -> None:
        ceiling = Policy(jurisdictions=jur("EU"), retention_days=30, content_logging=True)
        project = Policy(jurisdictions=jur("FR", "CH"), certifications=jur("HDS"), retention_days=7)
        effective = intersect(ceiling, project)
        assert effective.countries == {"FR"}
        assert effective.certifications == {"HDS"}
        assert effective.retention_days == 7 and not effective.content_logging

    def test_group_names_survive_when_whole(self) -> None:
        effective = intersect(
            Policy(jurisdictions=jur("EEA")), Policy(jurisdictions=jur("EU", "US"))
        )
        assert effective.jurisdictions == {"EU"}
        assert effective.countries == EU

    def test_unrestricted_side_takes_the_other(self) -> None:
        assert intersect(Policy(), Policy(datacenters=jur("par1"))).datacenters == {"par1"}


class TestWidening:
    def test_narrowing_is_fine(self) -> None:
        ceiling = Policy(jurisdictions=jur("EU"), certifications=jur("ISO27001"), retention_days=30)
        assert (
            widenings(
                ceiling,
                Policy(jurisdictions=jur("FR", "DE"), certifications=jur("ISO27001", "HDS")),
            )
            == []
        )

    def test_each_widening_is_named(self) -> None:
        ceiling = Policy(
            jurisdictions=jur("EU"),
            datacenters=jur("par1"),
            certifications=jur("HDS"),
            operator_jurisdictions=jur("EU"),
            retention_days=0,
            content_logging=False,
        )
        problems = widenings(
            ceiling,
            Policy(
                jurisdictions=jur("EU", "US"),
                datacenters=None,
                retention_days=30,
                content_logging=True,
            ),
        )
        assert problems == [
            "jurisdictions: US not allowed by the ceiling",
            "retention: 30 days exceeds the ceiling's 0",
            "content_logging: the ceiling forbids it",
        ]

    def test_what_a_project_leaves_open_it_inherits(self) -> None:
        ceiling = Policy(
            jurisdictions=jur("EU"),
            datacenters=jur("par1"),
            certifications=jur("HDS"),
            operator_jurisdictions=jur("EU"),
        )
        project = Policy(jurisdictions=jur("FR"))
        assert widenings(ceiling, project) == []
        effective = intersect(ceiling, project)
        assert effective.operator_jurisdictions == {"EU"}
        assert effective.datacenters == {"par1"}
        assert effective.certifications == {"HDS"}

    def test_a_group_is_a_widening_of_a_country(self) -> None:
        assert widenings(Policy(jurisdictions=jur("FR")), Policy(jurisdictions=jur("EU")))
