"""Placement decisions per second on simulated fleets, one core.

    python bench/scheduler.py [--nodes 100 1000 10000] [--decisions 20000] [--seed 7]

Fleets mix jurisdictions (EU countries, CH, NO, UK, US), operators, certifications and GPU
types (CPU-only, L4 24 GiB, A100 80 GiB, H100 80 GiB), with partly used nodes and some
unlabelled or dead ones. Requests mix sovereignty constraints (EU, FR+DE, operator under
EU law, SecNumCloud, CH+NO, none), engines, GPU counts and strategies.

For each fleet size it reports decisions/s of the indexed `Placer` (what the controller
uses) and of the reference filter chain `place()` on the same requests, and their ratio;
then the share of those requests that cannot be placed, and the rate of decisions for
requests nothing can satisfy (they give a reason for every node, so they cost O(nodes)). The index is built once per snapshot, as
the controller does every reconcile round; its build time is printed too.
Target: >= 10,000 decisions/s at 10,000 nodes.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from souverain.core.policy import Policy
from souverain.scheduler.placement import place
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import (
    DatacenterView,
    NodeView,
    PlacementRequest,
    Snapshot,
    Unschedulable,
)

COUNTRIES = ["FR", "DE", "NL", "IT", "ES", "SE", "FI", "PL", "CH", "NO", "GB", "US"]
GPUS = [(0, 0.0), (4, 24.0), (8, 80.0), (8, 80.0)]  # (count, GiB each): CPU, L4, A100, H100


def fleet(nodes: int, rng: random.Random) -> Snapshot:
    datacenters = {}
    for i in range(max(len(COUNTRIES), nodes // 100)):
        country = COUNTRIES[i % len(COUNTRIES)]
        datacenters[f"dc{i}"] = DatacenterView(
            id=f"dc{i}",
            country=country,
            operator_country=country if rng.random() < 0.8 else "US",
            certifications=frozenset(
                rng.sample(["SecNumCloud", "HDS", "ISO27001", "C5"], rng.randint(0, 3))
            )
            | ({"SecNumCloud"} if i == 0 else set()),  # a qualified French site exists
            carbon_intensity=float(rng.choice([20, 35, 56, 90, 250, 380, 420])),
        )
    ids = list(datacenters)
    views = []
    for i in range(nodes):
        gpus, memory = rng.choice(GPUS)
        views.append(
            NodeView(
                id=f"node{i:05d}",
                datacenter_id=None if rng.random() < 0.01 else rng.choice(ids),
                alive=rng.random() > 0.01,
                cpus_free=float(rng.randint(0, 64)),
                gpus_free=float(rng.randint(0, gpus)),
                gpu_memory_gib=memory,
                memory_free_gib=float(rng.randint(0, 512)),
                engines=frozenset({"llamacpp", "vllm"} if gpus else {"llamacpp"}),
            )
        )
    return Snapshot(nodes=tuple(views), datacenters=datacenters)


POLICIES = [
    Policy(),
    Policy(jurisdictions=frozenset({"EU"})),
    Policy(jurisdictions=frozenset({"FR", "DE"})),
    Policy(jurisdictions=frozenset({"EU"}), operator_jurisdictions=frozenset({"EU"})),
    Policy(jurisdictions=frozenset({"FR"}), certifications=frozenset({"SecNumCloud"})),
    Policy(jurisdictions=frozenset({"CH", "NO"})),
]


def requests(count: int, rng: random.Random) -> list[PlacementRequest]:
    made = []
    for _ in range(count):
        gpus = rng.choice([0, 0, 0, 1, 1, 2, 4])
        made.append(
            PlacementRequest(
                engine="vllm" if gpus else "llamacpp",
                cpus=float(rng.choice([1, 2, 4, 8])),
                gpus=gpus,
                gpu_memory_gib=rng.choice([0.0, 24.0, 80.0]) if gpus else 0.0,
                memory_gib=float(rng.choice([4, 16, 64])),
                policy=rng.choice(POLICIES),
                strategy=rng.choice(["spread", "binpack"]),
                model_name="m",
            )
        )
    return made


def rate(function: object, batch: list[PlacementRequest], budget_s: float) -> tuple[float, int]:
    """Decisions per second over as much of `batch` as fits in `budget_s` (at least 50)."""
    started = time.perf_counter()
    done = 0
    for request in batch:
        function(request)  # type: ignore[operator]
        done += 1
        if done >= 50 and time.perf_counter() - started > budget_s:
            break
    return done / (time.perf_counter() - started), done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(
        f"{'nodes':>7} {'index ms':>9} {'Placer dec/s':>13} {'place() dec/s':>14} {'ratio':>6}"
        f" {'unplaceable':>12} {'unschedulable dec/s':>20}"
    )
    for size in args.nodes:
        rng = random.Random(args.seed)
        snapshot = fleet(size, rng)
        batch = requests(args.decisions, rng)
        started = time.perf_counter()
        placer = Placer(snapshot)
        build_ms = (time.perf_counter() - started) * 1000
        fast, _ = rate(placer.place, batch, budget_s=5.0)
        slow, _ = rate(lambda r, s=snapshot: place(r, s), batch, budget_s=5.0)
        sample = batch[:2000]
        unplaceable = [r for r in sample if isinstance(placer.place(r), Unschedulable)]
        # Requests nothing can satisfy (no datacenter in Japan): each explains every node.
        impossible = [
            replace(r, policy=Policy(jurisdictions=frozenset({"JP"}))) for r in batch[:500]
        ]
        explain, _ = rate(placer.place, impossible, budget_s=2.0)

        print(
            f"{size:>7} {build_ms:>9.1f} {fast:>13,.0f} {slow:>14,.0f} {fast / slow:>5.0f}x"
            f" {len(unplaceable) / len(sample):>12.1%} {explain:>20,.0f}"
        )


if __name__ == "__main__":
    main()
