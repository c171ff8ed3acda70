"""Which adapters a shared replica holds and when an outdated one stops
(jobs/deployments/sharing.py): pure decisions, no fixtures."""

from __future__ import annotations

from souverain.core.policy import UNRESTRICTED, Policy, Site
from souverain.db.tables import ReplicaRow
from souverain.jobs.deployments import sharing

PARIS, BERLIN = Site("par1", "FR", "FR"), Site("ber1", "DE", "DE")


def hosted(model_id: str, policy: Policy = UNRESTRICTED, error: str = "") -> sharing.Hosted:
    return sharing.Hosted(model_id, f"dep-{model_id}", "org", policy, None, error)


def replica(state: str, adapters: list[dict[str, object]] | None = None) -> ReplicaRow:
    return ReplicaRow(id=state, state=state, adapters=adapters or [])


class TestWantedAt:
    def test_an_adapter_goes_only_where_its_owners_policy_allows(self) -> None:
        french = Policy(jurisdictions=frozenset({"FR"}))
        found = [hosted("b"), hosted("a", french), hosted("gone", error="erased")]
        assert sharing.wanted_at(PARIS, found) == ("a", "b")
        assert sharing.wanted_at(BERLIN, found) == ("b",)


class TestHeld:
    def test_held_lists_every_adapter_in_the_engines_order(self) -> None:
        row = replica("ready", [{"model": "a", "error": ""}, {"model": "x", "error": "sha256"},
                                {"model": "b", "error": ""}, {"model": "c", "error": None}])  # fmt: skip
        assert sharing.held(row) == ("a", "x", "b", "c")

    def test_one_adapter_per_model_however_many_shared_deployments(self) -> None:
        assert sharing.wanted_at(PARIS, [hosted("a"), hosted("a"), hosted("b")]) == ("a", "b")

    def test_a_replica_and_an_organisation_hold_a_bounded_number_the_oldest_first(
        self,
    ) -> None:
        many = [sharing.Hosted(f"m{i:02}", f"d{i}", f"org{i % 10}", UNRESTRICTED, None)
                for i in range(100)]  # fmt: skip
        held = sharing.wanted_at(PARIS, many)
        assert held == tuple(f"m{i:02}" for i in range(sharing.PER_REPLICA))
        one_org = [sharing.Hosted(f"m{i:02}", f"d{i}", "org", UNRESTRICTED, None)
                   for i in range(20)]  # fmt: skip
        assert len(sharing.wanted_at(PARIS, one_org)) == sharing.PER_ORG

    def test_a_capped_adapter_says_why_it_waits(self) -> None:
        full = replica("ready", [{"model": f"m{i}", "error": ""} for i in range(sharing.PER_ORG)])
        mine = {f"m{i}" for i in range(sharing.PER_ORG)} | {"new"}
        status, reason = sharing.shared_status(sharing.served("new", [full], mine))
        assert status == "pending" and "its organisation has" in reason


class TestRolling:
    def test_an_outdated_replica_serves_until_enough_new_ones_are_ready(self) -> None:
        old, broken = replica("ready"), replica("failed")
        assert sharing.to_stop([old, broken], [replica("starting")], 1) == [broken]
        assert sharing.to_stop([old, broken], [replica("ready")], 1) == [old, broken]
        assert sharing.to_stop([old], [], 0) == [old]  # deleted or scaled to zero

    def test_a_replica_holding_an_erased_adapter_stops_at_once(self) -> None:
        holding = replica("ready", [{"model": "gone", "error": ""}])
        assert sharing.must_unload(holding, PARIS, [], {"gone"})
        assert sharing.to_stop([holding], [replica("starting")], 1, urgent={"ready"}) == [holding]

    def test_a_replica_where_its_adapters_owner_no_longer_allows_it_must_unload(self) -> None:
        holding = replica("ready", [{"model": "a", "error": ""}])
        french = Policy(jurisdictions=frozenset({"FR"}))
        assert sharing.must_unload(holding, PARIS, [hosted("a", french)], set()) is None
        assert "no longer allows" in (sharing.must_unload(holding, BERLIN, [hosted("a", french)],
                                                          set()) or "")  # fmt: skip


class TestSharedStatus:
    def test_ready_where_loaded_failed_where_refused(self) -> None:
        holding = [replica("ready", [{"model": "a", "error": ""}, {"model": "b", "error": "no"}])]
        assert sharing.shared_status(sharing.served("a", holding))[0] == "ready"
        status, reason = sharing.shared_status(sharing.served("b", holding))
        assert status == "failed" and "no" in reason
        assert sharing.shared_status(sharing.served("c", holding))[0] == "pending"


class TestHeldFirst:
    def test_an_adapter_a_replica_holds_keeps_its_room_before_an_older_one(self) -> None:
        older, newer = hosted("older"), hosted("newer")  # one organisation's, oldest first
        capped = sharing.PER_ORG
        others = [hosted(f"m{i}") for i in range(capped - 1)]
        assert "newer" not in sharing.wanted_at(PARIS, [older, *others, newer])
        holding = ("newer", *(f"m{i}" for i in range(capped - 1)))
        kept = sharing.wanted_at(PARIS, [older, *others, newer], holding)
        assert "newer" in kept and "older" not in kept
