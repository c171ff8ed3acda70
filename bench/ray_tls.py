"""What Ray's own TLS costs: a two-node Ray cluster on this machine (`ray.cluster_utils`)
with token authentication, once with Ray's TLS (the cluster authority and a certificate for
this host, as `souverain node head` makes them) and once without, rounds alternating; each
cluster in a process of its own, since Ray reads its TLS settings per process.

    python bench/ray_tls.py [--rounds 3] [--calls 400] [--megabytes 64]

Per mode: an actor call's round trip p50/p90 (driver to an actor on the other node, a small
argument: the controller's status polls), and the rate of an object moved from the
driver's node to the other one (the object manager's gRPC stream: a replica spec, an
adapter handed over). Prints the figures and the ratio TLS / plain. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from souverain.cluster import ray_node, ray_tls


def this_host() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # no packet is sent: it only picks a route
        except OSError:
            return "127.0.0.1"
        return str(probe.getsockname()[0])


def child(calls: int, megabytes: int) -> dict[str, float]:
    """Run in the child: one cluster, the two measures."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"far": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    host, _, port = cluster.address.rpartition(":")
    encrypted = ray_tls.speaks_tls(host, int(port))  # what the GCS really speaks

    class Far:
        def ping(self, x: int) -> int:
            return x

        def size(self, blobs: list[Any]) -> int:
            return len(ray.get(blobs[0]))

    far: Any = ray.remote(Far).options(resources={"far": 1}, num_cpus=0).remote()
    ray.get([far.ping.remote(i) for i in range(50)])  # warm
    times = []
    for i in range(calls):
        start = time.perf_counter()
        ray.get(far.ping.remote(i))
        times.append(time.perf_counter() - start)
    rates = []
    for _ in range(3):
        blob = ray.put(os.urandom(megabytes << 20))
        start = time.perf_counter()
        ray.get(far.size.remote([blob]))
        rates.append(megabytes / (time.perf_counter() - start))
        del blob
    ray.shutdown()
    cluster.shutdown()
    quantiles = statistics.quantiles(times, n=10)
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p90_ms": quantiles[8] * 1000,
        "mb_per_s": statistics.median(rates),
        "tls": float(encrypted),
    }


def run(mode: str, workdir: Path, calls: int, megabytes: int) -> dict[str, float]:
    token = workdir / "auth_token"
    ray_node.ensure_token_file(token)
    tls = workdir / "tls" if mode == "tls" else None
    if tls is not None:
        ray_tls.ensure_head(tls, this_host())
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--calls", str(calls), "--megabytes", str(megabytes)],
        env=ray_node.ray_environment(token, tls),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if bool(result.pop("tls")) != (tls is not None):
        raise SystemExit(f"the {mode} cluster did not speak what it was asked to")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.calls, args.megabytes)))
        return
    results: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for mode in ("plain", "tls") if round_ % 2 == 0 else ("tls", "plain"):
                results[mode].append(run(mode, Path(workdir), args.calls, args.megabytes))
                print(mode, results[mode][-1], flush=True)
    summary = {
        mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for mode, runs in results.items()
    }
    print("| mode | call p50 | call p90 | object transfer |")
    print("|---|---|---|---|")
    for mode, s in summary.items():
        print(
            f"| {mode} | {s['p50_ms']:.2f} ms | {s['p90_ms']:.2f} ms | {s['mb_per_s']:.0f} MB/s |"
        )
    plain, tls = summary["plain"], summary["tls"]
    print(
        f"TLS / plain: call p50 x{tls['p50_ms'] / plain['p50_ms']:.2f}, "
        f"transfer x{tls['mb_per_s'] / plain['mb_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
