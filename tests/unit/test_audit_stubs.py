"""Stubs left by a retention window: the chain verifies across them only when a sealed
`retention.audit` event of their organisation vouches for them; zero retention in policies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from souverain.core import audit
from souverain.core.errors import ZeroRetentionError
from souverain.core.policy import Policy, check_may_keep, intersect, widenings

KEY = Ed25519PrivateKey.generate()


class Chain:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.seals: list[dict[str, Any]] = []

    def add(self, org: str, action: str, day: int, details: str = "{}") -> None:
        prev = self.events[-1]["hash"] if self.events else audit.GENESIS
        event = {"seq": len(self.events) + 1, "time": f"2026-01-{day:02d}T00:00:00.000000Z",
                 "actor_type": "system", "actor_id": "controller", "actor_key_id": None,
                 "org_id": org, "action": action, "target_type": None, "target_id": None,
                 "outcome": "success", "details": details, "prev_hash": prev}  # fmt: skip
        event["hash"] = audit.event_hash(event)
        self.events.append(event)

    def seal(self) -> None:
        head = self.events[-1]
        signature, key = audit.sign_seal(KEY, head["seq"], head["hash"], "2026-02-01")
        self.seals.append({"seq": head["seq"], "hash": head["hash"], "sealed_at": "2026-02-01",
                           "signature": signature, "key_id": key})  # fmt: skip

    def stub(self, seq: int) -> None:
        event = self.events[seq - 1]
        event.update(actor_type="", action="", outcome="", details="", redacted=True)

    def vouch(self, org: str, *, before_day: int, through_seq: int) -> None:
        details = audit.removal_details(
            before=f"2026-01-{before_day:02d}T00:00:00.000000Z", through_seq=through_seq, events=1
        )
        self.add(org, audit.REMOVAL, 20, json.dumps(details, sort_keys=True, separators=(",", ":")))

    def verdict(self) -> audit.Verdict:
        head = self.events[-1]["seq"]
        return audit.verify_chain(self.events, self.seals, KEY.public_key(), head_seq=head)


@pytest.fixture
def chain() -> Chain:
    found = Chain()
    for day in range(1, 6):
        found.add("org_a", "file.upload", day)
    found.add("org_b", "file.upload", 6)
    found.seal()
    return found


class TestStubs:
    def test_stubs_vouched_for_by_a_sealed_removal_verify(self, chain: Chain) -> None:
        for seq in (1, 2, 3):
            chain.stub(seq)
        chain.vouch("org_a", before_day=4, through_seq=3)
        chain.seal()
        verdict = chain.verdict()
        assert verdict.ok, verdict.problems
        assert verdict.redacted == 3

    def test_a_stub_without_a_removal_record_is_reported(self, chain: Chain) -> None:
        chain.stub(2)
        assert chain.verdict().problems == ["seq 2: removed without a sealed retention record"]

    def test_the_removal_record_must_be_sealed(self, chain: Chain) -> None:
        chain.stub(1)
        chain.vouch("org_a", before_day=4, through_seq=3)
        assert not chain.verdict().ok

    def test_a_removal_vouches_only_for_its_organisation_its_time_and_its_range(
        self, chain: Chain
    ) -> None:
        chain.vouch("org_a", before_day=4, through_seq=3)
        chain.seal()
        for seq in (4, 6):  # day 4 is not before the cut-off; seq 6 is another tenant's
            chain.stub(seq)
        assert [p.split(":")[0] for p in chain.verdict().problems] == ["seq 4", "seq 6"]


class TestZeroRetentionPolicy:
    def test_either_level_turns_it_on_and_a_project_cannot_turn_off_the_ceiling(self) -> None:
        ceiling = Policy(zero_retention=True)
        assert intersect(ceiling, Policy()).zero_retention
        assert intersect(Policy(), Policy(zero_retention=True)).zero_retention
        assert widenings(ceiling, Policy()) == ["zero_retention: the ceiling requires it"]
        assert widenings(Policy(), Policy(zero_retention=True)) == []

    def test_storing_content_is_refused_naming_the_setting(self) -> None:
        check_may_keep(Policy(), "a batch")
        with pytest.raises(ZeroRetentionError) as refused:
            check_may_keep(Policy(zero_retention=True), "a batch", param="input_file_id")
        assert refused.value.code == "zero_data_retention"
        assert "zero_retention" in refused.value.message
