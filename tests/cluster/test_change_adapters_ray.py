"""The controller's call that changes a running shared replica's adapters
(`RayCluster.change_adapters`), on a real Ray cluster: a real llama-server replica of
SmolLM2 in its actor on a node labelled with its datacenter takes a sealed adapter while it
serves, and answers with it unlike the base model; asked to drop it, it refuses the
adapter's id from then on; the engine process is the same throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray.cluster_utils import Cluster

from souverain.cluster.ray_cluster import RayCluster
from souverain.core.fleet import HostedAdapter, ReplicaSpec, ReplicaStatus
from souverain.core.ids import new_id, replica_secret
from souverain.storage.stores import LocalStore
from tests.conftest import MASTER_KEY
from tests.faults.conftest import par1_cluster
from tests.lora_files import adapter_file, sealed_adapter

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

__all__ = ["par1_cluster"]  # the module's Ray cluster: one 4-CPU node labelled par1

ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def spec_of(replica_id: str) -> ReplicaSpec:
    """A shared replica of SmolLM2 on llama-server in par1, with no adapter yet."""
    return ReplicaSpec(
        replica_id=replica_id, deployment_id="dep_test", model_name="smollm2",
        engine="llamacpp", artifact_uri="builtin://smollm2-135m-instruct", artifact_sha256=None,
        secret=replica_secret(MASTER_KEY.encode(), replica_id), datacenter_id="par1",
        cpus=2, gpus=0, threads=2, context_length=4096, bind_host="127.0.0.1",
        engine_args={"runtime": "llama-server", "parallel": 2},
    )  # fmt: skip


async def ready(cluster: RayCluster, actor_name: str) -> ReplicaStatus:
    """The replica's status once its engine serves (the controller's long poll)."""
    status = await asyncio.to_thread(cluster.replica_status, actor_name, 30.0)
    for _ in range(60):
        assert status is not None and status.state != "failed", status
        if status.state == "ready":
            return status
        status = await cluster.watch_replica(actor_name, status.version, 5.0)
    raise AssertionError(f"not ready: {status}")


def ask(status: ReplicaStatus, secret: str, lora_id: int | None = None) -> httpx.Response:
    """One greedy answer, with adapter `lora_id` applied as the gateway writes it."""
    assert status.url is not None
    body: dict[str, object] = {"model": "smollm2", "messages": ASK, "max_tokens": 8,
                               "temperature": 0, "cache_scope": f"scope-{lora_id}"}  # fmt: skip
    if lora_id is not None:
        body["lora"] = [{"id": lora_id, "scale": 1.0}]
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.post(f"{status.url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def answer(status: ReplicaStatus, secret: str, lora_id: int | None = None) -> str:
    done = ask(status, secret, lora_id)
    assert done.status_code == 200, done.text
    return str(done.json()["choices"][0]["message"]["content"])


@pytest.fixture
async def adapter(tmp_path: Path) -> HostedAdapter:
    """A fine-tuned model's adapter of SmolLM2, sealed in a store the node reads."""
    plain = adapter_file(tmp_path, seed=1).read_bytes()
    grant = await sealed_adapter(LocalStore(tmp_path / "store"), plain, "a")
    return HostedAdapter("mdl_a", grant)


@pytest.fixture
def replica(par1_cluster: Cluster) -> Iterator[tuple[RayCluster, ReplicaSpec]]:
    cluster, spec = RayCluster(), spec_of(new_id("rep"))
    cluster.start_replica(spec)
    try:
        yield cluster, spec
    finally:
        cluster.stop_replica(spec.actor_name)


class TestChangeAdaptersOnRay:
    async def test_an_adapter_is_loaded_into_a_running_replica_and_unloaded(
        self, replica: tuple[RayCluster, ReplicaSpec], adapter: HostedAdapter
    ) -> None:
        cluster, spec = replica
        status = await ready(cluster, spec.actor_name)
        pid = await asyncio.to_thread(cluster.engine_pid, spec.actor_name)
        base = await asyncio.to_thread(answer, status, spec.secret)

        change = await asyncio.to_thread(cluster.change_adapters, spec.actor_name, (adapter,))
        assert change is not None and change.runtime_load, change
        [loaded] = change.adapters
        assert (loaded.model_id, loaded.error) == ("mdl_a", "") and loaded.lora_id is not None
        reported = await asyncio.to_thread(cluster.replica_status, spec.actor_name)
        assert reported is not None and [a.lora_id for a in reported.adapters] == [loaded.lora_id]
        with_a = await asyncio.to_thread(answer, status, spec.secret, loaded.lora_id)
        assert with_a != base, "the adapter changed nothing: not applied"

        change = await asyncio.to_thread(cluster.change_adapters, spec.actor_name, ())
        assert change is not None and change.runtime_load and change.adapters == (), change
        refused = await asyncio.to_thread(ask, status, spec.secret, loaded.lora_id)
        assert refused.status_code == 400 and "not loaded" in refused.text, refused.text
        assert await asyncio.to_thread(answer, status, spec.secret) == base
        assert await asyncio.to_thread(cluster.engine_pid, spec.actor_name) == pid
        after = await asyncio.to_thread(cluster.replica_status, spec.actor_name)
        assert after is not None and after.restarts == 0 and after.adapters == ()
