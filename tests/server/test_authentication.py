"""Every way a key can be wrong gives 401 in OpenAI's error shape; revocation is seen fast."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest

from souverain.core.roles import Role
from souverain.db.tables import utcnow
from tests.conftest import Platform, wait_until


def assert_openai_error(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


class TestAuthentication:
    @pytest.mark.parametrize(
        "header",
        [
            None,
            "Bearer",
            "Basic dXNlcjpwYXNz",
            "Bearer not-a-key",
            "Bearer sk-souv-0123456789abcdef_" + "x" * 10,
        ],
        ids=["missing", "empty-bearer", "basic", "garbage", "malformed"],
    )
    async def test_missing_or_malformed_key_is_401(
        self, platform: Platform, header: str | None
    ) -> None:
        headers = {"Authorization": header} if header else {}
        async with platform.client() as client:
            for path in ("/v1/models", "/api/me"):
                response = await client.get(path, headers=headers)
                assert response.status_code == 401, path
                assert response.headers["www-authenticate"] == "Bearer"
                assert_openai_error(response.json(), "invalid_api_key")

    async def test_wrong_secret_is_401(self, platform: Platform) -> None:
        operator = await platform.factory.operator()
        wrong = operator.key[:-4] + ("AAAA" if not operator.key.endswith("AAAA") else "BBBB")
        async with platform.client(wrong) as client:
            response = await client.get("/api/me")
        assert response.status_code == 401
        assert_openai_error(response.json(), "invalid_api_key")
        assert operator.key not in response.text and wrong not in response.text

    async def test_expired_key_is_401(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ann": Role.MEMBER})
        expired = await platform.factory.key(
            user_id=tenant.users["ann"],
            org_id=tenant.org_id,
            role=Role.MEMBER,
            expires_at=utcnow() - timedelta(seconds=1),
        )
        async with platform.client(expired.key) as client:
            response = await client.get("/v1/models")
        assert response.status_code == 401
        assert "expired" in response.json()["error"]["message"]

    async def test_revoked_key_is_refused_within_five_seconds(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"bob": Role.ADMIN})
        key = await platform.factory.member_key(tenant, "bob", Role.ADMIN)
        async with platform.client(key.key) as client:
            assert (await client.get("/api/me")).status_code == 200
            revoked = await client.delete(f"/api/keys/{key.id}")
            assert revoked.status_code == 200
            started = time.monotonic()

            async def refused() -> bool:
                return (await client.get("/api/me")).status_code == 401

            await wait_until(refused, timeout_s=5.0)
            assert time.monotonic() - started < 5.0
            response = await client.get("/api/me")
        assert "revoked" in response.json()["error"]["message"]

    async def test_removed_member_key_stops_working(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "carl": Role.MEMBER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        carl = await platform.factory.member_key(tenant, "carl", Role.MEMBER)
        async with platform.client(carl.key) as as_carl, platform.client(owner.key) as as_owner:
            assert (await as_carl.get("/api/me")).status_code == 200
            carl_name = (await as_carl.get("/api/me")).json()["user"]
            removed = await as_owner.delete(f"/api/orgs/{tenant.org_name}/members/{carl_name}")
            assert removed.status_code == 204

            async def refused() -> bool:
                return (await as_carl.get("/api/me")).status_code == 401

            await wait_until(refused, timeout_s=5.0)


class TestAmbiguousCredentials:
    async def test_two_authorization_headers_are_refused(self, platform: Platform) -> None:
        """A proxy in front may read one header and souverain the other: refuse, don't pick."""
        good = await platform.operator_key()
        for second in (good, "Bearer sk-souv-0000000000000000_" + "x" * 43):
            headers = [("Authorization", f"Bearer {good}"), ("Authorization", second)]
            async with httpx.AsyncClient(base_url=platform.url) as client:
                for path in ("/api/me", "/v1/models"):
                    answer = await client.get(path, headers=headers)
                    assert answer.status_code == 400, (path, answer.text)
                    assert "exactly one Authorization header" in answer.json()["error"]["message"]
