"""Fine-tuning jobs on a real multi-node Ray cluster: placed only where the owner's policy
allows (queued with the scheduler's reasons otherwise), cancelled within 10 s, paused and
resumed from their checkpoint, resumed after a SIGKILL of the worker or of its actor,
refused on bad data before any compute, held by the energy budget, invisible to other
tenants. Real: files store per datacenter, Ray actors with label selectors, TRL + PEFT on
CPU from the built-in GGUF."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from souverain.core.fleet import DATACENTER_LABEL, RAY_NAMESPACE, training_actor_name
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.node.artifacts import builtin_path, file_sha256
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.cluster import controller_hook
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer
from tests.conftest import MASTER_KEY, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
DATACENTERS = {
    "par1": {"country": "FR", "carbon_intensity": 56, "cpus": 3},
    "iad1": {"country": "US", "carbon_intensity": 20, "cpus": 3},
    "zrh1": {"country": "CH", "carbon_intensity": 30, "cpus": 0},  # allowed, but no room
}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for dc, attributes in DATACENTERS.items():
        cluster.add_node(num_cpus=attributes["cpus"], labels={DATACENTER_LABEL: dc})
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@dataclass
class Site:
    url: str
    operator: str
    factory: Factory

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.operator}"},
            timeout=60,
        )


@pytest.fixture(scope="module")
async def site(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    directory: Path = tmp_path_factory.mktemp("finetune")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'ft.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.3,
        file_stores={dc: f"file://{directory / 'files' / dc}" for dc in DATACENTERS},
        finetune_max_steps=500,
        # energy counts fast here: a CPU-second is 1 kJ, a reservation 18 CPU-seconds
        energy_watts_per_core=1000,
        finetune_cpu_hours_per_job=0.005,
        port=8000,
    )
    hook = controller_hook(ray_address, threads=2)
    with LiveServer(create_app(settings, hooks=[hook])) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        factory = Factory(session_factory(engine))
        operator = (await factory.operator()).key
        site = Site(server.url, operator, factory)
        async with site.client() as client:
            for dc, attributes in DATACENTERS.items():
                body = {"id": dc, "name": dc, "operator_name": "dc-op",
                        "operator_country": attributes["country"], "country": attributes["country"],
                        "carbon_intensity": attributes["carbon_intensity"]}  # fmt: skip
                assert (await client.post("/api/datacenters", json=body)).status_code == 201
            registered = await client.post("/api/models", json={
                "name": MODEL, "uri": f"builtin://{MODEL}",
                "sha256": file_sha256(builtin_path(MODEL)), "license": "Apache-2.0"})  # fmt: skip
            assert registered.status_code == 201, registered.text
        yield site
        await engine.dispose()


def chats(count: int = 8, *, long_line: int | None = None) -> bytes:
    lines = []
    for i in range(count):
        answer = "word " * 200 if long_line == i + 1 else f"answer {i}"
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                              {"role": "assistant", "content": answer}]}))  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


async def owner(site: Site, *, ceiling: list[str] | None = None) -> tuple[str, str]:
    """(org name, owner key) of a new tenant, with an operator-set ceiling if given."""
    tenant = await site.factory.tenant(roles={"o": Role.OWNER})
    if ceiling is not None:
        async with site.client() as client:
            put = await client.put(f"/api/orgs/{tenant.org_name}/policy",
                                   json={"jurisdictions": ceiling})  # fmt: skip
            assert put.status_code == 200, put.text
        await asyncio.sleep(1.5)  # the servers' route tables take a new policy within a second
    return tenant.org_name, (await site.factory.member_key(tenant, "o", Role.OWNER)).key


async def upload(client: httpx.AsyncClient, data: bytes) -> dict[str, Any]:
    response = await client.post(
        "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def job_with(client: httpx.AsyncClient, file_id: str, steps: int, **extra: Any) -> str:
    created = await client.post("/v1/fine_tuning/jobs", json={
        "model": MODEL, "training_files": [{"file_id": file_id}],
        "hyperparameters": {"training_steps": steps, "learning_rate": 1e-3, "seq_len": 64},
        **extra,
    })  # fmt: skip
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def openai_view(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/fine_tuning/jobs/{job_id}")).json())


async def until(
    client: httpx.AsyncClient, job_id: str, check: Any, timeout_s: float = 300
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal found
        found = await openai_view(client, job_id)
        assert found["status"] not in ("FAILED",) or check(found), found
        return bool(check(found))

    await wait_until(reached, timeout_s=timeout_s, interval_s=0.5)
    return found


async def event_messages(client: httpx.AsyncClient, job_id: str) -> list[str]:
    data = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 500})).json()
    return [e["message"] for e in data["data"]]


def worker_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "souverain.training.sft" in cmdline and job_id in cmdline:
            found.append(process)
    return found


class TestPlacement:
    async def test_a_job_allowed_only_where_there_is_no_room_stays_queued_and_says_why(
        self, site: Site
    ) -> None:
        _, key = await owner(site, ceiling=["CH"])
        async with site.client(key) as client:
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 4)

            async def explained() -> bool:
                view = await openai_view(client, job_id)
                return bool(view["souverain"]["status_reason"])

            await wait_until(explained, timeout_s=30)
            await asyncio.sleep(2)  # several controller rounds
            view = await openai_view(client, job_id)
        reason = view["souverain"]["status_reason"]
        assert view["status"] == "QUEUED" and view["souverain"]["datacenter"] is None
        assert reason.startswith("0/") and "outside CH" in reason
        assert "lack 1 free CPU(s)" in reason  # zrh1, the one place it may run
        with pytest.raises(ValueError):
            ray.get_actor(training_actor_name(job_id), namespace=RAY_NAMESPACE)


class TestLifecycle:
    async def test_cancel_stops_a_running_job_within_10_s(self, site: Site) -> None:
        _, key = await owner(site, ceiling=["FR"])
        async with site.client(key) as client:
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 400)
            await until(client, job_id, lambda v: v["souverain"]["step"] >= 1)
            assert worker_processes(job_id)
            started = time.monotonic()
            cancelled = await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200
            await until(client, job_id, lambda v: v["status"] == "CANCELLED", timeout_s=10)
            elapsed = time.monotonic() - started
            assert not worker_processes(job_id)
            view = await openai_view(client, job_id)
        assert elapsed < 10, elapsed
        assert view["souverain"]["datacenter"] == "par1"  # where the policy allows, nowhere else

    async def test_pause_keeps_the_last_checkpoint_and_resume_carries_on(self, site: Site) -> None:
        _, key = await owner(site, ceiling=["FR"])
        async with site.client(key) as client:
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 12)  # a checkpoint every 3 steps
            await until(client, job_id, lambda v: v["souverain"]["step"] >= 4)
            assert (await client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")).status_code == 200
            paused = await until(client, job_id, lambda v: v["souverain"]["state"] == "paused",
                                 timeout_s=60)  # fmt: skip
            assert not worker_processes(job_id)
            at_pause = paused["souverain"]["step"]
            checkpoints = (await client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).json()
            last_saved = checkpoints["data"][0]["step_number"]
            assert last_saved == at_pause  # a checkpoint was taken on pausing
            assert (await client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")).status_code == 200
            done = await until(client, job_id, lambda v: v["status"] == "SUCCESS")
            messages = await event_messages(client, job_id)
        assert done["souverain"]["step"] == 12 and done["souverain"]["attempt"] == 2
        assert f"Checkpoint at step {last_saved} restored on the node" in messages
        steps = [
            int(m.split()[1].split("/")[0]) for m in reversed(messages) if m.startswith("Step ")
        ]
        resumed_at = steps.index(last_saved + 1, steps.index(at_pause))
        assert steps[resumed_at:] == list(range(last_saved + 1, 13))  # never from the start

    async def test_sigkill_of_the_worker_then_of_its_actor_resumes_from_checkpoints(
        self, site: Site
    ) -> None:
        _, key = await owner(site, ceiling=["FR"])
        async with site.client(key) as client:
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 8)  # a checkpoint every 2 steps
            await until(client, job_id, lambda v: v["souverain"]["step"] >= 3)
            [worker] = worker_processes(job_id)
            worker.send_signal(signal.SIGKILL)
            await until(client, job_id, lambda v: v["souverain"]["step"] >= 5)
            actor = ray.get_actor(training_actor_name(job_id), namespace=RAY_NAMESPACE)
            ray.kill(actor, no_restart=True)
            done = await until(client, job_id, lambda v: v["status"] == "SUCCESS")
            messages = await event_messages(client, job_id)
        assert done["fine_tuned_model"] and done["souverain"]["step"] == 8
        assert any("training worker died" in m and "SIGKILL" in m for m in messages)
        assert any(m.startswith("The training worker was lost") for m in messages)
        assert any("Job resumed in par1 from the checkpoint at step 4" in m for m in messages)
        assert done["souverain"]["attempt"] == 2

    async def test_an_over_long_sample_fails_with_its_line_before_any_training(
        self, site: Site
    ) -> None:
        _, key = await owner(site, ceiling=["FR"])
        async with site.client(key) as client:
            stored = await upload(client, chats(long_line=5))
            job_id = await job_with(client, stored["id"], 4)
            failed = await until(client, job_id, lambda v: v["status"] == "FAILED", timeout_s=120)
            messages = await event_messages(client, job_id)
        assert "line 5" in messages[0] or any("line 5:" in m for m in messages)
        assert not any(m.startswith("Base model loaded") for m in messages)
        assert failed["souverain"]["step"] == 0

    async def test_the_energy_budget_holds_a_job_back(self, site: Site) -> None:
        org, key = await owner(site, ceiling=["FR"])
        async with site.client(key) as client:
            budget = await client.put(f"/api/orgs/{org}/budget", json={"energy_kwh": 0.001})
            assert budget.status_code == 200, budget.text
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 4)
            await until(client, job_id, lambda v: "budget" in v["souverain"]["status_reason"],
                        timeout_s=30)  # fmt: skip
            await asyncio.sleep(2)
            view = await openai_view(client, job_id)
        assert view["status"] == "QUEUED" and view["souverain"]["attempt"] == 0
        assert not worker_processes(job_id)

    async def test_a_running_job_reserves_as_it_goes_and_pauses_when_the_budget_is_spent(
        self, site: Site
    ) -> None:
        org, key = await owner(site, ceiling=["FR"])
        budget_j = 0.01 * 3.6e6  # two reservations of 18 kJ
        async with site.client(key) as client:
            budget = await client.put(f"/api/orgs/{org}/budget", json={"energy_kwh": 0.01})
            assert budget.status_code == 200, budget.text
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 400)
            paused = await until(client, job_id, lambda v: v["souverain"]["state"] == "paused",
                                 timeout_s=600)  # energy is CPU time: slow on a busy node  # fmt: skip
            messages = await event_messages(client, job_id)
            await asyncio.sleep(2)
            after = await openai_view(client, job_id)
        assert "energy budget" in paused["souverain"]["status_reason"]
        assert any(m.startswith("Pausing: the energy budget") for m in messages)
        assert paused["souverain"]["step"] < 400 and not worker_processes(job_id)
        # stopped within its reservations: at most the budget and the time it takes to stop
        assert after["souverain"]["energy_j"] <= 1.25 * budget_j, after["souverain"]
        assert after["souverain"]["state"] == "paused"


class TestRefusals:
    async def test_bad_requests_are_refused_before_any_job_exists(self, site: Site) -> None:
        _, key = await owner(site, ceiling=["FR"])
        _, other = await owner(site, ceiling=["FR"])
        async with site.client(key) as client, site.client(other) as stranger:
            stored = await upload(client, chats())
            theirs = await upload(stranger, chats())
            cases = {
                "both shapes": {"model": MODEL, "training_file": stored["id"],
                                "training_files": [{"file_id": stored["id"]}]},
                "neither": {"model": MODEL},
                "too many steps": {"model": MODEL, "training_files": [{"file_id": stored["id"]}],
                                   "hyperparameters": {"training_steps": 10**6}},
                "too many epochs": {"model": MODEL, "training_file": stored["id"],
                                    "method": {"type": "supervised", "supervised": {
                                        "hyperparameters": {"n_epochs": 1000}}}},
                "seq_len above the model": {"model": MODEL, "training_files": [
                    {"file_id": stored["id"]}], "hyperparameters": {"seq_len": 10**6}},
                "unknown method": {"model": MODEL, "training_file": stored["id"],
                                   "method": {"type": "dpo"}},
                "unknown model": {"model": "nope", "training_file": stored["id"]},
                "a batch file": {"model": MODEL, "training_file": "file-missing"},
            }  # fmt: skip
            for name, body in cases.items():
                answer = await client.post("/v1/fine_tuning/jobs", json=body)
                assert answer.status_code in (400, 404, 422), (name, answer.status_code)
                assert answer.json()["error"]["message"], name
            foreign = await client.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_file": theirs["id"]})  # fmt: skip
            assert foreign.status_code == 404
            listed = (await client.get("/v1/fine_tuning/jobs")).json()["data"]
        assert listed == []

    async def test_other_tenants_see_nothing_of_a_job(self, site: Site) -> None:
        _, key = await owner(site, ceiling=["CH"])  # stays queued: nothing runs
        _, other = await owner(site)
        async with site.client(key) as client, site.client(other) as stranger:
            stored = await upload(client, chats())
            job_id = await job_with(client, stored["id"], 4)
            for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/checkpoints"),
                                 ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume"),
                                 ("POST", "/start")]:  # fmt: skip
                theirs = await stranger.request(method, f"/v1/fine_tuning/jobs/{job_id}{path}")
                missing = await stranger.request(method, f"/v1/fine_tuning/jobs/ftjob_nope{path}")
                assert theirs.status_code == missing.status_code == 404, path
                assert theirs.json()["error"]["message"].replace(job_id, "X") == missing.json()[
                    "error"]["message"].replace("ftjob_nope", "X")  # fmt: skip
            assert (await stranger.get("/v1/fine_tuning/jobs")).json()["data"] == []
            assert (await openai_view(client, job_id))["status"] == "QUEUED"

    async def test_an_organisation_has_a_bounded_number_of_jobs_at_once(self, site: Site) -> None:
        _, key = await owner(site, ceiling=["CH"])  # they stay queued: nothing runs
        async with site.client(key) as client:
            stored = await upload(client, chats())
            jobs = [await job_with(client, stored["id"], 4) for _ in range(4)]
            refused = await client.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_file": stored["id"]})  # fmt: skip
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert "at most 4" in refused.json()["error"]["message"]
            assert (await client.post(f"/v1/fine_tuning/jobs/{jobs[0]}/cancel")).status_code == 200
            again = await client.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_file": stored["id"]})  # fmt: skip
        assert again.status_code == 200, again.text
