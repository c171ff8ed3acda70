"""A real llama.cpp engine process serving SmolLM2, behind a live souverain server whose
route table knows it as one ready replica: for tests that need the real engine without
a Ray cluster."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from souverain.api.app import create_app
from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.engines.artifacts import builtin_path
from souverain.settings import Settings
from souverain.testing.factories import Factory, Tenant
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, wait_until


@dataclass
class LlamaTarget:
    url: str
    model: str
    engine: subprocess.Popen[bytes]
    factory: Factory
    tenant: Tenant
    key: str  # the tenant owner's

    def client(self, key: str | None = None, timeout_s: float = 120) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=timeout_s,
        )


def start_llamacpp(replica_id: str, *, ctx: int = 4096) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    secret = replica_secret(MASTER_KEY.encode(), replica_id)
    process = subprocess.Popen(
        [sys.executable, "-m", "souverain.engines.llamacpp_main", "--model",
         str(builtin_path("smollm2-135m-instruct")), "--alias", "smollm2", "--host", "127.0.0.1",
         "--port", str(port), "--threads", "2", "--ctx", str(ctx)],
        env={**os.environ, "SOUVERAIN_ENGINE_SECRET": secret},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{url}/v1/models", timeout=2)
            return url, process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the llama.cpp engine did not start")


@contextlib.asynccontextmanager
async def llamacpp_target(directory: Path, **settings: Any) -> AsyncIterator[LlamaTarget]:
    replica_id = new_id("rep")
    url, process = start_llamacpp(replica_id)
    config = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.2,
        port=free_port(),
        **settings,
    )
    try:
        with LiveServer(create_app(config), port=config.port) as server:
            db = create_engine_unpooled(config.sqlalchemy_url)
            factory = Factory(session_factory(db))
            tenant = await factory.tenant(roles={"eve": Role.OWNER})
            key = (await factory.member_key(tenant, "eve", Role.OWNER)).key
            dc = await factory.datacenter("llama-dc")
            model, _ = await factory.served_model(url=url, datacenter_id=dc, replica_id=replica_id)
            target = LlamaTarget(server.url, model, process, factory, tenant, key)
            async with target.client() as client:

                async def listed() -> bool:
                    data = (await client.get("/v1/models")).json().get("data", [])
                    return any(m["id"] == model for m in data)

                await wait_until(listed)
            yield target
            await db.dispose()
    finally:
        process.kill()
        process.wait()
