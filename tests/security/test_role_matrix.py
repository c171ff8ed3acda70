"""Who may do what: every role against the /api and /v1 routes, one cell per test.

The roles are the platform operator and, inside one organisation, its owner, admin,
member, viewer and auditor. Each cell names the exact status each role gets: a success
(200/201/204), 403 when the key lacks the scope, or 404 where the object is not visible to
the role at all. Never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from souverain.core.roles import Role
from souverain.testing.factories import unique
from tests.conftest import Platform
from tests.security.helpers import assert_openai_error, chat_body, console_session, serve

ROLES = ("operator", "owner", "admin", "member", "viewer", "auditor")
ORG_ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN, "member": Role.MEMBER}
ORG_ROLES |= {"viewer": Role.VIEWER, "auditor": Role.AUDITOR}
ERROR_CODES = {403: "permission_denied", 404: "not_found"}


@dataclass
class World:
    """One organisation with a key per role, an operator key, a served platform model and a
    stopped platform deployment."""

    platform: Platform
    org: str
    org_id: str
    keys: dict[str, str]
    model: str
    platform_deployment: str

    def fields(self) -> dict[str, str]:
        return {
            "org": self.org,
            "model": self.model,
            "platform_deployment": self.platform_deployment,
        }


@pytest.fixture(scope="module")
async def world(platform: Platform) -> World:
    tenant = await platform.factory.tenant(roles=dict(ORG_ROLES))
    keys = {"operator": (await platform.factory.operator()).key}
    for role_name, role in ORG_ROLES.items():
        keys[role_name] = (await platform.factory.member_key(tenant, role_name, role)).key
    served = await serve(platform)
    async with platform.client(keys["operator"]) as client:
        deployment = await client.post(
            "/api/deployments", json={"name": unique("dep"), "model": served.name, "replicas": 0}
        )
        assert deployment.status_code == 201, deployment.text
    return World(
        platform=platform,
        org=tenant.org_name,
        org_id=tenant.org_id,
        keys=keys,
        model=served.name,
        platform_deployment=deployment.json()["name"],
    )


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def only(status: int, *roles: str, others: int = 403) -> dict[str, int]:
    assert set(roles) <= set(ROLES)
    return {role: status if role in roles else others for role in ROLES}


MANAGERS = ("operator", "owner", "admin")
INFERENCE = ("operator", "owner", "admin", "member")


async def _a_viewer(world: World) -> dict[str, str]:
    """A fresh viewer of the organisation, added by the operator, with one key."""
    name = unique("victim")
    async with world.platform.client(world.keys["operator"]) as client:
        added = await client.post(
            f"/api/orgs/{world.org}/members", json={"user": name, "role": "viewer"}
        )
    assert added.status_code == 201, added.text
    key = await world.platform.factory.key(
        user_id=added.json()["user_id"], org_id=world.org_id, role=Role.VIEWER
    )
    return {"victim": name, "victim_key_id": key.id}


def _datacenter(_: World) -> dict[str, Any]:
    return {
        "id": unique("dc"),
        "name": "Matrix DC",
        "country": "FR",
        "operator_name": "matrix",
        "operator_country": "FR",
        "carbon_intensity": 10,
    }


@dataclass(frozen=True)
class Cell:
    id: str
    method: str
    path: str  # formatted with World.fields() and what `setup` returns
    expect: dict[str, int]
    body: Callable[[World], dict[str, Any]] | None = None
    setup: Callable[[World], Awaitable[dict[str, str]]] | None = field(default=None)


CELLS = [
    # identity and organisations
    Cell("me", "GET", "/api/me", everyone(200)),
    Cell("list-orgs", "GET", "/api/orgs", everyone(200)),
    Cell("get-org", "GET", "/api/orgs/{org}", everyone(200)),
    Cell(
        "create-org", "POST", "/api/orgs", only(201, "operator"), lambda w: {"name": unique("org")}
    ),
    # fleet
    Cell("list-datacenters", "GET", "/api/datacenters", everyone(200)),
    Cell("add-datacenter", "POST", "/api/datacenters", only(201, "operator"), _datacenter),
    Cell("list-nodes", "GET", "/api/nodes", only(200, "operator")),
    # projects
    Cell("list-projects", "GET", "/api/orgs/{org}/projects", everyone(200)),
    Cell(
        "create-project",
        "POST",
        "/api/orgs/{org}/projects",
        only(201, *MANAGERS),
        lambda w: {"name": unique("prj")},
    ),
    # members
    Cell("list-members", "GET", "/api/orgs/{org}/members", everyone(200)),
    Cell(
        "add-member",
        "POST",
        "/api/orgs/{org}/members",
        only(201, *MANAGERS),
        lambda w: {"user": unique("new"), "role": "member"},
    ),
    Cell(
        "add-owner",
        "POST",
        "/api/orgs/{org}/members",
        only(201, "operator", "owner"),
        lambda w: {"user": unique("new"), "role": "owner"},
    ),
    Cell(
        "remove-member",
        "DELETE",
        "/api/orgs/{org}/members/{victim}",
        only(204, *MANAGERS),
        setup=_a_viewer,
    ),
    # keys
    Cell("list-keys", "GET", "/api/keys", everyone(200)),
    Cell(
        "create-viewer-key",
        "POST",
        "/api/keys",
        # the operator is no member of the organisation: it holds no role there to hand out
        only(201, "owner", "admin", "member", "viewer", "auditor"),
        lambda w: {"org": w.org, "role": "viewer"},
    ),
    Cell(
        "create-member-key",
        "POST",
        "/api/keys",
        only(201, "owner", "admin", "member"),
        lambda w: {"org": w.org, "role": "member"},
    ),
    Cell(
        "create-admin-key",
        "POST",
        "/api/keys",
        only(201, "owner", "admin"),
        lambda w: {"org": w.org, "role": "admin"},
    ),
    Cell(
        "create-owner-key",
        "POST",
        "/api/keys",
        only(201, "owner"),
        lambda w: {"org": w.org, "role": "owner"},
    ),
    Cell(
        "create-operator-key",
        "POST",
        "/api/keys",
        only(201, "operator"),
        lambda w: {"role": "operator"},
    ),
    # someone else's key: managers revoke it; for the others it is not visible at all
    Cell(
        "revoke-others-key",
        "DELETE",
        "/api/keys/{victim_key_id}",
        only(200, *MANAGERS, others=404),
        setup=_a_viewer,
    ),
    # models
    Cell("list-models", "GET", "/api/models", everyone(200)),
    Cell("get-model", "GET", "/api/models/{model}", everyone(200)),
    Cell(
        "register-platform-model",
        "POST",
        "/api/models",
        only(201, "operator"),
        lambda w: {"name": unique("mdl"), "uri": "hf://acme/models/x.gguf"},
    ),
    Cell(
        "register-org-model",
        "POST",
        "/api/models",
        only(201, *MANAGERS),
        lambda w: {"name": unique("mdl"), "uri": "hf://acme/models/x.gguf", "org": w.org},
    ),
    # deployments
    Cell("list-deployments", "GET", "/api/deployments", everyone(200)),
    Cell("get-platform-deployment", "GET", "/api/deployments/{platform_deployment}", everyone(200)),
    Cell(
        "platform-deployment-usage",  # each role sees the records its usage reports show it
        "GET",
        "/api/deployments/{platform_deployment}/usage",
        everyone(200),
    ),
    Cell(
        "create-org-deployment",
        "POST",
        "/api/deployments",
        only(201, *MANAGERS),
        lambda w: {"name": unique("dep"), "model": w.model, "replicas": 0, "org": w.org},
    ),
    Cell(
        "create-platform-deployment",
        "POST",
        "/api/deployments",
        only(201, "operator"),
        lambda w: {"name": unique("dep"), "model": w.model, "replicas": 0},
    ),
    Cell(
        "scale-platform-deployment",
        "PATCH",
        "/api/deployments/{platform_deployment}",
        only(200, "operator"),
        lambda w: {"replicas": 0},
    ),
    # identity: providers (operators), group mappings and SCIM tokens (owners), service accounts
    Cell("list-identity-providers", "GET", "/api/identity-providers", only(200, "operator")),
    Cell(
        "add-identity-provider",
        "POST",
        "/api/identity-providers",
        only(201, "operator"),
        lambda w: {
            "org": w.org,
            "name": unique("idp"),
            "issuer": "https://idp.matrix.example",
            "client_id": "souverain",
            "client_secret": "matrix-secret",
        },
    ),
    Cell("list-org-providers", "GET", "/api/orgs/{org}/identity-providers", only(200, *MANAGERS)),
    Cell("read-group-mappings", "GET", "/api/orgs/{org}/group-mappings", only(200, *MANAGERS)),
    Cell(
        "replace-group-mappings",
        "PUT",
        "/api/orgs/{org}/group-mappings",
        only(200, "operator", "owner"),
        lambda w: {"lines": [{"group": "matrix-readers", "role": "viewer"}]},
    ),
    Cell("read-platform-mappings", "GET", "/api/operators/group-mappings", only(200, "operator")),
    Cell(
        "create-scim-token",
        "POST",
        "/api/orgs/{org}/scim-tokens",
        only(201, "operator", "owner"),
        lambda w: {"name": "matrix"},
    ),
    Cell("list-scim-tokens", "GET", "/api/orgs/{org}/scim-tokens", only(200, "operator", "owner")),
    Cell("list-service-accounts", "GET", "/api/orgs/{org}/service-accounts", everyone(200)),
    Cell(
        "create-service-account",
        "POST",
        "/api/orgs/{org}/service-accounts",
        only(201, *MANAGERS),
        lambda w: {"name": unique("sa"), "role": "viewer"},
    ),
    # the console and the audit chain
    Cell("console-sign-in", "POST", "/console/session", everyone(201)),
    Cell("verify-audit-chain", "GET", "/api/audit/verify", only(200, "operator")),
    # usage
    Cell("read-usage", "GET", "/api/usage", everyone(200)),
    Cell("read-org-usage", "GET", "/api/usage?org={org}", everyone(200)),
    # inference
    Cell("v1-list-models", "GET", "/v1/models", only(200, *INFERENCE)),
    Cell("v1-get-model", "GET", "/v1/models/{model}", only(200, *INFERENCE)),
    Cell(
        "v1-chat",
        "POST",
        "/v1/chat/completions",
        only(200, *INFERENCE),
        lambda w: chat_body(w.model, max_tokens=2),
    ),
    Cell(
        "v1-completions",
        "POST",
        "/v1/completions",
        only(200, *INFERENCE),
        lambda w: {"model": w.model, "prompt": "Once", "max_tokens": 2},
    ),
]


# A session signs in with a key, never with itself (tests/console/test_sessions.py).
SESSION_CELLS = [cell for cell in CELLS if cell.id != "console-sign-in"]


class TestRoleMatrix:
    @pytest.mark.parametrize("role", ROLES)
    @pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
    async def test_each_role_gets_exactly_the_expected_status(
        self, world: World, cell: Cell, role: str
    ) -> None:
        extra = await cell.setup(world) if cell.setup else {}
        path = cell.path.format(**world.fields(), **extra)
        kwargs = {"json": cell.body(world)} if cell.body else {}
        async with world.platform.client(world.keys[role]) as client:
            response = await client.request(cell.method, path, **kwargs)
        expected = cell.expect[role]
        assert response.status_code == expected, (role, cell.id, response.text[:300])
        if expected >= 400:
            assert_openai_error(response, expected, ERROR_CODES[expected])

    @pytest.mark.parametrize("role", ROLES)
    @pytest.mark.parametrize("cell", SESSION_CELLS, ids=[cell.id for cell in SESSION_CELLS])
    async def test_a_console_session_gets_exactly_what_its_key_gets(
        self, world: World, cell: Cell, role: str
    ) -> None:
        """The same cell through a console session opened with that role's key: the cookie
        grants what the key grants, not one route more."""
        extra = await cell.setup(world) if cell.setup else {}
        path = cell.path.format(**world.fields(), **extra)
        kwargs = {"json": cell.body(world)} if cell.body else {}
        async with console_session(world.platform.url, world.keys[role]) as browser:
            response = await browser.request(cell.method, path, **kwargs)
        expected = cell.expect[role]
        assert response.status_code == expected, (role, cell.id, response.text[:300])
        if expected >= 400:
            assert_openai_error(response, expected, ERROR_CODES[expected])

    def test_the_matrix_covers_every_role_in_every_cell(self) -> None:
        for cell in CELLS:
            assert set(cell.expect) == set(ROLES), cell.id
            assert all(status in (200, 201, 204, 403, 404) for status in cell.expect.values())
        assert len({cell.id for cell in CELLS}) == len(CELLS)


SCOPES = {
    "operator": ["audit", "inference", "manage", "own", "platform", "read"],
    "owner": ["audit", "inference", "manage", "own", "read"],
    "admin": ["audit", "inference", "manage", "read"],
    "member": ["inference", "read"],
    "viewer": ["read"],
    "auditor": ["audit", "read"],
}


class TestEffectiveRole:
    @pytest.mark.parametrize("role", ROLES)
    async def test_me_reports_the_role_and_exactly_its_scopes(
        self, world: World, role: str
    ) -> None:
        async with world.platform.client(world.keys[role]) as client:
            me = (await client.get("/api/me")).json()
        assert me["role"] == role
        assert me["scopes"] == SCOPES[role]
        assert me["org"] == (None if role == "operator" else world.org)
