"""Dependencies shared by /v1 and /api, as `Annotated` aliases so routes read like prose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import AuthenticationError, InvalidRequestError
from souverain.core.ids import parse_api_key
from souverain.core.principal import Principal
from souverain.gateway.state import AppState

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
    try:
        principal = await state.keys.authenticate(bearer_token(request))
    except AuthenticationError as error:
        state.audit_trail.note("auth.failed", subject=_key_id_of(request), reason=error.message)
        raise
    request.state.principal = principal
    return principal


def _key_id_of(request: Request) -> str:
    """The public id part of the key tried, never its secret."""
    header = request.headers.get("authorization", "")
    parsed = parse_api_key(header.partition(" ")[2].strip())
    return f"key:{parsed[0]}" if parsed else "malformed"


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
