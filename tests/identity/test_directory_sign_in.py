"""The directory and single sign-on together: someone the directory provisioned by SCIM signs
in as that same user, with the role the SCIM groups give (group source `scim`), and a
deactivation by the directory ends their single-sign-on session and refuses the next one."""

from __future__ import annotations

import time

from sqlalchemy import select

from souverain.db.identity import DirectoryUserRow, UserIdentityRow
from tests.conftest import wait_until
from tests.identity.conftest import SsoOrg, Walk, sign_in
from tests.identity.scim_helpers import SCIM_JSON

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


async def scim_token(org: SsoOrg) -> str:
    async with org.platform.client(org.owner_key) as client:
        made = await client.post(f"/api/orgs/{org.name}/scim-tokens", json={"name": "dir"})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


class TestDirectoryAndSignIn:
    async def test_a_provisioned_person_signs_in_as_themselves_with_their_scim_groups_role(
        self, sso_org: SsoOrg, walks: list[Walk]
    ) -> None:
        await sso_org.map_groups(
            [{"group": "Staff", "role": "member"}, {"group": "leads", "role": "admin"}], "scim"
        )
        person = sso_org.person(["leads"])  # the token's claim: ignored with group source scim
        headers = {
            "Authorization": f"Bearer {await scim_token(sso_org)}",
            "Content-Type": SCIM_JSON,
        }
        base = f"{sso_org.platform.url}/scim/v2"
        async with sso_org.platform.client() as client:
            made = await client.post(
                f"{base}/Users",
                headers=headers,
                json={"schemas": [USER], "userName": person.username, "active": True},
            )
            assert made.status_code == 201, made.text
            grouped = await client.post(
                f"{base}/Groups",
                headers=headers,
                json={
                    "schemas": [GROUP],
                    "displayName": "Staff",
                    "members": [{"value": made.json()["id"]}],
                },
            )
            assert grouped.status_code == 201, grouped.text
        walks.append(walk := await sign_in(sso_org.platform, person, org=sso_org.name))
        assert walk.landed == "/console", walk.landed
        me = (await walk.client.get("/api/me")).json()
        assert me["role"] == "member"
        async with sso_org.platform.sessions() as session:
            entry = await session.get(DirectoryUserRow, made.json()["id"])
            identity = (
                await session.execute(
                    select(UserIdentityRow).where(UserIdentityRow.subject == person.sub)
                )
            ).scalar_one()
        assert entry is not None and identity.user_id == entry.user_id == me["user_id"]

        async with sso_org.platform.client() as client:
            off = await client.patch(
                f"{base}/Users/{made.json()['id']}",
                headers=headers,
                json={
                    "schemas": [PATCH],
                    "Operations": [{"op": "replace", "path": "active", "value": False}],
                },
            )
        assert off.status_code == 200, off.text
        deactivated = time.monotonic()

        async def signed_out() -> bool:
            return (await walk.client.get("/api/me")).status_code == 401

        await wait_until(signed_out, timeout_s=10, interval_s=0.05)
        print(
            f"\nSCIM deactivation → single-sign-on session refused: {time.monotonic() - deactivated:.2f} s"
        )
        walks.append(again := await sign_in(sso_org.platform, person, org=sso_org.name))
        assert again.landed == "/console?sso_error=deactivated"
