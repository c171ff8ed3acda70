"""Minted keys, attacked: revocation reaches every key below the revoked one; a revoked or
expired key mints nothing, even while a server still has it cached; rate limits cannot be
escaped by minting a fresh key; minting itself is rate limited; a member who is removed
and added again does not get their old keys back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.tables import ApiKeyRow, utcnow
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory, Tenant
from souverain.testing.live import LiveServer, free_port
from souverain.testing.stand_in import StandInEngine
from souverain.testing.tls import every_replica_files
from tests.conftest import DATABASES, MASTER_KEY, fresh_database_url, wait_until
from tests.security.helpers import assert_openai_error, chat_body

CACHE_TTL_S = 3.0
MINT_PER_MINUTE = 6


@dataclass
class Keys:
    url: str
    factory: Factory
    operator: str
    model: str

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    async def mint(self, key: str, **body: object) -> httpx.Response:
        async with self.client(key) as client:
            return await client.post("/api/keys", json={"name": "minted", **body})

    async def works(self, key: str) -> bool:
        async with self.client(key) as client:
            return (await client.get("/api/me")).status_code == 200


@pytest.fixture(scope="module", params=DATABASES)
async def keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Keys]:
    directory: Path = tmp_path_factory.mktemp("keys")
    settings = Settings(
        data_dir=directory,
        database_url=await fresh_database_url(request.param, directory, database="keys"),
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        key_cache_ttl_s=CACHE_TTL_S,
        key_mint_per_minute=MINT_PER_MINUTE,
        port=free_port(),
    )
    stand_in = StandInEngine(secret_for=lambda r: replica_secret(MASTER_KEY.encode(), r))
    with LiveServer(create_app(settings), port=settings.port) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        tls = await every_replica_files(
            session_factory(engine), MASTER_KEY.encode(), directory / "tls"
        )
        engine_server = LiveServer(stand_in.app, tls=tls).start()
        factory = Factory(session_factory(engine))
        replica_id = new_id("rep")
        model, _ = await factory.served_model(
            url=f"{engine_server.url}/r/{replica_id}",
            datacenter_id=await factory.datacenter("keys-dc"),
            replica_id=replica_id,
        )
        yield Keys(server.url, factory, (await factory.operator()).key, model)
        engine_server.stop()
        await engine.dispose()


async def owner(keys: Keys, **roles: Role) -> tuple[Tenant, str]:
    tenant = await keys.factory.tenant(roles={"olga": Role.OWNER, **roles})
    return tenant, (await keys.factory.member_key(tenant, "olga", Role.OWNER)).key


class TestRevocationCascades:
    @pytest.mark.parametrize("revoked_depth", [0, 1])
    async def test_every_key_below_a_revoked_key_stops_working(
        self, keys: Keys, revoked_depth: int
    ) -> None:
        _, root = await owner(keys)
        chain = [root]
        for _ in range(3):  # root → child → grandchild → great-grandchild
            minted = await keys.mint(chain[-1])
            assert minted.status_code == 201, minted.text
            chain.append(minted.json()["key"])
        revoked_id = chain[revoked_depth].split("_")[0].removeprefix("sk-souv-")
        async with keys.client(root) as client:
            assert (await client.delete(f"/api/keys/{revoked_id}")).status_code == 200

        async def cut_below() -> bool:
            return not any([await keys.works(k) for k in chain[revoked_depth:]])

        await wait_until(cut_below, timeout_s=CACHE_TTL_S + 3)
        assert all([await keys.works(k) for k in chain[:revoked_depth]])

    async def test_revoking_a_leaf_leaves_its_parents_alone(self, keys: Keys) -> None:
        _, root = await owner(keys)
        child = (await keys.mint(root)).json()
        async with keys.client(child["key"]) as client:
            assert (await client.delete(f"/api/keys/{child['id']}")).status_code == 200
        await wait_until(lambda: _gone(keys, child["key"]), timeout_s=CACHE_TTL_S + 3)
        assert await keys.works(root)


async def _gone(keys: Keys, key: str) -> bool:
    return not await keys.works(key)


class TestNoMintingAfterTheEnd:
    async def test_a_revoked_key_mints_nothing_while_still_cached(self, keys: Keys) -> None:
        _, root = await owner(keys)
        child = (await keys.mint(root)).json()
        assert await keys.works(child["key"])  # now cached as valid for CACHE_TTL_S
        async with keys.client(root) as client:
            assert (await client.delete(f"/api/keys/{child['id']}")).status_code == 200
        refused = await keys.mint(child["key"])
        assert_openai_error(refused, 401)

    async def test_a_key_whose_parent_was_revoked_mints_nothing_while_cached(
        self, keys: Keys
    ) -> None:
        _, root = await owner(keys)
        child = (await keys.mint(root)).json()
        grandchild = (await keys.mint(child["key"])).json()
        assert await keys.works(grandchild["key"])
        async with keys.client(root) as client:
            assert (await client.delete(f"/api/keys/{child['id']}")).status_code == 200
        assert_openai_error(await keys.mint(grandchild["key"]), 401)

    async def test_an_expired_key_mints_nothing_while_cached(self, keys: Keys) -> None:
        _, root = await owner(keys)
        child = (await keys.mint(root)).json()
        assert await keys.works(child["key"])
        async with keys.factory.sessions.begin() as session:
            row = await session.get(ApiKeyRow, child["id"])
            assert row is not None
            row.expires_at = utcnow() - timedelta(seconds=1)
        assert_openai_error(await keys.mint(child["key"]), 401)


class TestRateLimitsFollowMintedKeys:
    @pytest.mark.parametrize("generations", [1, 2])
    async def test_a_minted_key_spends_from_its_parents_bucket(
        self, keys: Keys, generations: int
    ) -> None:
        tenant, root = await owner(keys, mia=Role.MEMBER)
        member = await keys.factory.member_key(tenant, "mia", Role.MEMBER)
        async with keys.client(root) as client:
            limited = await client.put(f"/api/keys/{member.id}/limits", json={"rpm": 4})
            assert limited.status_code == 200, limited.text
        await asyncio.sleep(CACHE_TTL_S + 0.5)  # the member's cached key learns its limit
        family = [member.key]
        for _ in range(generations):
            family.append((await keys.mint(family[-1])).json()["key"])
        statuses = []
        for i in range(12):
            async with keys.client(family[i % len(family)]) as client:
                answer = await client.post("/v1/chat/completions", json=chat_body(keys.model))
                statuses.append(answer.status_code)
        assert statuses.count(429) >= 12 - 4, statuses  # the family shares the 4 requests

    async def test_a_limit_set_after_minting_still_binds_the_minted_key(self, keys: Keys) -> None:
        tenant, root = await owner(keys, max=Role.MEMBER)
        member = await keys.factory.member_key(tenant, "max", Role.MEMBER)
        child = (await keys.mint(member.key)).json()["key"]
        async with keys.client(root) as client:
            assert (
                await client.put(f"/api/keys/{member.id}/limits", json={"rpm": 2})
            ).status_code == 200
        await asyncio.sleep(CACHE_TTL_S + 0.5)
        statuses = []
        for _ in range(6):
            async with keys.client(child) as client:
                answer = await client.post("/v1/chat/completions", json=chat_body(keys.model))
                statuses.append(answer.status_code)
        assert statuses.count(429) >= 4, statuses

    async def test_minting_is_rate_limited_per_user(self, keys: Keys) -> None:
        _, root = await owner(keys)
        answers = [await keys.mint(root) for _ in range(MINT_PER_MINUTE + 2)]
        assert [a.status_code for a in answers[:MINT_PER_MINUTE]] == [201] * MINT_PER_MINUTE
        error = assert_openai_error(answers[-1], 429)
        assert "key creation" in error["message"]
        assert int(answers[-1].headers["retry-after"]) >= 1
        # Minting from a minted key counts against the same user.
        assert_openai_error(await keys.mint(answers[0].json()["key"]), 429)


class TestKeysBelongToAMembership:
    async def test_a_member_removed_and_added_again_starts_with_no_keys(self, keys: Keys) -> None:
        tenant, root = await owner(keys, nils=Role.MEMBER)
        old = await keys.factory.member_key(tenant, "nils", Role.MEMBER)
        minted = (await keys.mint(old.key)).json()["key"]
        nils = f"nils-{tenant.org_name}"  # the factory's user names carry the organisation's
        async with keys.client(root) as client:
            org = tenant.org_name
            assert (await client.delete(f"/api/orgs/{org}/members/{nils}")).status_code == 204
            back = await client.post(
                f"/api/orgs/{org}/members", json={"user": nils, "role": "member"}
            )
            assert back.status_code == 201, back.text
        await asyncio.sleep(CACHE_TTL_S + 0.5)
        assert not await keys.works(old.key)
        assert not await keys.works(minted)
        async with keys.client(root) as client:
            listed = (await client.get("/api/keys", params={"org": tenant.org_name})).json()
        nils_keys = [k for k in listed if k["user"] == nils]
        assert nils_keys and all(k["revoked_at"] for k in nils_keys)
