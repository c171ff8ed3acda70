"""Object-level authorisation: organisation A's owner pointed at organisation B's objects.

Every resource reachable by id or name answers 404 in OpenAI's error shape, and the answer
is the very one a name that exists nowhere gets: A cannot tell B's objects from absent
ones, and no body carries B's names or ids beyond what A itself typed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.testing.factories import Tenant, unique
from tests.conftest import Platform
from tests.security.helpers import assert_openai_error, chat_body, serve


@dataclass
class Side:
    """One organisation's objects, by the names used in the request templates."""

    tenant: Tenant
    key: str
    key_id: str
    values: dict[str, str]


@dataclass
class Tenants:
    platform: Platform
    a: Side
    b: Side

    def secrets_of_b(self) -> set[str]:
        return {value for value in self.b.values.values() if value}


async def _side(platform: Platform, *, with_objects: bool) -> Side:
    tenant = await platform.factory.tenant(roles={"boss": Role.OWNER, "staff": Role.MEMBER})
    owner = await platform.factory.member_key(tenant, "boss", Role.OWNER)
    staff = await platform.factory.member_key(tenant, "staff", Role.MEMBER)
    values = {
        "org": tenant.org_name,
        "org_id": tenant.org_id,
        "project_id": tenant.project_id,
        "user": f"staff-{tenant.org_name}",
        "user_id": tenant.users["staff"],
        "key_id": staff.id,
    }
    if with_objects:
        served = await serve(platform, owner_org_id=tenant.org_id)
        async with platform.client(owner.key) as client:
            project = await client.post(
                f"/api/orgs/{tenant.org_name}/projects", json={"name": unique("hidden")}
            )
            assert project.status_code == 201, project.text
            deployment = await client.post(
                "/api/deployments",
                json={
                    "name": unique("bdep"),
                    "model": served.name,
                    "org": tenant.org_name,
                    "replicas": 0,
                },
            )
            assert deployment.status_code == 201, deployment.text
            model = await client.get(f"/api/models/{served.name}")
            assert model.status_code == 200, model.text
            used = await client.post("/v1/chat/completions", json=chat_body(served.name))
            assert used.status_code == 200, used.text
        values |= {
            "project": project.json()["name"],
            "project2_id": project.json()["id"],
            "model": served.name,
            "model_id": model.json()["id"],
            "deployment": deployment.json()["name"],
            "deployment_id": deployment.json()["id"],
        }
    return Side(tenant, owner.key, owner.id, values)


@pytest.fixture(scope="module")
async def tenants(platform: Platform) -> Tenants:
    return Tenants(
        platform,
        await _side(platform, with_objects=False),
        await _side(platform, with_objects=True),
    )


def ghost_values() -> dict[str, str]:
    """Well-formed names and ids that exist nowhere."""
    return {
        "org": unique("org"),
        "org_id": new_id("org"),
        "project_id": new_id("prj"),
        "project": unique("hidden"),
        "project2_id": new_id("prj"),
        "user": unique("staff"),
        "user_id": new_id("usr"),
        "key_id": secrets.token_hex(8),
        "model": unique("model"),
        "model_id": new_id("mdl"),
        "deployment": unique("bdep"),
        "deployment_id": new_id("dep"),
    }


@dataclass(frozen=True)
class Probe:
    id: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    code: str = "not_found"


PROBES = [
    # organisations
    Probe("get-org-by-name", "GET", "/api/orgs/{org}"),
    Probe("get-org-by-id", "GET", "/api/orgs/{org_id}"),
    # projects
    Probe("list-projects", "GET", "/api/orgs/{org}/projects"),
    Probe("list-projects-by-org-id", "GET", "/api/orgs/{org_id}/projects"),
    Probe("create-project", "POST", "/api/orgs/{org}/projects", {"name": "intruder"}),
    # members
    Probe("list-members", "GET", "/api/orgs/{org}/members"),
    Probe("add-member", "POST", "/api/orgs/{org}/members", {"user": "intruder", "role": "owner"}),
    Probe("remove-member", "DELETE", "/api/orgs/{org}/members/{user}"),
    # keys
    Probe("list-keys-of-org", "GET", "/api/keys?org={org}"),
    Probe("list-keys-of-org-id", "GET", "/api/keys?org={org_id}"),
    Probe("revoke-key", "DELETE", "/api/keys/{key_id}"),
    Probe("mint-key-in-org", "POST", "/api/keys", {"org": "{org}", "role": "viewer"}),
    Probe(
        "mint-key-for-their-user",
        "POST",
        "/api/keys",
        {"org": "{org}", "user": "{user}", "role": "member"},
    ),
    Probe("mint-key-for-their-project-id", "POST", "/api/keys", {"project": "{project2_id}"}),
    Probe("mint-key-for-their-project-name", "POST", "/api/keys", {"project": "{project}"}),
    # deployments
    Probe("get-deployment-by-name", "GET", "/api/deployments/{deployment}"),
    Probe("get-deployment-by-id", "GET", "/api/deployments/{deployment_id}"),
    Probe("scale-deployment", "PATCH", "/api/deployments/{deployment}", {"replicas": 3}),
    Probe("scale-deployment-by-id", "PATCH", "/api/deployments/{deployment_id}", {"replicas": 3}),
    Probe("delete-deployment", "DELETE", "/api/deployments/{deployment}"),
    Probe(
        "deploy-into-their-org",
        "POST",
        "/api/deployments",
        {"name": "intruder", "model": "{model}", "org": "{org}", "replicas": 0},
    ),
    Probe(
        "deploy-their-private-model",
        "POST",
        "/api/deployments",
        {"name": "intruder", "model": "{model}", "org": "{own_org}", "replicas": 0},
    ),
    # models private to B
    Probe("get-model-by-name", "GET", "/api/models/{model}"),
    Probe("get-model-by-id", "GET", "/api/models/{model_id}"),
    Probe(
        "register-model-in-their-org",
        "POST",
        "/api/models",
        {"name": "intruder-model", "uri": "hf://acme/models/x.gguf", "org": "{org}"},
    ),
    Probe("v1-get-model", "GET", "/v1/models/{model}", code="model_not_found"),
    Probe(
        "v1-chat-with-their-model",
        "POST",
        "/v1/chat/completions",
        {"model": "{model}", "messages": [{"role": "user", "content": "hi"}]},
        code="model_not_found",
    ),
    Probe(
        "v1-completions-with-their-model",
        "POST",
        "/v1/completions",
        {"model": "{model}", "prompt": "hi"},
        code="model_not_found",
    ),
    # usage
    Probe("usage-of-org", "GET", "/api/usage?org={org}"),
    Probe("usage-of-org-id", "GET", "/api/usage?org={org_id}"),
]

# Sovereignty policies are reachable by organisation and project name; probed when the
# running app has these routes.
POLICY_PROBES = [
    Probe("get-ceiling", "GET", "/api/orgs/{org}/policy"),
    Probe("get-project-policy", "GET", "/api/orgs/{org}/projects/default/policy"),
    Probe(
        "set-project-policy",
        "PUT",
        "/api/orgs/{org}/projects/default/policy",
        {"jurisdictions": []},
    ),
]


def _fill(template: Any, values: dict[str, str]) -> Any:
    if isinstance(template, str):
        return template.format(**values)
    if isinstance(template, dict):
        return {key: _fill(value, values) for key, value in template.items()}
    return template


def _used(probe: Probe, values: dict[str, str]) -> list[str]:
    """The values the request itself carries (A typed them, so an echo reveals nothing)."""
    text = probe.path + repr(probe.body)
    return [value for name, value in values.items() if "{" + name + "}" in text]


async def _send(client: httpx.AsyncClient, probe: Probe, values: dict[str, str]) -> httpx.Response:
    kwargs = {"json": _fill(probe.body, values)} if probe.body is not None else {}
    return await client.request(probe.method, _fill(probe.path, values), **kwargs)


def _masked(text: str, values: list[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "<value>")
    return text


async def _has_route(platform: Platform, path: str) -> bool:
    async with httpx.AsyncClient(base_url=platform.url) as client:
        return path in (await client.get("/openapi.json")).json()["paths"]


class TestForeignObjectsAreNotFound:
    @pytest.mark.parametrize("probe", PROBES + POLICY_PROBES, ids=lambda p: p.id)
    async def test_foreign_object_is_404_and_indistinguishable_from_absent(
        self, tenants: Tenants, probe: Probe
    ) -> None:
        platform = tenants.platform
        route = probe.path.split("?")[0].replace("/default/", "/{project}/")
        if probe in POLICY_PROBES and not await _has_route(platform, route):
            pytest.skip("this build has no sovereignty policy routes")
        own = {"own_org": tenants.a.tenant.org_name}
        real = tenants.b.values | own
        ghost = ghost_values() | own
        async with platform.client(tenants.a.key) as client:
            response = await _send(client, probe, real)
            absent = await _send(client, probe, ghost)
        assert_openai_error(response, 404, probe.code)
        assert_openai_error(absent, 404, probe.code)
        used_real, used_ghost = _used(probe, real), _used(probe, ghost)
        assert _masked(response.text, used_real) == _masked(absent.text, used_ghost)
        leaked = {s for s in tenants.secrets_of_b() - set(used_real) if s in response.text}
        assert not leaked, leaked

    async def test_failed_attempts_changed_nothing_of_b(self, tenants: Tenants) -> None:
        platform, b = tenants.platform, tenants.b
        async with platform.client(tenants.a.key) as client:
            for probe in PROBES:
                if probe.method != "GET":
                    await _send(client, probe, b.values | {"own_org": tenants.a.tenant.org_name})
        async with platform.client(b.key) as client:
            deployment = await client.get(f"/api/deployments/{b.values['deployment']}")
            assert deployment.status_code == 200
            assert deployment.json()["replicas"] == 0
            assert deployment.json()["status"] != "deleting"
            members = {
                m["user"] for m in (await client.get(f"/api/orgs/{b.values['org']}/members")).json()
            }
            assert b.values["user"] in members and "intruder" not in members
            projects = {
                p["name"]
                for p in (await client.get(f"/api/orgs/{b.values['org']}/projects")).json()
            }
            assert "intruder" not in projects
            keys = {k["id"]: k for k in (await client.get("/api/keys")).json()}
            assert keys[b.values["key_id"]]["revoked_at"] is None


class TestListsShowOnlyOwnObjects:
    @pytest.mark.parametrize(
        "path",
        [
            "/api/orgs",
            "/api/keys",
            "/api/deployments",
            "/api/models",
            "/api/usage",
            "/api/usage?group_by=project",
            "/api/usage?group_by=key",
            "/v1/models",
            "/api/orgs/{own_org}/members",
            "/api/orgs/{own_org}/projects",
        ],
    )
    async def test_lists_never_carry_b(self, tenants: Tenants, path: str) -> None:
        async with tenants.platform.client(tenants.a.key) as client:
            response = await client.get(path.format(own_org=tenants.a.tenant.org_name))
        assert response.status_code == 200, response.text
        leaked = {s for s in tenants.secrets_of_b() if s in response.text}
        assert not leaked, leaked

    async def test_b_sees_its_own_objects_so_the_lists_above_can_fail(
        self, tenants: Tenants
    ) -> None:
        async with tenants.platform.client(tenants.b.key) as client:
            deployments = (await client.get("/api/deployments")).text
            models = (await client.get("/api/models")).text
            usage = (await client.get("/api/usage")).text
        assert tenants.b.values["deployment"] in deployments
        assert tenants.b.values["model"] in models
        assert tenants.b.values["model"] in usage


class TestNamesDoNotRevealForeignObjects:
    """Names are global today, so taking a name another tenant uses answers 409 with
    'already exists': an oracle for B's private model and deployment names."""

    async def test_registering_bs_private_model_name_answers_like_a_fresh_name(
        self, tenants: Tenants
    ) -> None:
        body = {"uri": "hf://acme/models/x.gguf", "org": tenants.a.tenant.org_name}
        async with tenants.platform.client(tenants.a.key) as client:
            fresh = await client.post("/api/models", json=body | {"name": unique("model")})
            taken = await client.post(
                "/api/models", json=body | {"name": tenants.b.values["model"]}
            )
        assert fresh.status_code == 201
        assert taken.status_code == fresh.status_code, taken.text

    async def test_using_bs_deployment_name_answers_like_a_fresh_name(
        self, tenants: Tenants
    ) -> None:
        org = tenants.a.tenant.org_name
        async with tenants.platform.client(tenants.a.key) as client:
            model = await client.post(
                "/api/models",
                json={"name": unique("model"), "uri": "hf://acme/models/x.gguf", "org": org},
            )
            assert model.status_code == 201, model.text
            body = {"model": model.json()["name"], "org": org, "replicas": 0}
            fresh = await client.post("/api/deployments", json=body | {"name": unique("dep")})
            taken = await client.post(
                "/api/deployments", json=body | {"name": tenants.b.values["deployment"]}
            )
        assert fresh.status_code == 201, fresh.text
        assert taken.status_code == fresh.status_code, taken.text
