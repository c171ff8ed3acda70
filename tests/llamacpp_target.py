"""A real llama.cpp engine serving SmolLM2, started and watched by souverain's own engine
supervisor (so it is probed and measured like any replica), behind a live souverain
server whose route table knows it as one ready replica: for tests that need the real
engine without a Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from souverain.core.fleet import (
    EngineCredential,
    HostedAdapter,
    ReplicaSpec,
    replica_server_name,
)
from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.installation import authority
from souverain.node.engines import llama_server
from souverain.node.engines.base import EngineLauncher
from souverain.node.engines.llamacpp import LlamaCppLauncher
from souverain.node.supervisor import EngineSupervisor
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory, Tenant
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, wait_until


@dataclass
class LlamaTarget:
    url: str
    model: str
    supervisor: EngineSupervisor
    factory: Factory
    tenant: Tenant
    key: str  # the tenant owner's
    config: Settings  # the server's: another server process of the installation starts from it

    def engine_alive(self) -> bool:
        """The engine process has never exited since it became ready."""
        status = self.supervisor.status()
        return status.state == "ready" and status.restarts == 0

    def client(self, key: str | None = None, timeout_s: float = 120) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=timeout_s,
        )


RUNTIMES = ("llama-cpp-python", "llama-server")


def launcher(runtime: str) -> EngineLauncher:
    if runtime == "llama-cpp-python":
        return LlamaCppLauncher()
    found = llama_server.binary()
    assert found is not None, "no llama-server: `make setup` builds it (scripts/build-llamacpp)"
    return llama_server.LlamaServerLauncher(found)


def supervised_llamacpp(
    replica_id: str, log_dir: Path, runtime: str = "llama-cpp-python",
    engine_args: dict[str, Any] | None = None, adapter_path: Path | None = None,
    tls: EngineCredential | None = None, adapters: tuple[HostedAdapter, ...] = (),
) -> EngineSupervisor:  # fmt: skip
    spec = ReplicaSpec(
        replica_id=replica_id, deployment_id="dep_test", model_name="smollm2",
        engine="llamacpp", artifact_uri="builtin://smollm2-135m-instruct", artifact_sha256=None,
        secret=replica_secret(MASTER_KEY.encode(), replica_id), datacenter_id="llama-dc",
        cpus=2, gpus=0, threads=2, context_length=4096, engine_args=engine_args or {},
        adapter_path=str(adapter_path) if adapter_path else None, tls=tls, adapters=adapters,
    )  # fmt: skip
    supervisor = EngineSupervisor(
        spec, launcher(runtime), host="127.0.0.1", node_id="node-test", log_dir=log_dir
    )
    supervisor.start()
    status = supervisor.status()
    deadline = time.monotonic() + 180
    while status.state != "ready":
        assert status.state != "failed" and time.monotonic() < deadline, status.error
        status = supervisor.watch(status.version, 5)
    return supervisor


@contextlib.asynccontextmanager
async def llamacpp_target(
    directory: Path, runtime: str = "llama-cpp-python", engine_args: dict[str, Any] | None = None,
    adapter_path: Path | None = None, adapters: tuple[HostedAdapter, ...] = (),
    **settings: Any,
) -> AsyncIterator[LlamaTarget]:  # fmt: skip
    replica_id = new_id("rep")
    config = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.2,
        port=free_port(),
        file_stores={"llama-dc": f"file://{directory / 'files'}"},
        **settings,
    )
    supervisor: EngineSupervisor | None = None
    try:
        with LiveServer(create_app(config), port=config.port) as server:
            db = create_engine_unpooled(config.sqlalchemy_url)
            factory = Factory(session_factory(db))
            # the engine serves HTTPS with a certificate for its replica's name from the
            # installation's authority, as the controller would issue it
            trusted = await authority.load_or_create(factory.sessions, MASTER_KEY.encode())
            credential = authority.issue(trusted, replica_server_name(replica_id))
            supervisor = await asyncio.to_thread(supervised_llamacpp, replica_id, directory,
                                                 runtime, engine_args, adapter_path, credential,
                                                 adapters)  # fmt: skip
            status = supervisor.status()
            assert status.url is not None
            tenant = await factory.tenant(roles={"eve": Role.OWNER})
            key = (await factory.member_key(tenant, "eve", Role.OWNER)).key
            dc = await factory.datacenter("llama-dc")
            model, _ = await factory.served_model(
                url=status.url, datacenter_id=dc, replica_id=replica_id, engine="llamacpp"
            )
            # What the controller's observer would write from the replica's status:
            await factory.replica_observed(replica_id, prompt_overhead=status.prompt_overhead,
                                           runtime=status.runtime, slots=status.slots)  # fmt: skip
            target = LlamaTarget(server.url, model, supervisor, factory, tenant, key, config)
            async with target.client() as client:

                async def listed() -> bool:
                    data = (await client.get("/v1/models")).json().get("data", [])
                    return any(m["id"] == model for m in data)

                await wait_until(listed)
            yield target
            await db.dispose()
    finally:
        if supervisor is not None:
            await asyncio.to_thread(supervisor.stop)
