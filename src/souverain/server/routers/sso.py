"""Single sign-on to the console: the two steps the browser walks through.

    GET /console/sso/start?org=acme[&provider=…][&project=…][&return_to=/console#/usage]
        → 303 to the organisation's provider (no org: the operators' provider), with a
          flow cookie (HttpOnly, SameSite=Lax, path /console/sso, ten minutes)
    GET /console/sso/callback?code=…&state=…
        → 303 to `return_to` with the console session cookie, or to
          `/console?sso_error=<reason>` with nothing but an audit event

They are browser steps, not API operations (left out of /openapi.json, like the console's
shell). Neither needs a credential: they are the sign-in (like `POST /console/session`, whose
credential is the key). Every refusal is audited (`identity.signin_refused`, counted per
window like failed authentications) and creates nothing.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from souverain.core.errors import AuthenticationError, NotFoundError, SouverainError
from souverain.db.identity import IdentityProviderRow
from souverain.gateway.state import AppState
from souverain.identity import providers, signin
from souverain.identity.oidc import IdTokenRefused
from souverain.identity.sso_sessions import open_sso_session
from souverain.server.deps import SESSION_COOKIE, StateDep, sso_settings
from souverain.server.routers.console import HEADERS, secure_cookies

router = APIRouter(tags=["console"])

FLOW_COOKIE = "souverain_sso"
FLOW_PATH = "/console/sso"
CALLBACK = "/console/sso/callback"


def redirect_uri(request: Request, state: AppState) -> str:
    """The callback URL registered at the provider: from `public_url` when set."""
    base = state.settings.public_url or str(request.base_url)
    return base.rstrip("/") + CALLBACK


@router.get("/console/sso/start", status_code=303, include_in_schema=False)
async def start(
    request: Request,
    state: StateDep,
    org: str | None = Query(default=None, max_length=64),
    provider: str | None = Query(default=None, max_length=64),
    project: str | None = Query(default=None, max_length=64),
    return_to: str | None = Query(default=None, max_length=200),
) -> Response:
    """Send the browser to the organisation's identity provider (without `org`: the
    platform operators' provider). `return_to` may only name a page of this console."""
    try:
        back = signin.check_return_to(return_to)
    except SouverainError:
        state.audit_trail.note(
            "identity.signin_refused", subject=f"org:{org or '-'}", reason="open_redirect"
        )
        raise
    async with state.sessions() as session:
        found = await providers.find_for_sign_in(session, org_name=org, name=provider)
    if found is None:
        raise NotFoundError("No identity provider signs people in there.")
    client = providers.client_of(found, state.master_key)
    discovery = await state.oidc.discover(found.issuer)
    async with state.sessions.begin() as session:
        begun = await signin.begin(
            session,
            provider=found,
            discovery=discovery,
            client=client,
            redirect_uri=redirect_uri(request, state),
            return_to=back,
            project=project,
        )
    response = RedirectResponse(begun.url, status_code=303, headers=_headers())
    response.set_cookie(
        FLOW_COOKIE,
        begun.browser,
        max_age=int(signin.FLOW_TTL.total_seconds()),
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",  # the provider's redirect back is a cross-site navigation
        secure=secure_cookies(request, state),
    )
    return response


@router.get(CALLBACK, status_code=303, include_in_schema=False)
async def callback(
    request: Request,
    state: StateDep,
    code: str | None = Query(default=None, max_length=2048),
    flow_state: str | None = Query(default=None, alias="state", max_length=256),
    error: str | None = Query(default=None, max_length=128),
    iss: str | None = Query(default=None, max_length=255),
) -> Response:
    """The provider sends the browser back here; on success the console session cookie
    is set and the browser returns to the page it started from."""
    provider: IdentityProviderRow | None = None
    try:
        async with state.sessions.begin() as session:
            flow = await signin.take(session, state=flow_state or "")
            provider = await session.get(IdentityProviderRow, flow.provider_id)
        signin.check_flow(flow, browser=request.cookies.get(FLOW_COOKIE))
        if provider is None:
            raise IdTokenRefused("provider_removed")
        if error is not None or not code:
            raise IdTokenRefused("provider_error", f"The provider answered: {error or 'no code'}.")
        if iss is not None and iss != provider.issuer:
            raise IdTokenRefused("wrong_issuer")  # RFC 9207: a mix-up of providers
        cookie = await _sign_in(request, state, provider, flow, code)
    except SouverainError as refused:
        return _refused(request, state, provider, refused)
    response = RedirectResponse(flow.return_to, status_code=303, headers=_headers())
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=state.settings.console_max_age_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, state),
    )
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


async def _sign_in(
    request: Request,
    state: AppState,
    provider: IdentityProviderRow,
    flow: signin.Flow,
    code: str,
) -> str:
    client = providers.client_of(provider, state.master_key)
    discovery = await state.oidc.discover(provider.issuer)
    tokens = await state.oidc.exchange_code(
        discovery,
        client,
        code=code,
        verifier=flow.verifier,
        redirect_uri=redirect_uri(request, state),
    )
    claims = await state.oidc.verify(
        tokens.id_token, discovery=discovery, client_id=client.client_id, nonce=flow.nonce
    )
    async with state.sessions() as session:
        try:
            opened = await open_sso_session(
                session,
                provider=provider,
                claims=claims,
                refresh_token=tokens.refresh_token,
                project_ref=flow.project,
                settings=sso_settings(state),
                client=request.client.host if request.client else None,
            )
        except IdTokenRefused as refused:
            if refused.reason in ("no_role", "deactivated"):
                await session.commit()  # the directory's demotion stands; nobody is signed in
            raise
        await session.commit()
    return opened.cookie


def _refused(
    request: Request,
    state: AppState,
    provider: IdentityProviderRow | None,
    refused: SouverainError,
) -> Response:
    reason = refused.reason if isinstance(refused, IdTokenRefused) else _reason(refused)
    state.audit_trail.note(
        "identity.signin_refused",
        org_id=provider.org_id if provider else None,
        subject=f"provider:{provider.name}" if provider else "unknown",
        reason=reason,
    )
    response = RedirectResponse(
        f"/console?sso_error={quote(reason)}", status_code=303, headers=_headers()
    )
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


def _reason(error: SouverainError) -> str:
    if isinstance(error, AuthenticationError):
        return "refused"
    return "provider_unavailable" if error.code == "service_unavailable" else "invalid_request"


def _headers() -> dict[str, str]:
    return HEADERS | {"Cache-Control": "no-store"}
