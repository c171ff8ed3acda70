"""Canaries: an API key and a replica secret that must never show up anywhere.

Requests fail in as many ways as we can think of (near-miss keys, bodies that carry the
key, an engine error, a broken stream, an engine that is down, an engine that refuses the
secret). Every log record the process emits at DEBUG and above, every response body and
header, and every usage record's error text is searched for the key's secret part and
the replica secret.

The key is never used as the name of an object to look up: the SQLite driver logs every
query parameter at DEBUG, so a lookup by a name equal to the key would log it (the value
the client typed, not something the server holds).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import select

from souverain.core.ids import new_id, parse_api_key
from souverain.core.roles import Role
from souverain.db.tables import UsageRecordRow
from souverain.testing.live import free_port
from tests.conftest import Platform, wait_until
from tests.security.helpers import Served, chat_body, serve


@dataclass
class Capture:
    """Every response seen, to be searched afterwards."""

    responses: list[httpx.Response] = field(default_factory=list)

    def texts(self) -> Iterator[tuple[str, str]]:
        for response in self.responses:
            where = (
                f"{response.request.method} {response.request.url.path} -> {response.status_code}"
            )
            yield where + " body", response.text
            for name, value in response.headers.items():
                yield f"{where} header {name}", value


def _near_misses(full: str) -> list[str]:
    key_id, secret = parse_api_key(full) or ("", "")
    flip = {"A": "B"}.get(secret[-1], "A")
    first = {"A": "B"}.get(secret[0], "A")
    other_id = ("1" if key_id[0] != "1" else "2") + key_id[1:]
    return [
        f"sk-souv-{key_id}_{secret[:-1]}{flip}",  # last character changed
        f"sk-souv-{key_id}_{first}{secret[1:]}",  # first character changed
        f"sk-souv-{key_id}_{secret[:-1]}",  # one character short
        f"sk-souv-{key_id}_{secret}A",  # one character long
        f"sk-souv-{other_id}_{secret}",  # right secret, wrong id
        full.upper(),
        f"{key_id}_{secret}",  # no prefix
        f"sk-souv-{key_id}-{secret}",  # wrong separator
        f"sk-souv-{key_id}_{secret[::-1]}",
    ]


def _malformed_bodies(key: str, secret: str, model: str) -> list[tuple[str, bytes]]:
    def dumps(value: object) -> bytes:
        return json.dumps(value).encode()

    chat = "/v1/chat/completions"
    return [
        (chat, b'{"model": "' + model.encode() + b'", "messages": [{"content": "' + key.encode()),
        (chat, b'{"model": "' + model.encode() + b'", "note": "' + key.encode() + b'\xff"}'),
        (chat, dumps({"model": model, "messages": [{"role": "hacker", "content": key}]})),
        (chat, dumps({"model": model, "messages": key})),
        (chat, dumps(chat_body(model, key, temperature=key))),
        (chat, dumps(chat_body(model, key, max_tokens=key))),
        (chat, dumps(chat_body(model, key, stop=[key] * 5))),
        (chat, dumps(chat_body(model, key, metadata={"k": key * 20}))),
        (chat, dumps(chat_body(model, key, logit_bias={"1": key}))),
        (chat, dumps(chat_body(model, key, seed=secret))),
        (
            chat,
            dumps(
                chat_body(model, key, tools=[{"type": "function", "function": {"name": key * 10}}])
            ),
        ),
        (chat, dumps([key])),
        (chat, dumps(key)),
        ("/v1/completions", dumps({"model": model, "prompt": [key, key]})),
        ("/v1/embeddings", dumps({"model": model, "input": key, "dimensions": secret})),
        ("/api/keys", dumps({"name": key * 3})),
        ("/api/keys", dumps({"role": key})),
        ("/api/keys", dumps({"scopes": [key]})),
        ("/api/keys", dumps({"expires_in_days": key})),
        ("/api/keys", b'{"name": "' + key.encode() + b'", '),
        ("/api/orgs", dumps({"name": key})),
        ("/api/deployments", dumps({"name": key, "model": model})),
        ("/api/deployments", dumps({"name": "x", "model": model, "engine_args": {"k": [key]}})),
        ("/api/models", dumps({"name": "x", "uri": key, "sha256": key})),
    ]


class TestCanary:
    async def test_secrets_never_reach_logs_responses_or_usage_errors(
        self, platform: Platform, caplog: pytest.LogCaptureFixture
    ) -> None:
        tenant = await platform.factory.tenant(roles={"canary": Role.ADMIN})
        canary = await platform.factory.member_key(tenant, "canary", Role.ADMIN)
        _, secret = parse_api_key(canary.key) or ("", "")
        assert secret
        served = await serve(platform, owner_org_id=tenant.org_id)
        down = await serve(
            platform,
            owner_org_id=tenant.org_id,
            url=f"http://127.0.0.1:{free_port()}/r/nothing-here",  # an engine that is down
        )
        refuses = await serve(
            platform,
            owner_org_id=tenant.org_id,
            url=f"{platform.stand_in_url}/r/{new_id('rep')}",  # plays another replica
        )
        replica_secrets = {served.secret, down.secret, refuses.secret}

        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="souverain")
        capture = Capture()
        async with platform.client() as anonymous, platform.client(canary.key) as client:
            await self._near_misses(anonymous, capture, canary.key, served)
            await self._malformed(client, capture, canary.key, secret, served)
            await self._engine_faults(client, capture, canary.key, served, down, refuses)

        # The test's own HTTP client logs the URLs it calls (some carry the key on purpose);
        # what matters is what the servers log, from their own threads.
        server_records = [r for r in caplog.records if r.thread != threading.get_ident()]
        own_records = [r for r in caplog.records if r.thread == threading.get_ident()]
        # Control: the search does find the secret where it is (the URL with ?api_key=).
        assert any(secret in caplog.handler.format(r) for r in own_records)

        statuses = [r.status_code for r in capture.responses]
        assert 401 in statuses and 400 in statuses and 422 in statuses
        assert 502 in statuses and 503 in statuses and 200 in statuses

        canaries = {
            "api key secret": secret,
            **{f"replica secret {s[:6]}": s for s in replica_secrets},
        }
        for what, value in canaries.items():
            for where, text in capture.texts():
                assert value not in text, f"{what} found in {where}"
            for record in server_records:
                rendered = caplog.handler.format(record) + repr(record.args)
                at = rendered.find(value)
                assert value not in rendered, (
                    f"{what} found in log record {record.name}: {rendered[max(0, at - 300) : at]}"
                )

        # The capture did see the server's own records, at DEBUG, from its threads.
        names = {record.name for record in server_records}
        assert "souverain.gateway.pipeline" in names, sorted(names)
        assert any(record.levelno == logging.DEBUG for record in server_records)

        errors: list[str] = []

        async def metered() -> bool:  # usage reaches the database a few milliseconds later
            nonlocal errors
            async with platform.sessions() as session:
                query = select(UsageRecordRow.error).where(UsageRecordRow.key_id == canary.id)
                errors = [e for e in (await session.execute(query)).scalars() if e]
            return bool(errors)

        await wait_until(metered, timeout_s=5)  # the failures above were metered with a reason

        for value in canaries.values():
            assert all(value not in error for error in errors)

    async def _near_misses(
        self, client: httpx.AsyncClient, capture: Capture, key: str, served: Served
    ) -> None:
        headers_list = [{"Authorization": f"Bearer {wrong}"} for wrong in _near_misses(key)]
        headers_list += [
            {"Authorization": f"Basic {base64.b64encode(f'user:{key}'.encode()).decode()}"},
            {"Authorization": f"Token {key}"},
            {"Authorization": key},
            {"X-Api-Key": key},
        ]
        for headers in headers_list:
            for method, path, body in (
                ("GET", "/api/me", None),
                ("GET", "/v1/models", None),
                ("POST", "/v1/chat/completions", chat_body(served.name)),
            ):
                response = await client.request(method, path, headers=headers, json=body)
                assert response.status_code == 401, (headers, path, response.text)
                capture.responses.append(response)
        response = await client.get("/api/me", params={"api_key": key})
        assert response.status_code == 401
        capture.responses.append(response)

    async def _malformed(
        self, client: httpx.AsyncClient, capture: Capture, key: str, secret: str, served: Served
    ) -> None:
        for path, raw in _malformed_bodies(key, secret, served.name):
            response = await client.post(
                path, content=raw, headers={"content-type": "application/json"}
            )
            assert 400 <= response.status_code < 500, (path, raw[:80], response.text)
            capture.responses.append(response)
        response = await client.get("/api/usage", params={"org": key})
        capture.responses.append(response)
        response = await client.post("/v1/chat/completions", json=chat_body(served.name, user=key))
        assert response.status_code == 200  # `user` is accepted and kept from the engine
        capture.responses.append(response)

    async def _engine_faults(
        self,
        client: httpx.AsyncClient,
        capture: Capture,
        key: str,
        served: Served,
        down: Served,
        refuses: Served,
    ) -> None:
        failing = await client.post(
            "/v1/chat/completions", json=chat_body(served.name, f"#fail-500 {key}")
        )
        assert failing.status_code == 502
        capture.responses.append(failing)
        broken = await client.post(
            "/v1/chat/completions",
            json=chat_body(served.name, f"#break-stream {key}", stream=True),
        )
        assert broken.status_code == 200 and "upstream_error" in broken.text
        capture.responses.append(broken)
        completions = await client.post(
            "/v1/completions", json={"model": served.name, "prompt": f"#fail-500 {key}"}
        )
        assert completions.status_code == 502
        capture.responses.append(completions)
        unreachable = await client.post("/v1/chat/completions", json=chat_body(down.name, key))
        assert unreachable.status_code == 503, unreachable.text
        capture.responses.append(unreachable)
        refused = await client.post("/v1/chat/completions", json=chat_body(refuses.name, key))
        assert refused.status_code == 502, refused.text
        capture.responses.append(refused)
