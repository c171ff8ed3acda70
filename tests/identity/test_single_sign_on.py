"""Single sign-on with the organisation's own OpenID provider (a real one: oidc-provider on
Node.js): people are created at their first sign-in, their groups give them their roles by
the owner's mapping, re-read at every sign-in and session refresh, and the provider's key
rotation is followed without a restart."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select, update

from souverain.db.audit import AuditEventRow
from souverain.db.identity import SsoSessionRow
from souverain.db.tables import ApiKeyRow, UserRow, utcnow
from souverain.identity.signin import SIGNIN_KEY
from tests.conftest import Platform
from tests.identity.conftest import SsoOrg, Walk, add_provider, sign_in
from tests.identity.oidc_provider import OpenIdProvider


async def me(walk: Walk) -> dict[str, object]:
    answer = await walk.client.get("/api/me")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def refresh_now(platform: Platform, walk: Walk) -> None:
    """Make the session's refresh due (instead of waiting `sso_refresh_s`)."""
    session_id = walk.client.cookies["souverain_session"].partition(".")[0]
    async with platform.sessions.begin() as session:
        await session.execute(
            update(SsoSessionRow)
            .where(SsoSessionRow.session_id == session_id)
            .values(refresh_at=utcnow() - timedelta(seconds=1))
        )


async def actions(platform: Platform, org_id: str | None, action: str) -> list[AuditEventRow]:
    query = select(AuditEventRow).where(AuditEventRow.action == action)
    if org_id is not None:
        query = query.where(AuditEventRow.org_id == org_id)
    async with platform.sessions() as session:
        return list((await session.execute(query)).scalars())


class TestFirstSignIn:
    async def test_a_person_is_created_with_the_role_their_groups_give(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walk = await sign_in(sso_org.platform, person, org=sso_org.name)
        walks.append(walk)
        assert walk.answer.status_code == 303 and walk.landed == "/console"
        cookie = walk.answer.headers["set-cookie"]
        assert "souverain_session=" in cookie and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        await walk.csrf()
        who = await me(walk)
        assert who["user"] == person.username and who["role"] == "member"
        assert who["org"] == sso_org.name and who["project_id"] is None
        signed_in = await actions(sso_org.platform, sso_org.org_id, "identity.signin")
        assert any(e.target_id == sso_org.provider_id for e in signed_in)

    async def test_the_person_acts_through_a_sign_in_key_nobody_can_present(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walk = await sign_in(sso_org.platform, person, org=sso_org.name)
        walks.append(walk)
        await walk.csrf()
        key_id = (await me(walk))["key_id"]
        async with sso_org.platform.sessions() as session:
            key = await session.get(ApiKeyRow, key_id)
        assert key is not None and key.name == SIGNIN_KEY and key.parent_key_id is None
        # A key they mint in the console hangs from it, so everything keys obey holds.
        minted = await walk.client.post("/api/keys", json={"name": "script", "role": "member"})
        assert minted.status_code == 201, minted.text
        async with sso_org.platform.client(minted.json()["key"]) as client:
            assert (await client.get("/api/me")).json()["user"] == person.username

    async def test_the_return_page_is_kept(self, sso_org: SsoOrg, walks: list[Walk]) -> None:
        person = sso_org.person(["eng"])
        walk = await sign_in(
            sso_org.platform, person, org=sso_org.name, return_to="/console#/usage"
        )
        walks.append(walk)
        assert walk.landed == "/console#/usage"


class TestGroupsDecide:
    async def test_a_second_sign_in_reads_the_groups_again(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walks.append(first := await sign_in(sso_org.platform, person, org=sso_org.name))
        await first.csrf()
        assert (await me(first))["role"] == "member"
        sso_org.idp.set_groups(person, ["eng", "leads"])
        walks.append(second := await sign_in(sso_org.platform, person, org=sso_org.name))
        await second.csrf()
        assert (await me(second))["role"] == "admin"

    async def test_removal_from_a_group_demotes_at_the_next_session_refresh(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng", "leads"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        await walk.csrf()
        assert (await me(walk))["role"] == "admin"
        sso_org.idp.set_groups(person, ["eng"])
        assert (await me(walk))["role"] == "admin"  # not yet: the refresh is not due
        await refresh_now(sso_org.platform, walk)
        after = await me(walk)
        assert after["role"] == "member"
        assert "manage" not in after["scopes"]  # type: ignore[operator]
        demoted = await actions(sso_org.platform, sso_org.org_id, "member.directory")
        assert any(e.details.find('"to":{"org":"member"}') >= 0 for e in demoted)

    async def test_removal_from_every_group_ends_the_session_at_the_refresh(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        await walk.csrf()
        sso_org.idp.set_groups(person, ["marketing"])
        await refresh_now(sso_org.platform, walk)
        answer = await walk.client.get("/api/me")
        assert answer.status_code == 401
        ended = await actions(sso_org.platform, sso_org.org_id, "identity.session_ended")
        assert any('"no_role"' in e.details for e in ended)

    async def test_a_person_the_provider_no_longer_knows_is_signed_out_at_the_refresh(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        await walk.csrf()
        sso_org.idp.remove_person(person)
        await refresh_now(sso_org.platform, walk)
        assert (await walk.client.get("/api/me")).status_code == 401

    async def test_a_project_mapping_gives_a_role_in_that_project_only(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        async with sso_org.platform.client(sso_org.owner_key) as client:
            made = await client.post(
                f"/api/orgs/{sso_org.name}/projects", json={"name": "research"}
            )
        assert made.status_code == 201, made.text
        await sso_org.map_groups(
            [
                {"group": "eng", "role": "member"},
                {"group": "lab", "role": "admin", "project": "research"},
            ]
        )
        person = sso_org.person(["lab"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        await walk.csrf()
        who = await me(walk)
        assert who["role"] == "admin" and who["project_id"] == made.json()["id"]
        projects = (await walk.client.get(f"/api/orgs/{sso_org.name}/projects")).json()
        assert [p["name"] for p in projects] == ["research"]


class TestProviderKeys:
    async def test_a_rotated_signing_key_is_fetched_and_an_unpublished_one_refused(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        sso_org.idp.rotate_keys()  # signs with a new key id souverain has not seen
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        assert walk.landed == "/console", walk.landed
        sso_org.idp.drop_old_keys()
        walks.append(again := await sign_in(sso_org.platform, person, org=sso_org.name))
        assert again.landed == "/console", again.landed


class TestOperators:
    async def test_the_operators_provider_makes_operators_by_their_group(
        self, platform: Platform, idp: OpenIdProvider, walks: list[Walk]
    ) -> None:
        await _platform_provider(platform, idp)
        ops = idp.add_person("ops-" + idp.issuer[-5:], groups=["platform-ops"])
        walks.append(walk := await sign_in(platform, ops, org=None))
        assert walk.landed == "/console", walk.landed
        await walk.csrf()
        who = await me(walk)
        assert who["role"] == "operator" and who["org"] is None
        outsider = idp.add_person("not-ops-" + idp.issuer[-5:], groups=["eng"])
        walks.append(refused := await sign_in(platform, outsider, org=None))
        assert refused.landed == "/console?sso_error=no_role"
        async with platform.sessions() as session:
            made = await session.execute(select(UserRow).where(UserRow.name == outsider.username))
        assert made.first() is None  # refused: nothing created


_PLATFORM_PROVIDER: dict[str, str] = {}


async def _platform_provider(platform: Platform, idp: OpenIdProvider) -> None:
    if platform.url in _PLATFORM_PROVIDER:
        return
    _PLATFORM_PROVIDER[platform.url] = await add_provider(platform, idp, None, name="operators")
    async with platform.client(await platform.operator_key()) as client:
        mapped = await client.put(
            "/api/operators/group-mappings",
            json={"lines": [{"group": "platform-ops", "role": "operator"}]},
        )
    assert mapped.status_code == 200, mapped.text


class TestProviderRemoved:
    async def test_removing_a_provider_ends_the_sessions_opened_through_it(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        person = sso_org.person(["eng"])
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        await walk.csrf()
        async with sso_org.platform.client(await sso_org.platform.operator_key()) as client:
            gone = await client.delete(f"/api/identity-providers/{sso_org.provider_id}")
        assert gone.status_code == 204, gone.text
        assert (await walk.client.get("/api/me")).status_code == 401
        async with httpx.AsyncClient(base_url=sso_org.platform.url) as client:
            again = await client.get("/console/sso/start", params={"org": sso_org.name})
        assert again.status_code == 404
