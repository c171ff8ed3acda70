"""The web console at /console: its static shell and assets, and its sign-in.

The shell and assets hold no data (like /docs) and are served without a credential;
everything the pages show comes from `/api` and `/v1` on the session cookie. Sign-in takes
the API key once, in the Authorization header, and answers with the cookie; the key is
not kept by the browser. Every console response carries a strict Content-Security-Policy:
scripts, styles and connections only from souverain itself, no inline script, no frames.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from souverain.console import assets
from souverain.core.errors import AuthenticationError, NotFoundError
from souverain.gateway.state import AppState
from souverain.server.deps import CSRF_HEADER, SESSION_COOKIE, PrincipalDep, SessionDep, StateDep
from souverain.tenancy import console_sessions

router = APIRouter(tags=["console"])

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_ASSETS = assets()


@router.get("/console", include_in_schema=False)
async def shell() -> Response:
    """The console's single page; its routes live after the `#`."""
    body, media = _ASSETS["index.html"]
    return Response(body, media_type=media, headers=HEADERS | {"Cache-Control": "no-cache"})


@router.get("/console/", include_in_schema=False)
async def shell_slash() -> Response:
    return RedirectResponse("/console", status_code=308, headers=HEADERS)


@router.get("/console/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    found = _ASSETS.get(name)
    if found is None or name == "index.html":
        raise NotFoundError(f"no console asset '{name}'")
    body, media = found
    return Response(body, media_type=media, headers=HEADERS | {"Cache-Control": "no-cache"})


@router.post("/console/session", status_code=201, summary="Sign in to the console")
async def sign_in(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> dict[str, Any]:
    """Exchange the API key in the Authorization header for a console session cookie
    (HttpOnly, SameSite=Strict, Secure over TLS). The answer holds the CSRF token that
    every change made on the session must send as `X-CSRF-Token`."""
    if "authorization" not in request.headers:
        raise AuthenticationError("Sign in with an API key in the Authorization header.")
    opened = await console_sessions.open_session(
        session,
        principal=principal,
        max_age_s=state.settings.console_max_age_s,
        client=request.client.host if request.client else None,
    )
    await session.commit()
    response.set_cookie(
        SESSION_COOKIE,
        opened.cookie,
        max_age=state.settings.console_max_age_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, state),
    )
    response.headers.update(HEADERS | {"Cache-Control": "no-store"})
    return _session_view(opened.csrf, state)


@router.get("/console/session", summary="The current console session")
async def current(
    request: Request, response: Response, principal: PrincipalDep, state: StateDep
) -> dict[str, Any]:
    """The session's CSRF token again (a reloaded page has lost it from memory)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:  # signed in with a bearer key, not a session
        raise NotFoundError("this request was not made on a console session")
    response.headers.update(HEADERS | {"Cache-Control": "no-store"})
    return _session_view(console_sessions.csrf_token(cookie), state) | {"key_id": principal.key_id}


@router.delete("/console/session", status_code=204, summary="Sign out of the console")
async def sign_out(
    request: Request, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Response:
    """End the session: its cookie stops working on every server at once."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        await console_sessions.close_session(session, cookie=cookie, principal=principal)
        await session.commit()
    response = Response(status_code=204, headers=HEADERS)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, state),
    )
    return response


def _session_view(csrf: str, state: AppState) -> dict[str, Any]:
    return {
        "csrf_token": csrf,
        "csrf_header": CSRF_HEADER,
        "idle_s": state.settings.console_idle_s,
    }


def secure_cookies(request: Request, state: AppState) -> bool:
    if state.settings.console_secure_cookie is not None:
        return state.settings.console_secure_cookie
    public = state.settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")
