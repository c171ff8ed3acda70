"""Dependencies shared by /v1 and /api, as `Annotated` aliases so routes read like prose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from souverain.core.ids import parse_api_key
from souverain.core.principal import Principal
from souverain.evidence import audit
from souverain.files.uploads import Owner, principal_org
from souverain.gateway.state import AppState
from souverain.identity import sso_sessions
from souverain.sovereignty import policies
from souverain.tenancy import console_sessions

SESSION_COOKIE = "souverain_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_MISSING = (
    "You didn't provide an API key. Send it in the Authorization header: "
    "'Authorization: Bearer sk-souv-…'."
)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.souverain
    return state


async def get_session(
    state: Annotated[AppState, Depends(get_state)],
) -> AsyncIterator[AsyncSession]:
    async with state.sessions() as session:
        yield session


async def storing_owner(state: AppState, principal: Principal) -> Owner:
    """Whose content is about to be stored, under the policy in force read from the
    database now: the routes' copy lags a change by up to a refresh, and a tenant who has
    just turned zero retention on must not have a file stored in that gap."""
    org_id, project_id = principal_org(principal), state.routes.project_of(principal)
    async with state.sessions() as session:
        policy = await policies.effective(session, org_id=org_id, project_id=project_id)
    return Owner(org_id, project_id, principal.key_id, policy, audit.actor_of(principal))


def bearer_token(request: Request) -> str:
    """The one bearer token of the request. Two Authorization headers are ambiguous (a
    proxy may read one and souverain the other): refused, never "the first wins"."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise InvalidRequestError(
            "Send exactly one Authorization header; this request has several."
        )
    header = headers[0] if headers else ""
    if not header:
        raise AuthenticationError(_MISSING)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Malformed Authorization header: expected 'Bearer <key>'.")
    return token.strip()


async def get_principal(
    request: Request, state: Annotated[AppState, Depends(get_state)]
) -> Principal:
    """The caller: a bearer key, or, without an Authorization header, a console session."""
    cookie = request.cookies.get(SESSION_COOKIE)
    try:
        if cookie is not None and "authorization" not in request.headers:
            principal = await _session_principal(request, state, cookie)
        else:
            principal = await state.keys.authenticate(bearer_token(request))
    except AuthenticationError as error:
        state.audit_trail.note("auth.failed", subject=_key_id_of(request), reason=error.message)
        raise
    request.state.principal = principal
    return principal


async def _session_principal(request: Request, state: AppState, cookie: str) -> Principal:
    """A console session; a change made on it must also carry the session's CSRF token,
    which a page on another site cannot read."""
    principal = await _resolve(state, cookie)
    session_id = cookie.partition(".")[0]
    async with state.sessions() as session:
        due = await sso_sessions.is_due(session, session_id=session_id)
    if due:  # single sign-on: re-read the person's groups at their provider (no transaction)
        await sso_sessions.refresh_if_due(
            state.sessions, state.oidc, sso_settings(state), session_id=session_id
        )
        principal = await _resolve(state, cookie)
    token = request.headers.get(CSRF_HEADER, "")
    if request.method not in SAFE_METHODS and not console_sessions.csrf_matches(cookie, token):
        raise PermissionDeniedError(
            f"A change made from a console session needs its {CSRF_HEADER} header."
        )
    return principal


def sso_settings(state: AppState) -> sso_sessions.SsoSettings:
    return sso_sessions.SsoSettings(
        master_key=state.master_key,
        max_age_s=state.settings.console_max_age_s,
        refresh_s=state.settings.sso_refresh_s,
    )


async def _resolve(state: AppState, cookie: str) -> Principal:
    async with state.sessions.begin() as session:
        return await console_sessions.resolve(
            session, cookie=cookie, idle_s=state.settings.console_idle_s
        )


def _key_id_of(request: Request) -> str:
    """The public id part of the key tried, never its secret."""
    if "authorization" not in request.headers and SESSION_COOKIE in request.cookies:
        return "console-session"
    header = request.headers.get("authorization", "")
    parsed = parse_api_key(header.partition(" ")[2].strip())
    return f"key:{parsed[0]}" if parsed else "malformed"


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
