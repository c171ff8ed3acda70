"""A shared replica takes its new set of adapters while it serves, where its engine can.

When the set a ready replica should hold changes (a fine-tuned model shared, stopped,
deleted, erased, or its owner's policy changed; `sharing.wanted_at`), the controller sends
the set to the replica (`ClusterFacade.change_adapters`): its node checks and loads the new
adapters into the running engine and unloads the others, deleting their clear copies
(node/runtime_adapters.py). No engine starts, and a full cluster still takes new models.
The replica's `adapters` column is written from the node's answer in the same round, so
the route table sees the new ids at once. An adapter its node could not fetch from the
store (`ADAPTER_UNAVAILABLE`) makes the set be sent again the next round.

A replica still starting whose engine may load adapters as it runs (`takes_when_ready`:
its node has not named its program yet, or named llama-server, and it never answered
`runtime_load` False) keeps its place: it is sent the wanted set once ready, so a base
whose adapter set changes more often than it takes to start still becomes ready.

The rolling replacement (sharing.py) stays the way for everything else: a replica whose
engine loads adapters at start only (`runtime_load` False, remembered in `start_only` for
as long as this controller runs), or one that did not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from souverain.core.fleet import ADAPTER_UNAVAILABLE, AdapterState, HostedAdapter
from souverain.core.status import ReplicaState
from souverain.db.tables import ReplicaRow
from souverain.jobs.deployments import sharing
from souverain.jobs.facade import ClusterFacade
from souverain.node.hosted_adapters import RUNTIMES


@dataclass(frozen=True)
class LiveChange:
    """What one replica did: its new `adapters` column, and what came and went."""

    replica_id: str
    entries: list[dict[str, object]]
    loaded: list[str]
    unloaded: list[str]
    kept: list[str]  # could not leave yet: a running request uses them


def entries_of(states: Iterable[AdapterState]) -> list[dict[str, object]]:
    """A replica's `adapters` column from what its node reports (as the observer writes)."""
    return [{"model": s.model_id, "error": s.error, "lora": s.lora_id} for s in states]


def _to_retry(replica: ReplicaRow) -> bool:
    """Whether its node could not fetch one of its adapters from the store (a brief store
    or network error): the same set is sent again, once a round, and the node tries it."""
    return any(entry.get("error") == ADAPTER_UNAVAILABLE for entry in replica.adapters or ())


def takes_when_ready(replica: ReplicaRow, start_only: Set[str]) -> bool:
    """Whether a replica still starting will take a new set once ready, as it serves."""
    if replica.state != ReplicaState.STARTING or replica.id in start_only:
        return False
    return replica.runtime is None or replica.runtime in RUNTIMES


async def change_live(
    cluster: ClusterFacade, live: Sequence[ReplicaRow], wanted: Mapping[str, tuple[str, ...]],
    hosted: Iterable[sharing.Hosted], start_only: set[str],
) -> list[LiveChange]:  # fmt: skip
    """Send each ready replica whose set differs from `wanted` (by replica id) its new set;
    the replicas that changed (their rows' `adapters` updated in memory too)."""
    grants = {h.model_id: h.grant for h in hosted if h.grant is not None}
    changes = []
    for replica in live:
        target = wanted.get(replica.id)
        if target is None or (sharing.held(replica) == target and not _to_retry(replica)):
            continue
        if replica.state != ReplicaState.READY or replica.id in start_only:
            continue
        asked = tuple(HostedAdapter(m, grants[m]) for m in target if m in grants)
        change = await asyncio.to_thread(cluster.change_adapters, replica.actor_name, asked)
        if change is None:  # not answering now: replaced, as before, if it stays so
            continue
        if not change.runtime_load:
            start_only.add(replica.id)
            continue
        before = set(sharing.held(replica))
        replica.adapters = entries_of(change.adapters)
        after = set(sharing.held(replica))
        changes.append(
            LiveChange(replica.id, replica.adapters, sorted(after - before),
                       sorted(before - after), list(change.kept))
        )  # fmt: skip
    return changes
