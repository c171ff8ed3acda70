"""Every route, read from the app's own route table, needs a credential except health and docs.

New routes are covered automatically: the walk fails if a route answers anything but 401
without a key, and the allowlist is explicit.
"""

from __future__ import annotations

import re

from souverain.server.app import create_app
from souverain.settings import Settings
from tests.conftest import Platform

PUBLIC = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
# The console's shell and its static files hold no data, like the docs; what its pages show
# comes from /api and /v1 on a session, which the walk covers like any other route.
PUBLIC |= {"/console", "/console/", "/console/assets/{name}"}
PROBES = {"/console/assets/{name}": "/console/assets/app.js"}
# The two steps of single sign-on are the sign-in itself (like POST /console/session, whose
# credential is the key): without a flow they answer an error, never data or a session.
SIGN_IN = {"/console/sso/start", "/console/sso/callback"}


def all_routes() -> list[tuple[str, str]]:
    app = create_app(Settings())
    routes = []
    for route in flat_routes(app):
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or methods is None:  # mounts and websockets have no methods
            continue
        for method in sorted(set(methods) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


def flat_routes(app: object) -> list[object]:
    """FastAPI ≥ 0.16x keeps included routers lazily; flatten them into effective routes."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        return list(app.routes)  # type: ignore[attr-defined]
    return list(iter_route_contexts(app.routes))  # type: ignore[attr-defined]


def concrete(path: str) -> str:
    if path in PROBES:
        return PROBES[path]
    return re.sub(r"\{[^}]+\}", "probe", path)


class TestRouteWalk:
    def test_the_walk_sees_the_api(self) -> None:
        paths = {path for _, path in all_routes()}
        assert {"/v1/chat/completions", "/api/keys", "/api/deployments", "/healthz"} <= paths
        assert {"/console/session", "/api/audit/verify"} <= paths
        assert {"/scim/v2/Users", "/scim/v2/Groups/{entry_id}", "/api/identity-providers"} <= paths
        assert {"/api/orgs/{org}/service-accounts/{name}/keys/rotate"} <= paths
        assert len(paths) > 20

    async def test_every_route_but_health_and_docs_needs_a_credential(
        self, platform: Platform
    ) -> None:
        checked = 0
        async with platform.client() as client:
            for method, path in all_routes():
                response = await client.request(method, concrete(path), json={})
                if path in PUBLIC:
                    assert response.status_code in (200, 308, 503), (method, path)
                    continue
                if path in SIGN_IN:
                    assert response.status_code in (303, 404), (method, path)
                    # to an error, or (for operators, when the platform has a provider) to it
                    assert "souverain_session=" not in response.headers.get("set-cookie", "")
                    continue
                assert response.status_code == 401, (method, path, response.status_code)
                if path.startswith("/scim/"):  # SCIM's own error shape
                    assert response.json()["status"] == "401", (method, path)
                    assert response.headers["content-type"] == "application/scim+json"
                else:
                    assert response.json()["error"]["code"] == "invalid_api_key"
                checked += 1
        assert checked >= 20

    def test_the_allowlist_names_only_routes_that_exist(self) -> None:
        declared = {getattr(r, "path", None) for r in flat_routes(create_app(Settings()))}
        assert declared >= PUBLIC | SIGN_IN
