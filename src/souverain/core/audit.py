"""The audit chain, as pure functions: how an event is hashed, how seals are signed, and
how a chain is verified.

    hash(event) = SHA-256( canonical JSON of the event's fields, prev_hash included )

Each event names the hash of the one before it, so editing, deleting, inserting or
reordering an event breaks the chain at that point. A seal is the platform's Ed25519
signature over (seq, hash, sealed_at) of the chain head at that moment; it proves the
chain up to `seq` existed as it is, so truncating sealed events is detected too. Pruning
removes whole sealed segments only: the chain may then start after a sealed `seq`, from
that seal's hash.

An organisation's retention window reduces its old events to stubs (`redacted`: seq,
time, organisation and the two hashes, nothing it said), so the chain still links across
them. A stub's content can no longer be hashed, so it must be vouched for: by a later
`retention.audit` event of the same organisation, itself sealed, whose details say which
events it removed (`before` a time, up to `through_seq`). A stub nobody vouches for is
reported like an edit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from souverain.core.signing import canonical_json, key_id

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq",
    "time",
    "actor_type",
    "actor_id",
    "actor_key_id",
    "org_id",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "details",
    "prev_hash",
)


def event_hash(event: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({name: event[name] for name in HASHED_FIELDS})).hexdigest()


def seal_message(seq: int, head_hash: str, sealed_at: str) -> bytes:
    return canonical_json({"seq": seq, "hash": head_hash, "sealed_at": sealed_at})


def sign_seal(
    private_key: Ed25519PrivateKey, seq: int, head_hash: str, sealed_at: str
) -> tuple[str, str]:
    """(signature hex, key id)."""
    signature = private_key.sign(seal_message(seq, head_hash, sealed_at)).hex()
    return signature, key_id(private_key.public_key())


@dataclass
class Verdict:
    ok: bool = True
    events: int = 0
    seals: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_sealed_seq: int | None = None
    redacted: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 50:
            self.problems.append(problem)


def verify_chain(
    events: Sequence[dict[str, Any]],
    seals: Iterable[dict[str, Any]],
    public_key: Ed25519PublicKey,
    *,
    head_seq: int | None = None,
) -> Verdict:
    """Check every event's hash and link, every seal's signature and coverage.

    `events` in storage order; `head_seq` is what the chain head says the last seq is
    (detects truncation of events written after the last seal).
    """
    verdict = Verdict(events=len(events))
    by_seq = {int(e["seq"]): e for e in events}
    seals = list(seals)
    _check_seals(seals, public_key, verdict)
    if not events:
        if verdict.last_sealed_seq:
            verdict.fail(
                f"the chain is empty but a seal covers it up to seq {verdict.last_sealed_seq}"
            )
        return verdict
    verdict.first_seq, verdict.last_seq = int(events[0]["seq"]), int(events[-1]["seq"])
    expected_prev = _start_hash(verdict.first_seq, seals, verdict)
    previous_seq = verdict.first_seq - 1
    removals = _removals(events, verdict.last_sealed_seq or 0)
    for event in events:
        seq = int(event["seq"])
        if seq != previous_seq + 1:
            verdict.fail(f"seq {seq} follows seq {previous_seq}: events missing or reordered")
        if event["prev_hash"] != expected_prev:
            verdict.fail(f"seq {seq}: its prev_hash does not match the event before it")
        if event.get("redacted"):
            verdict.redacted += 1
            if not _vouched(event, removals):
                verdict.fail(f"seq {seq}: removed without a sealed retention record")
        elif event_hash(event) != event["hash"]:
            verdict.fail(f"seq {seq}: its content does not match its hash (edited)")
        expected_prev, previous_seq = event["hash"], seq
    for seal in seals:
        sealed = by_seq.get(int(seal["seq"]))
        if sealed is None:
            if int(seal["seq"]) > verdict.last_seq:
                verdict.fail(
                    f"a seal covers seq {seal['seq']} but the chain ends at seq {verdict.last_seq} (truncated)"
                )
            elif int(seal["seq"]) >= verdict.first_seq:
                verdict.fail(f"sealed event seq {seal['seq']} is missing")
        elif sealed["hash"] != seal["hash"]:
            verdict.fail(f"seq {seal['seq']} no longer has the hash its seal signed")
    if head_seq is not None and head_seq != verdict.last_seq:
        verdict.fail(
            f"the chain head says seq {head_seq} but the last event is seq {verdict.last_seq} (truncated)"
        )
    return verdict


REMOVAL = "retention.audit"


@dataclass(frozen=True)
class Removal:
    """What one sealed `retention.audit` event says it reduced to stubs."""

    seq: int
    org_id: str
    before: str  # events whose time is earlier
    through_seq: int


def removal_details(*, before: str, through_seq: int, events: int) -> dict[str, Any]:
    return {"before": before, "through_seq": through_seq, "events": events}


def _removals(events: Sequence[dict[str, Any]], last_sealed: int) -> list[Removal]:
    found = []
    for event in events:
        if event["action"] != REMOVAL or event.get("redacted") or int(event["seq"]) > last_sealed:
            continue
        details = json.loads(event["details"])
        found.append(
            Removal(
                int(event["seq"]), event["org_id"], details["before"], int(details["through_seq"])
            )
        )
    return found


def _vouched(stub: dict[str, Any], removals: list[Removal]) -> bool:
    seq = int(stub["seq"])
    return any(
        r.org_id == stub["org_id"]
        and r.seq > seq
        and seq <= r.through_seq
        and stub["time"] < r.before
        for r in removals
    )


def _check_seals(
    seals: list[dict[str, Any]], public_key: Ed25519PublicKey, verdict: Verdict
) -> None:
    from cryptography.exceptions import InvalidSignature

    for seal in seals:
        verdict.seals += 1
        message = seal_message(int(seal["seq"]), seal["hash"], seal["sealed_at"])
        try:
            public_key.verify(bytes.fromhex(seal["signature"]), message)
        except (InvalidSignature, ValueError):
            verdict.fail(f"the seal at seq {seal['seq']} has an invalid signature")
            continue
        verdict.last_sealed_seq = max(verdict.last_sealed_seq or 0, int(seal["seq"]))


def _start_hash(first_seq: int, seals: list[dict[str, Any]], verdict: Verdict) -> str:
    """The hash the first remaining event must link to: genesis, or a seal's (pruned)."""
    if first_seq == 1:
        return GENESIS
    boundary = next((s for s in seals if int(s["seq"]) == first_seq - 1), None)
    if boundary is None:
        verdict.fail(
            f"the chain starts at seq {first_seq} without a seal at seq {first_seq - 1} (deleted head)"
        )
        return ""
    return str(boundary["hash"])
