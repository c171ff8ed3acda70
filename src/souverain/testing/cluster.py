"""A souverain server whose controller drives a given Ray cluster, for multi-node tests.

`ray.cluster_utils.Cluster` gives several labelled Ray nodes on one machine; this hook
connects the server process to it and runs the controller, exactly as `souverain
controller` does against a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from souverain.cluster import ray_cluster
from souverain.gateway.state import AppState
from souverain.installation.authority import Issuer
from souverain.jobs.deployments.reconciler import EngineDefaults
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.fine_tuning.reconciler import TrainingDefaults
from souverain.jobs.runner import Controller


def controller_hook(
    address: str, *, threads: int = 1, energy_interval_s: float = 2.0
) -> Callable[[AppState], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def hook(state: AppState) -> AsyncIterator[None]:
        await asyncio.to_thread(ray_cluster.attach_test_cluster, address)
        controller = Controller(
            state.sessions,
            ray_cluster.RayCluster(),
            master_key=state.master_key,
            engine=EngineDefaults(threads=threads, bind_host=None),
            issuer=Issuer(state.sessions, state.master_key),
            interval_s=0.5,
            signing_key=state.signing_key,
            seal_interval_s=2.0,
            energy=EnergyAccountant(
                state.sessions,
                interval_s=energy_interval_s,
                prompt_weight=1.0,
                completion_weight=3.0,
                settle_s=state.settings.energy_settle_s,
            ),
            training=TrainingDefaults(
                file_stores=state.file_stores,
                watts_per_core=state.settings.energy_watts_per_core,
                cpu_hours_per_job=state.settings.finetune_cpu_hours_per_job,
            ),
        )

        stop = asyncio.Event()
        running = asyncio.create_task(controller.run(stop))
        try:
            yield
        finally:
            stop.set()
            await running
            await controller.teardown()

    return hook
