"""Helpers shared by the security suite: error-shape assertions, served models whose replica
secret is known, usage counts and known-bug markers that depend on the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.tables import UsageRecordRow
from souverain.testing.factories import unique
from tests.conftest import Platform, wait_until

OPENAI_ERROR_FIELDS = {"message", "type", "code", "param"}


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """The response has `status` and OpenAI's error shape; returns the `error` object."""
    assert response.status_code == status, (status, response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == OPENAI_ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return error


async def after_server_error(response: httpx.Response) -> httpx.Response:
    """Give the server a moment to finish logging a 5xx before the test goes on.

    Just after answering a 5xx, the server thread logs the exception with a formatted
    traceback (Python 3.11 parses source lines with `ast` for the ^^^ markers). CPython 3.11
    keeps the AST conversion depth per interpreter, not per thread, so pytest formatting a
    failure at that very moment can die with "SystemError: AST constructor recursion depth
    mismatch" (an INTERNALERROR that ends the session)."""
    if response.status_code >= 500:
        await asyncio.sleep(0.5)
    return response


def is_postgres(platform: Platform) -> bool:
    return platform.settings.sqlalchemy_url.startswith("postgresql")


def known_bug_on_postgres(request: pytest.FixtureRequest, platform: Platform, reason: str) -> None:
    """Mark the running test as a strict expected failure, on PostgreSQL only."""
    if is_postgres(platform):
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


async def usage_count(platform: Platform, key_id: str) -> int:
    """Usage records opened for a key: one exists as soon as an engine is about to be called."""
    async with platform.sessions() as session:
        query = select(func.count()).select_from(UsageRecordRow)
        return int(
            (await session.execute(query.where(UsageRecordRow.key_id == key_id))).scalar_one()
        )


@dataclass(frozen=True)
class Served:
    """A model served by the stand-in engine through one ready replica whose id is known."""

    name: str
    replica_id: str
    secret: str


async def serve(
    platform: Platform,
    *,
    owner_org_id: str | None = None,
    capabilities: tuple[str, ...] = ("chat", "completions"),
    url: str | None = None,
    replica_id: str | None = None,
    wait: bool = True,
) -> Served:
    """Like `platform.served_model()`, but the replica id (hence its secret) is returned.

    `url` defaults to the stand-in engine playing this replica; give another to simulate an
    engine that is down or that expects another secret."""
    replica_id = replica_id or new_id("rep")
    dc = await platform.factory.datacenter("fr-test", country="FR")
    name, _ = await platform.factory.served_model(
        url=url or f"{platform.stand_in_url}/r/{replica_id}",
        datacenter_id=dc,
        replica_id=replica_id,
        owner_org_id=owner_org_id,
        capabilities=capabilities,
        name=unique("model"),
    )
    if wait:
        if owner_org_id is None:
            watcher = await platform.operator_key()
        else:  # only its own organisation can see a private model
            watcher = (await platform.factory.new_member(owner_org_id, Role.MEMBER)).key
        async with platform.client(watcher) as client:

            async def listed() -> bool:
                response = await client.get("/v1/models")
                return any(m["id"] == name for m in response.json().get("data", []))

            await wait_until(listed)
    return Served(name, replica_id, platform.secret_for(replica_id))


def chat_body(model: str, text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@contextlib.asynccontextmanager
async def console_session(url: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in to the console with `key`: from then on it holds only the session
    cookie and sends the session's CSRF token, never the key."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        signed = await client.post("/console/session", headers={"Authorization": f"Bearer {key}"})
        assert signed.status_code == 201, signed.text
        client.headers["X-CSRF-Token"] = signed.json()["csrf_token"]
        yield client
