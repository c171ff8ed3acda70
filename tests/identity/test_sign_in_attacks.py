"""Single sign-on attacked: forged tokens, replayed and injected codes, stolen or missing
state, open redirects, a provider speaking for another organisation's people, a group named
like a role. Each is refused, audited (`identity.signin_refused` with its reason), and
creates nothing: no user, no identity, no session.

Forged tokens come from a hostile provider served here (the attacker's own discovery, keys
and token endpoint); everything else goes through the real provider.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import func, select

from souverain.core.roles import Role
from souverain.db.audit import AuditEventRow
from souverain.db.identity import SignInFlowRow, UserIdentityRow
from souverain.db.tables import UserRow
from souverain.testing.factories import unique
from souverain.testing.live import LiveServer
from tests.conftest import Platform, wait_until
from tests.identity.conftest import SsoOrg, Walk, authorize, begin, sign_in
from tests.identity.test_id_tokens import b64

Forge = Callable[[dict[str, Any]], str]


@dataclass
class Hostile:
    """An OpenID provider run by an attacker: it answers the token request with whatever
    ID token the test forges from the standard claims of the flow."""

    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "h1"}))
    url: str = ""
    client_id: str = "souverain"
    forge: Forge | None = None
    nonce: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/auth",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            return {"keys": [self.key.as_dict(private=False) | {"use": "sig", "alg": "RS256"}]}

        @app.post("/token")
        async def token() -> dict[str, Any]:
            assert self.forge is not None
            return {"id_token": self.forge(self.claims()), "token_type": "Bearer"}

        return app

    def claims(self, **override: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.url,
            "aud": self.client_id,
            "sub": "victim-sub",
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "preferred_username": "mallory",
            "groups": ["eng"],
        }
        return {**base, **override}

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None) -> str:
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)


@pytest.fixture(scope="module")
async def hostile(platform: Platform) -> AsyncIterator[tuple[Hostile, str]]:
    """The hostile provider, configured by the (deceived) operator for an organisation."""
    attacker = Hostile()
    with LiveServer(attacker.app()) as server:
        attacker.url = server.url
        tenant = await platform.factory.tenant(roles={"owner": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "owner", Role.OWNER)
        async with platform.client(await platform.operator_key()) as client:
            added = await client.post(
                "/api/identity-providers",
                json={
                    "org": tenant.org_name,
                    "name": "hostile",
                    "issuer": attacker.url,
                    "client_id": attacker.client_id,
                    "client_secret": "s3cret-of-the-client",
                },
            )
        assert added.status_code == 201, added.text
        async with platform.client(owner.key) as client:
            mapped = await client.put(
                f"/api/orgs/{tenant.org_name}/group-mappings",
                json={"lines": [{"group": "eng", "role": "member"}]},
            )
        assert mapped.status_code == 200, mapped.text
        yield attacker, tenant.org_name


async def nothing_created(platform: Platform, username: str) -> None:
    async with platform.sessions() as session:
        user = (await session.execute(select(UserRow).where(UserRow.name == username))).first()
    assert user is None, f"{username} was created"


async def refusal_audited(platform: Platform, reason: str) -> None:
    async def seen() -> bool:
        query = select(AuditEventRow).where(AuditEventRow.action == "identity.signin_refused")
        async with platform.sessions() as session:
            events = (await session.execute(query)).scalars()
            return any(json.loads(e.details).get("reason") == reason for e in events)

    await wait_until(seen, timeout_s=10)


async def forged_sign_in(
    platform: Platform, attacker: Hostile, org: str, forge: Forge, *, honest: bool = False
) -> str:
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as browser:
        started = await begin(browser, org=org)
        assert started.status_code == 303, started.text
        query = parse_qs(urlsplit(started.headers["location"]).query)
        attacker.nonce = query["nonce"][0]
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
        attacker.forge = forge
        back = await browser.get(
            "/console/sso/callback", params={"code": "any", "state": query["state"][0]}
        )
        assert ("souverain_session=" in back.headers.get("set-cookie", "")) is honest
        assert back.status_code == 303
        return back.headers["location"]


def alg_none(attacker: Hostile) -> Forge:
    def forge(claims: dict[str, Any]) -> str:
        header = b64(json.dumps({"alg": "none", "kid": "h1"}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."

    return forge


def hs256_with_public_key(attacker: Hostile) -> Forge:
    import hashlib
    import hmac

    def forge(claims: dict[str, Any]) -> str:
        head = b64(json.dumps({"alg": "HS256", "kid": "h1"}).encode())
        body = b64(json.dumps(claims).encode())
        secret = attacker.key.as_pem(private=False)
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(mac)}"

    return forge


FORGERIES: dict[str, tuple[Callable[[Hostile], Forge], str]] = {
    "wrong-issuer": (lambda a: lambda c: a.sign({**c, "iss": "https://idp.other.example"}), "wrong_issuer"),
    "wrong-audience": (lambda a: lambda c: a.sign({**c, "aud": "another-client"}), "wrong_audience"),
    "wrong-signature": (
        lambda a: lambda c: a.sign(c, RSAKey.generate_key(2048, parameters={"kid": "h1"})),
        "bad_signature",
    ),
    "alg-none": (alg_none, "disallowed_algorithm"),
    "hs256-public-key": (hs256_with_public_key, "disallowed_algorithm"),
    "expired": (lambda a: lambda c: a.sign({**c, "exp": int(time.time()) - 600}), "expired"),
    "nonce-mismatch": (lambda a: lambda c: a.sign({**c, "nonce": "another"}), "nonce_mismatch"),
    "nonce-missing": (
        lambda a: lambda c: a.sign({k: v for k, v in c.items() if k != "nonce"}),
        "missing_nonce",
    ),
}  # fmt: skip


class TestForgedTokens:
    @pytest.mark.parametrize("case", sorted(FORGERIES))
    async def test_a_forged_id_token_signs_nobody_in(
        self, platform: Platform, hostile: tuple[Hostile, str], case: str
    ) -> None:
        attacker, org = hostile
        make, reason = FORGERIES[case]
        username = unique("mallory")
        forge = make(attacker)
        landed = await forged_sign_in(
            platform, attacker, org, lambda c: forge({**c, "preferred_username": username})
        )
        assert landed == f"/console?sso_error={reason}"
        await nothing_created(platform, username)
        await refusal_audited(platform, reason)

    async def test_the_same_path_with_an_honest_token_signs_in(
        self, platform: Platform, hostile: tuple[Hostile, str]
    ) -> None:
        """The control: the forgeries above fail for what they forge, not by accident."""
        attacker, org = hostile
        username = unique("honest")
        landed = await forged_sign_in(
            platform,
            attacker,
            org,
            lambda c: attacker.sign({**c, "preferred_username": username, "sub": username}),
            honest=True,
        )
        assert landed == "/console"


class TestFlowTampering:
    async def test_a_replayed_callback_finishes_nothing(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        client = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        walks.append(Walk(client, httpx.Response(200)))
        callback = await authorize(client, await begin(client, org=sso_org.name), person)
        first = await client.get(callback)
        assert first.headers["location"] == "/console"
        replay = await client.get(callback)
        assert replay.headers["location"] == "/console?sso_error=unknown_state"
        assert "souverain_session" not in replay.headers.get("set-cookie", "")
        await refusal_audited(sso_org.platform, "unknown_state")

    async def test_an_injected_code_fails_the_pkce_check(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        """An attacker's code (obtained for the attacker's PKCE challenge) put into the
        victim's flow: the provider refuses it for the victim's verifier."""
        attacker = sso_org.person(["eng"])
        thief = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        victim = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        walks.extend([Walk(thief, httpx.Response(200)), Walk(victim, httpx.Response(200))])
        stolen = await authorize(thief, await begin(thief, org=sso_org.name), attacker)
        code = parse_qs(urlsplit(stolen).query)["code"][0]
        started = await begin(victim, org=sso_org.name)
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        injected = await victim.get("/console/sso/callback", params={"code": code, "state": state})
        assert injected.headers["location"] == "/console?sso_error=provider_refused"
        await refusal_audited(sso_org.platform, "provider_refused")

    async def test_a_state_presented_by_another_browser_is_refused(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        """Login CSRF: the attacker's own callback URL opened in the victim's browser."""
        person = sso_org.person(["eng"])
        attacker = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        victim = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        walks.extend([Walk(attacker, httpx.Response(200)), Walk(victim, httpx.Response(200))])
        callback = await authorize(attacker, await begin(attacker, org=sso_org.name), person)
        answer = await victim.get(callback)
        assert answer.headers["location"] == "/console?sso_error=state_mismatch"
        assert "souverain_session" not in answer.headers.get("set-cookie", "")
        await refusal_audited(sso_org.platform, "state_mismatch")

    @pytest.mark.parametrize("params", [{}, {"code": "x"}, {"code": "x", "state": "made-up"}])
    async def test_a_missing_or_unknown_state_is_refused(
        self, platform: Platform, params: dict[str, str]
    ) -> None:
        async with httpx.AsyncClient(base_url=platform.url) as browser:
            answer = await browser.get("/console/sso/callback", params=params)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console?sso_error=unknown_state"

    async def test_an_error_from_the_provider_signs_nobody_in(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        client = httpx.AsyncClient(base_url=sso_org.platform.url, timeout=30)
        walks.append(Walk(client, httpx.Response(200)))
        started = await begin(client, org=sso_org.name)
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        answer = await client.get(
            "/console/sso/callback", params={"error": "access_denied", "state": state}
        )
        assert answer.headers["location"] == "/console?sso_error=provider_error"


class TestOpenRedirect:
    @pytest.mark.parametrize(
        "target",
        [
            "https://evil.example/console",
            "//evil.example",
            "/\\evil.example",
            "/console//evil.example",
            "/console@evil.example",
            "javascript:alert(1)",
            "/api/keys",
            "/console/../api",
        ],
    )
    async def test_a_return_url_outside_the_console_is_refused_before_anything(
        self, sso_org: SsoOrg, target: str
    ) -> None:
        async with sso_org.platform.sessions() as session:
            before = (
                await session.execute(select(func.count()).select_from(SignInFlowRow))
            ).scalar_one()
        async with httpx.AsyncClient(base_url=sso_org.platform.url) as browser:
            answer = await begin(browser, org=sso_org.name, return_to=target)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "return_to"
        async with sso_org.platform.sessions() as session:
            after = (
                await session.execute(select(func.count()).select_from(SignInFlowRow))
            ).scalar_one()
        assert after == before
        await refusal_audited(sso_org.platform, "open_redirect")


class TestWhoTheProviderMaySpeakFor:
    async def test_a_provider_of_one_organisation_cannot_sign_in_a_user_of_another(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        platform = sso_org.platform
        other = await platform.factory.tenant(roles={"bob": Role.OWNER})
        victim_name = f"bob-{other.org_name}"  # the other organisation's owner
        impostor = sso_org.person(["eng", "leads"], username=victim_name)
        walks.append(walk := await sign_in(platform, impostor, org=sso_org.name))
        assert walk.landed == "/console?sso_error=name_taken"
        async with platform.sessions() as session:
            identities = await session.execute(
                select(UserIdentityRow).where(UserIdentityRow.subject == impostor.sub)
            )
            assert identities.first() is None
        await refusal_audited(platform, "name_taken")

    async def test_a_provider_cannot_sign_in_an_operator_by_name(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        operator = await sso_org.platform.factory.operator()
        async with sso_org.platform.client(operator.key) as client:
            name = (await client.get("/api/me")).json()["user"]
        impostor = sso_org.person(["eng"], username=name)
        walks.append(walk := await sign_in(sso_org.platform, impostor, org=sso_org.name))
        assert walk.landed == "/console?sso_error=name_taken"

    async def test_a_group_named_like_a_role_grants_nothing(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["owner", "operator", "admin", "souverain:owner"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        assert walk.landed == "/console?sso_error=no_role"
        await nothing_created(sso_org.platform, person.username)
        await refusal_audited(sso_org.platform, "no_role")

    async def test_an_owner_cannot_map_a_group_to_operator(self, sso_org: SsoOrg) -> None:
        async with sso_org.platform.client(sso_org.owner_key) as client:
            answer = await client.put(
                f"/api/orgs/{sso_org.name}/group-mappings",
                json={"lines": [{"group": "eng", "role": "operator"}]},
            )
        assert answer.status_code == 403, answer.text
