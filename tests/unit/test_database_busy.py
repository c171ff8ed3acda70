"""Every pooled database connection in use past the pool's wait: the client is told to
retry (503 with Retry-After, in the API's error shape), never a 500 'internal error'."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from souverain.server import errors


async def test_a_request_that_gets_no_connection_in_time_is_told_to_retry(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", pool_size=1,
                                 max_overflow=0, pool_timeout=0.2)  # fmt: skip
    app = FastAPI()
    errors.install(app)

    @app.get("/count")
    async def count() -> dict[str, int]:
        async with engine.connect() as connection:
            return {"n": (await connection.execute(text("select 1"))).scalar_one()}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/count")).json() == {"n": 1}
        async with engine.connect() as held:  # the pool's only connection, held elsewhere
            await held.execute(text("select 1"))
            busy = await client.get("/count")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["message"] == "The database is busy right now; retry shortly."
        assert (await client.get("/count")).json() == {"n": 1}  # served again once it is free
    await engine.dispose()
