"""A Ray driver of its own process, as the controller is one: it sends a replica spec whose
secret is a canary to an actor on the node of one datacenter, and a blob holding the canary
through the object store, then prints what came back as one JSON line.

    python -m tests.cluster.ray_link_driver HOST:PORT DATACENTER CANARY

Ray's token and TLS come from the environment (`ray_node.ray_environment`), as for every
process souverain starts.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import ray

from souverain.core.fleet import DATACENTER_LABEL, RAY_NAMESPACE, ReplicaSpec


class Keeper:
    def digest(self, spec: ReplicaSpec) -> dict[str, str]:
        context = ray.get_runtime_context()
        return {
            "secret_sha256": hashlib.sha256(spec.secret.encode()).hexdigest(),
            "node_id": context.get_node_id(),
        }

    def blob_length(self, blobs: list[Any]) -> int:
        return len(ray.get(blobs[0]))


def spec(datacenter: str, canary: str) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id="rep_link", deployment_id="dep_link", model_name="chat", engine="stand-in",
        artifact_uri="builtin://none", artifact_sha256=None, secret=canary,
        datacenter_id=datacenter, cpus=0, gpus=0, threads=1, context_length=512,
    )  # fmt: skip


def main(address: str, datacenter: str, canary: str) -> int:
    ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
    keeper: Any = (
        ray.remote(Keeper)
        .options(num_cpus=0, label_selector={DATACENTER_LABEL: datacenter})
        .remote()
    )
    answer = ray.get(keeper.digest.remote(spec(datacenter, canary)), timeout=60)
    blob = ray.put((canary * (1 + 200_000 // len(canary))).encode())  # an object, not inlined
    answer["blob_length"] = ray.get(keeper.blob_length.remote([blob]), timeout=60)
    labels = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes()}
    answer["datacenter"] = labels[answer["node_id"]].get(DATACENTER_LABEL, "")
    print(json.dumps(answer))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
