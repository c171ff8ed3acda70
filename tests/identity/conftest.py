"""Fixtures of the identity tests: a real OpenID provider (oidc-provider on Node.js) with
souverain registered as its client, organisations that sign in through it, and the redirect
flow walked by an HTTP client the way a browser walks it (test_browser.py walks it in
Chromium)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from souverain.core.roles import Role
from souverain.testing.factories import unique
from tests.conftest import Platform
from tests.identity.oidc_provider import OpenIdProvider, Person

CALLBACK = "/console/sso/callback"


@pytest.fixture(scope="session")
def idp(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProvider]:
    provider = OpenIdProvider(tmp_path_factory.mktemp("idp"))
    provider.register_client(platform.url + CALLBACK)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@dataclass
class SsoOrg:
    """An organisation whose people sign in through the test provider."""

    platform: Platform
    idp: OpenIdProvider
    name: str
    org_id: str
    owner_key: str
    provider_id: str

    async def map_groups(self, lines: list[dict[str, Any]], group_source: str = "token") -> None:
        async with self.platform.client(self.owner_key) as client:
            response = await client.put(
                f"/api/orgs/{self.name}/group-mappings",
                json={"lines": lines, "group_source": group_source},
            )
        assert response.status_code == 200, response.text

    def person(self, groups: list[str], username: str | None = None) -> Person:
        return self.idp.add_person(username or unique("p"), groups=groups)


async def add_provider(
    platform: Platform, idp: OpenIdProvider, org: str | None, name: str = "directory"
) -> str:
    client_registration = idp.clients[0]
    body = {
        "name": name,
        "issuer": idp.issuer,
        "client_id": client_registration.client_id,
        "client_secret": client_registration.client_secret,
        "scopes": "openid email profile groups",
    }
    if org is not None:
        body["org"] = org
    async with platform.client(await platform.operator_key()) as client:
        response = await client.post("/api/identity-providers", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uri"] == platform.url + CALLBACK
    return str(response.json()["id"])


@pytest.fixture
async def sso_org(platform: Platform, idp: OpenIdProvider) -> SsoOrg:
    tenant = await platform.factory.tenant(roles={"olga": Role.OWNER})
    owner = await platform.factory.member_key(tenant, "olga", Role.OWNER)
    provider_id = await add_provider(platform, idp, tenant.org_name)
    org = SsoOrg(platform, idp, tenant.org_name, tenant.org_id, owner.key, provider_id)
    await org.map_groups([{"group": "eng", "role": "member"}, {"group": "leads", "role": "admin"}])
    return org


@dataclass
class Walk:
    """A browser's part of the redirect flow: its cookie jar and the last answer."""

    client: httpx.AsyncClient
    answer: httpx.Response

    @property
    def landed(self) -> str:
        return self.answer.headers.get("location", "")

    async def csrf(self) -> str:
        session = await self.client.get("/console/session")
        assert session.status_code == 200, session.text
        token = str(session.json()["csrf_token"])
        self.client.headers["X-CSRF-Token"] = token
        return token


async def begin(client: httpx.AsyncClient, *, org: str | None, **params: str) -> httpx.Response:
    query = {"org": org, **params} if org else dict(params)
    return await client.get("/console/sso/start", params=query)


async def authorize(client: httpx.AsyncClient, start: httpx.Response, person: Person) -> str:
    """At the provider: follow the authorization request, sign in with the password, and
    return the callback URL the provider sends the browser to (not yet followed)."""
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    answer = await client.get(location)
    while answer.status_code in (302, 303) and "/interaction/" in answer.headers["location"]:
        location = urljoin(location, answer.headers["location"])
        answer = await client.get(location)
    uid = re.search(r"/interaction/([A-Za-z0-9_-]+)/login", answer.text)
    assert uid, answer.text[:500]
    login = urljoin(location, f"/interaction/{uid.group(1)}/login")
    answer = await client.post(
        login, data={"username": person.username, "password": person.password}
    )
    while answer.status_code in (302, 303) and CALLBACK not in answer.headers["location"]:
        answer = await client.get(urljoin(login, answer.headers["location"]))
    assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
    return answer.headers["location"]


async def sign_in(platform: Platform, person: Person, *, org: str | None, **params: str) -> Walk:
    """The whole flow; the client is left holding whatever cookies it got."""
    client = httpx.AsyncClient(base_url=platform.url, timeout=30)
    callback = await authorize(client, await begin(client, org=org, **params), person)
    return Walk(client, await client.get(callback))


@pytest.fixture
async def walks() -> AsyncIterator[list[Walk]]:
    opened: list[Walk] = []
    yield opened
    for walk in opened:
        await walk.client.aclose()
