"""The README's single sign-on, SCIM and service accounts commands, run as written (bash,
curl, jq) against a live server and the real OpenID provider; then what they set up is
used: a person signs in with the mapped role, the SCIM token provisions, the service
account's keys work."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import httpx

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.tables import MembershipRow, OrganisationRow, ProjectRow, UserRow
from tests.conftest import Platform
from tests.identity.conftest import sign_in
from tests.identity.oidc_provider import OpenIdProvider

README = Path(__file__).parents[2] / "README.md"
HEADING = "## Single sign-on, SCIM and service accounts"


def readme_block() -> str:
    text = README.read_text()
    section = text[text.index(HEADING) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the section has a bash block"
    return match.group(1)


async def acme(platform: Platform) -> str:
    """The organisation the README speaks of, with an owner and a `research` project."""
    async with platform.sessions.begin() as session:
        org = OrganisationRow(id=new_id("org"), name="acme", display_name="Acme")
        session.add(org)
        await session.flush()
        session.add(ProjectRow(id=new_id("prj"), org_id=org.id, name="default"))
        session.add(ProjectRow(id=new_id("prj"), org_id=org.id, name="research"))
        owner = UserRow(id=new_id("usr"), name="alice-acme-readme", is_operator=False)
        session.add(owner)
        await session.flush()
        session.add(
            MembershipRow(id=new_id("mem"), org_id=org.id, user_id=owner.id, role=Role.OWNER)
        )
    return (await platform.factory.key(user_id=owner.id, org_id=org.id, role=Role.OWNER)).key


async def test_the_readme_commands_configure_sign_in_scim_and_service_accounts(
    platform: Platform, idp: OpenIdProvider
) -> None:
    owner_key = await acme(platform)
    client = idp.clients[0]
    env = {
        "PATH": os.environ["PATH"],
        "SOUVERAIN_URL": platform.url,
        "OPERATOR_KEY": await platform.operator_key(),
        "OWNER_KEY": owner_key,
        "ISSUER": idp.issuer,
        "CLIENT_ID": client.client_id,
        "CLIENT_SECRET": client.client_secret,
    }
    ran = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", readme_block()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    scim = re.search(r"(https?://[^\s\"{}]+/scim/v2)\n(scim-souv-[\w-]+)", ran.stdout)
    assert scim, ran.stdout
    scim_base, scim_token = scim.groups()
    service_keys = re.findall(r"sk-souv-[0-9a-f]{16}_[\w-]{43}", ran.stdout)
    assert scim_base == f"{platform.url}/scim/v2" and len(service_keys) == 2

    person = idp.add_person("readme-lead", groups=["research-leads"])
    walk = await sign_in(platform, person, org="acme")
    try:
        me = (await walk.client.get("/api/me")).json()
    finally:
        await walk.client.aclose()
    assert me["role"] == "admin" and me["project_id"] is not None

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {scim_token}"}) as directory:
        assert (await directory.get(f"{scim_base}/Users")).status_code == 200
    for key in service_keys:  # the rotated key and its successor, both valid in the overlap
        async with platform.client(key) as api:
            assert (await api.get("/api/me")).json()["role"] == "member"
