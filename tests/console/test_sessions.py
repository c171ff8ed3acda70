"""Console sign-in: an API key exchanged once for a session cookie.

The cookie is HttpOnly and SameSite=Strict, the key never comes back to the browser, every
change needs the session's CSRF token, sign-out and key revocation end the session at once,
an idle session ends by itself, and every sign-in and sign-out is in the audit log.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from souverain.console import assets
from souverain.core.errors import AuthenticationError
from souverain.core.roles import Role
from souverain.db.tables import ConsoleSessionRow, utcnow
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.tenancy import console_sessions
from souverain.tenancy.auth import principal_for_key
from souverain.testing.factories import unique
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, Platform
from tests.security.helpers import assert_openai_error, console_session

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, not a place: nothing is fetched from it


async def owner_key(platform: Platform) -> tuple[str, str]:
    tenant = await platform.factory.tenant(roles={"olga": Role.OWNER})
    key = await platform.factory.member_key(tenant, "olga", Role.OWNER)
    return key.key, tenant.org_name


class TestSignIn:
    async def test_the_key_becomes_an_http_only_strict_cookie_without_the_key_in_it(
        self, platform: Platform
    ) -> None:
        key, _ = await owner_key(platform)
        async with httpx.AsyncClient(base_url=platform.url) as client:
            signed = await client.post(
                "/console/session", headers={"Authorization": f"Bearer {key}"}
            )
        assert signed.status_code == 201, signed.text
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("souverain_session=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; behind TLS it is Secure (below)
        assert key.split("_", 1)[1] not in cookie and key not in signed.text
        assert signed.headers["cache-control"] == "no-store"
        assert len(signed.json()["csrf_token"]) == 64

    async def test_behind_tls_the_cookie_is_secure(self, tmp_path: Path) -> None:
        """An installation whose public URL is https:// (TLS ended by a proxy in front of
        it) marks the cookie Secure, although the proxy talks plain http to souverain."""
        keys: list[str] = []
        settings = Settings(
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'souverain.db'}",
            secret_key=MASTER_KEY,  # type: ignore[arg-type]
            public_url="https://souverain.example",
            port=free_port(),
        )
        with LiveServer(create_app(settings, on_first_key=keys.append), port=settings.port) as up:
            async with httpx.AsyncClient(base_url=up.url) as client:
                signed = await client.post(
                    "/console/session", headers={"Authorization": f"Bearer {keys[0]}"}
                )
        assert signed.status_code == 201, signed.text
        assert "Secure" in signed.headers["set-cookie"]

    async def test_a_bad_key_opens_no_session(self, platform: Platform) -> None:
        async with httpx.AsyncClient(base_url=platform.url) as client:
            signed = await client.post(
                "/console/session", headers={"Authorization": "Bearer sk-souv-0000_nope"}
            )
            assert_openai_error(signed, 401, "invalid_api_key")
            assert "set-cookie" not in signed.headers
            anonymous = await client.post("/console/session")
            assert_openai_error(anonymous, 401, "invalid_api_key")

    async def test_the_session_reads_like_the_key_and_shows_its_csrf_token_again(
        self, platform: Platform
    ) -> None:
        key, org = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            me = (await browser.get("/api/me")).json()
            again = await browser.get("/console/session")
            assert again.status_code == 200
            assert again.json()["csrf_token"] == browser.headers["X-CSRF-Token"]
        assert me["org"] == org and me["role"] == "owner"

    async def test_a_session_cannot_open_another_session(self, platform: Platform) -> None:
        key, _ = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            assert_openai_error(await browser.post("/console/session"), 401, "invalid_api_key")


class TestCsrf:
    async def test_a_change_without_the_token_is_refused_and_changes_nothing(
        self, platform: Platform
    ) -> None:
        key, _ = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            token = browser.headers.pop("X-CSRF-Token")
            before = len((await browser.get("/api/keys")).json())
            forged = await browser.post("/api/keys", json={"name": "forged", "role": "viewer"})
            assert_openai_error(forged, 403, "permission_denied")
            wrong = await browser.post(
                "/api/keys", json={"name": "forged"}, headers={"X-CSRF-Token": "0" * 64}
            )
            assert_openai_error(wrong, 403, "permission_denied")
            assert len((await browser.get("/api/keys")).json()) == before
            made = await browser.post(
                "/api/keys",
                json={"name": "real", "role": "viewer"},
                headers={"X-CSRF-Token": token},
            )
            assert made.status_code == 201, made.text

    async def test_a_token_of_another_session_does_not_pass(self, platform: Platform) -> None:
        key, _ = await owner_key(platform)
        async with (
            console_session(platform.url, key) as one,
            console_session(platform.url, key) as two,
        ):
            one.headers["X-CSRF-Token"] = two.headers["X-CSRF-Token"]
            crossed = await one.post("/api/keys", json={"name": "crossed", "role": "viewer"})
            assert_openai_error(crossed, 403, "permission_denied")

    async def test_inference_from_the_console_needs_the_token_too(self, platform: Platform) -> None:
        key, _ = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            del browser.headers["X-CSRF-Token"]
            chat = await browser.post(
                "/v1/chat/completions",
                json={"model": "any", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert_openai_error(chat, 403, "permission_denied")


class TestSessionEnds:
    async def test_sign_out_ends_it_on_the_server_and_is_audited(self, platform: Platform) -> None:
        key, org = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            cookie = browser.cookies["souverain_session"]
            out = await browser.delete("/console/session")
            assert out.status_code == 204
            assert 'souverain_session=""' in out.headers["set-cookie"]
            browser.cookies.set("souverain_session", cookie)  # a copy kept by an attacker
            assert_openai_error(await browser.get("/api/me"), 401, "invalid_api_key")
        async with platform.client(key) as client:
            events = (await client.get("/api/audit", params={"org": org})).json()["events"]
        actions = [event["action"] for event in events]
        assert "console.signin" in actions and "console.signout" in actions
        assert all(cookie.split(".")[1] not in str(event) for event in events)

    async def test_revoking_the_key_ends_its_sessions(self, platform: Platform) -> None:
        key, _ = await owner_key(platform)
        async with platform.client(key) as client:
            minted = (await client.post("/api/keys", json={"name": unique("k")})).json()
        async with console_session(platform.url, minted["key"]) as browser:
            assert (await browser.get("/api/me")).status_code == 200
            async with platform.client(key) as client:
                assert (await client.delete(f"/api/keys/{minted['id']}")).status_code == 200
            assert_openai_error(await browser.get("/api/me"), 401, "invalid_api_key")

    async def test_an_idle_session_ends_and_an_active_one_lasts_until_its_max_age(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant()
        owner = next(iter(tenant.users))
        key = await platform.factory.member_key(tenant, owner, Role.OWNER)
        start = utcnow()
        async with platform.factory.sessions.begin() as session:
            principal = await principal_for_key(session, key_id=key.id)
            opened = await console_sessions.open_session(
                session, principal=principal, max_age_s=3600, client=None, now=start
            )
        async with platform.factory.sessions.begin() as session:  # active every 10 minutes
            for minutes in range(10, 60, 10):
                moment = start + timedelta(minutes=minutes)
                await console_sessions.resolve(
                    session, cookie=opened.cookie, idle_s=900, now=moment
                )
            with pytest.raises(AuthenticationError):  # past its max age, however active
                await console_sessions.resolve(
                    session, cookie=opened.cookie, idle_s=900, now=start + timedelta(minutes=61)
                )
        async with platform.factory.sessions.begin() as session:
            principal = await principal_for_key(session, key_id=key.id)
            idle = await console_sessions.open_session(
                session, principal=principal, max_age_s=3600, client=None, now=start
            )
            with pytest.raises(AuthenticationError):  # 16 minutes without a request
                await console_sessions.resolve(
                    session, cookie=idle.cookie, idle_s=900, now=start + timedelta(minutes=16)
                )

    async def test_sessions_ended_a_day_ago_are_forgotten_at_the_next_sign_in(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant()
        key = await platform.factory.member_key(tenant, next(iter(tenant.users)), Role.OWNER)
        long_ago = utcnow() - timedelta(days=3)
        async with platform.factory.sessions.begin() as session:
            principal = await principal_for_key(session, key_id=key.id)
            old = await console_sessions.open_session(
                session, principal=principal, max_age_s=3600, client=None, now=long_ago
            )
        async with platform.factory.sessions.begin() as session:
            await console_sessions.open_session(
                session, principal=principal, max_age_s=3600, client=None
            )
            old_id = old.cookie.split(".")[0]
            assert await session.get(ConsoleSessionRow, old_id) is None

    async def test_a_guessed_or_malformed_cookie_is_refused(self, platform: Platform) -> None:
        key, _ = await owner_key(platform)
        async with console_session(platform.url, key) as browser:
            real = browser.cookies["souverain_session"]
            session_id = real.split(".")[0]
            for forged in (f"{session_id}.guess", session_id, "x" * 500, f"{session_id}."):
                browser.cookies.clear()
                browser.cookies.set("souverain_session", forged)
                assert_openai_error(await browser.get("/api/me"), 401, "invalid_api_key")


class TestConsolePages:
    async def test_the_shell_and_assets_carry_a_strict_content_security_policy(
        self, platform: Platform
    ) -> None:
        async with httpx.AsyncClient(base_url=platform.url) as client:
            for path in ("/console", "/console/assets/app.js", "/console/assets/console.css"):
                response = await client.get(path)
                assert response.status_code == 200, path
                policy = response.headers["content-security-policy"]
                assert "script-src 'self'" in policy and "default-src 'none'" in policy
                assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
                assert response.headers["x-content-type-options"] == "nosniff"
            shell = (await client.get("/console")).text
        assert "<script>" not in shell and "http://" not in shell and "https://" not in shell

    async def test_only_the_console_files_can_be_named(self, platform: Platform) -> None:
        async with httpx.AsyncClient(base_url=platform.url) as client:
            for name in ("nope.js", "..%2F__init__.py", "..%2F..%2Fsettings.py", "index.html"):
                response = await client.get(f"/console/assets/{name}")
                assert response.status_code == 404, (name, response.status_code)

    def test_no_console_file_names_another_host(self) -> None:
        for name, (body, _) in assets().items():
            urls = set(re.findall(r"https?://[^\s\"'`)]+", body.decode()))
            assert urls <= {SVG_NAMESPACE}, (name, urls)
        assert {"index.html", "app.js", "console.css"} <= set(assets())
