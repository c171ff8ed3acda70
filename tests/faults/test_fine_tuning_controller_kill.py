"""A fine-tuning job while its controller is SIGKILLed: the other controller takes the
lease over, adopts the running training actor by name and follows it to the end; the job
is neither restarted nor run twice, and nothing it did is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.cluster_utils import Cluster

from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.node.artifacts import builtin_path, file_sha256
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, wait_until
from tests.faults.conftest import needs_authenticated_ray
from tests.faults.test_controller_failover import ControllerProcess, start_controller

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow, needs_authenticated_ray]

MODEL = "smollm2-135m-instruct"
STEPS = 12
STALLED_S = 240  # no new step for this long after the handover: the job is not followed


async def followed_to_the_end(view: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """The job's view once it ended. A step takes seconds to a minute on a loaded 2-core
    machine, so what fails is no progress, not a slow one: no new step for `STALLED_S`."""
    step, moved = -1, time.monotonic()
    while True:
        current = await view()
        if current["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
            return current
        if int(current["souverain"]["step"]) != step:
            step, moved = int(current["souverain"]["step"]), time.monotonic()
        assert time.monotonic() - moved < STALLED_S, f"no step after step {step} in {STALLED_S}s"
        await asyncio.sleep(1.0)


@pytest.fixture(scope="module")
async def setup(
    par1_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, str, Factory, list[ControllerProcess]]]:
    directory: Path = tmp_path_factory.mktemp("ft-failover")
    stores = {"par1": f"file://{directory / 'files'}"}
    monkeypatch_module.setenv("SOUVERAIN_FILE_STORES", json.dumps(stores))  # for the controllers
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        file_stores=stores,
        port=free_port(),
    )
    with LiveServer(create_app(settings), port=settings.port) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        factory = Factory(session_factory(engine))
        operator = (await factory.operator()).key
        controllers = [
            start_controller(directory, str(settings.database_url), par1_cluster.address, n)
            for n in (1, 2)
        ]
        try:
            yield server.url, operator, factory, controllers
        finally:
            for controller in controllers:
                if controller.process.poll() is None:
                    controller.process.send_signal(signal.SIGTERM)
                    controller.process.wait(30)
            await engine.dispose()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


async def test_a_job_carries_on_when_its_controller_is_sigkilled(
    setup: tuple[str, str, Factory, list[ControllerProcess]],
) -> None:
    url, operator, factory, controllers = setup
    headers = {"Authorization": f"Bearer {operator}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as admin:
        body = {"id": "par1", "name": "Paris 1", "country": "FR", "operator_name": "dc-op",
                "operator_country": "FR"}  # fmt: skip
        assert (await admin.post("/api/datacenters", json=body)).status_code == 201
        registered = await admin.post("/api/models", json={
            "name": MODEL, "uri": f"builtin://{MODEL}",
            "sha256": file_sha256(builtin_path(MODEL)), "license": "Apache-2.0"})  # fmt: skip
        assert registered.status_code == 201
    tenant = await factory.tenant(roles={"o": Role.OWNER})
    key = (await factory.member_key(tenant, "o", Role.OWNER)).key
    lines = "".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                 {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(8)
    ).encode()  # fmt: skip
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60) as client:  # fmt: skip
        uploaded = await client.post("/v1/files", files={"file": ("t.jsonl", lines)},
                                     data={"purpose": "fine-tune"})  # fmt: skip
        assert uploaded.status_code == 200, uploaded.text
        created = await client.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_files": [{"file_id": uploaded.json()["id"]}],
            "hyperparameters": {"training_steps": STEPS, "learning_rate": 1e-3, "seq_len": 64}})  # fmt: skip
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]

        async def view() -> dict[str, object]:
            return dict((await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json())

        async def stepping() -> bool:
            return int((await view())["souverain"]["step"]) >= 4  # type: ignore[index]

        await wait_until(stepping, timeout_s=300)
        leader = next(c for c in controllers if c.holder() and c.process.poll() is None)
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait(10)

        final = await followed_to_the_end(view)
        events = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                   params={"limit": 500})).json()["data"]  # fmt: skip
    messages = [e["message"] for e in events]
    assert final["status"] == "SUCCESS" and final["fine_tuned_model"]
    assert final["souverain"]["attempt"] == 1  # type: ignore[index]
    assert not any("worker was lost" in m or "Job resumed" in m for m in messages)
    steps = sorted(int(m.split()[1].split("/")[0]) for m in messages if m.startswith("Step "))
    assert steps == list(range(1, STEPS + 1))  # every step once: nothing lost or run twice
