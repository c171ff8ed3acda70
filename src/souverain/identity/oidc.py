"""The OpenID Connect relying party: discovery, the provider's keys, the token endpoint and
the checks every ID token passes before anyone is signed in.

Signatures and registered claims are checked by `joserfc` (typed, JOSE only, maintained by
Authlib's author; it refuses `none` and will not verify an HMAC with an RSA or EC key). The
flow itself (authorization URL, code exchange with the PKCE verifier, refresh) is three HTTP
exchanges made here with httpx. Nothing in this module touches the database.

* Discovery must name exactly the issuer configured (a provider answering for another issuer
  is a mix-up), and every endpoint must be https, or a loopback address (tests, a provider
  beside souverain).
* Keys come from the provider's `jwks_uri`, cached; a token signed by a key id not in the
  cache fetches the set again (at most once per `jwks_refetch_s`), which is how a provider's
  key rotation is followed without a restart.
* Only asymmetric algorithms the provider advertises are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import KeySet

from souverain.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    ServiceUnavailableError,
)

ASYMMETRIC: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ASYMMETRIC += ("ES256", "ES384", "ES512", "EdDSA")
MAX_DOCUMENT_BYTES = 256 * 1024
LEEWAY_S = 60  # clock skew between souverain and the provider


class IdTokenRefused(AuthenticationError):
    """The provider's answer cannot sign anyone in; `reason` is a short code for the audit
    log (wrong_issuer, wrong_audience, bad_signature, expired, nonce_mismatch, …)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"Single sign-on refused: {reason.replace('_', ' ')}.")
        self.reason = reason


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


@dataclass(frozen=True)
class Client:
    """This installation as a client of one provider."""

    issuer: str
    client_id: str
    client_secret: str
    scopes: str


@dataclass(frozen=True)
class Tokens:
    id_token: str
    refresh_token: str | None


def check_endpoint(url: str, *, what: str = "issuer") -> str:
    """https, or http to a loopback address only; no credentials or fragment in it."""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        raise InvalidRequestError(f"the {what} URL is not a plain URL", param=what)
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url
    raise InvalidRequestError(
        f"the {what} must be https:// (plain http only to a loopback address)", param=what
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(
    discovery: Discovery,
    client: Client,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    challenge: str,
) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": client.scopes,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    separator = "&" if "?" in discovery.authorization_endpoint else "?"
    return f"{discovery.authorization_endpoint}{separator}{urlencode(query)}"


def validate_id_token(
    token: str,
    *,
    keys: KeySet,
    issuer: str,
    client_id: str,
    nonce: str | None,
    algorithms: tuple[str, ...],
    now: float,
) -> dict[str, Any]:
    """The claims of a valid ID token, or IdTokenRefused. `nonce` None (a refresh) accepts
    a token without one, as OpenID Connect §12.2 allows."""
    allowed = [alg for alg in algorithms if alg in ASYMMETRIC]
    try:
        decoded = jwt.decode(token, keys, algorithms=allowed)
    except JoseError as error:
        raise IdTokenRefused(_signature_reason(token, allowed)) from error
    claims = dict(decoded.claims)
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    registry = jwt.JWTClaimsRegistry(now=int(now), leeway=LEEWAY_S, **options)
    try:
        registry.validate(claims)
    except ExpiredTokenError as error:
        raise IdTokenRefused("expired") from error
    except MissingClaimError as error:
        raise IdTokenRefused(f"missing_{error.claim.split(',')[0]}") from error
    except JoseError as error:
        claim = getattr(error, "claim", "claims")
        raise IdTokenRefused(_CLAIM_REASONS.get(claim, f"invalid_{claim}")) from error
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise IdTokenRefused("wrong_audience")  # OpenID Connect §3.1.3.7, items 4 and 5
    return claims


_CLAIM_REASONS = {
    "iss": "wrong_issuer",
    "aud": "wrong_audience",
    "nonce": "nonce_mismatch",
    "exp": "expired",
    "iat": "issued_in_the_future",
    "nbf": "not_yet_valid",
}


def _signature_reason(token: str, allowed: list[str]) -> str:
    header = token_header(token)
    alg = header.get("alg") if isinstance(header, dict) else None
    if alg not in allowed:
        return "disallowed_algorithm"
    return "bad_signature"


def token_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header: only to choose a key or name a refusal."""
    try:
        head = token.split(".", 1)[0]
        value = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


class OidcClient:
    """Discovery and key caches per issuer, and the provider exchanges (one per server
    process; no database)."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        discovery_ttl_s: float = 3600.0,
        jwks_ttl_s: float = 600.0,
        jwks_refetch_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, transport=transport
        )
        self._discovery_ttl_s = discovery_ttl_s
        self._jwks_ttl_s = jwks_ttl_s
        self._jwks_refetch_s = jwks_refetch_s
        self._clock = clock
        self._discoveries: dict[str, tuple[float, Discovery]] = {}
        self._keys: dict[str, tuple[float, KeySet]] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def discover(self, issuer: str) -> Discovery:
        cached = self._discoveries.get(issuer)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        document = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        discovery = _discovery_from(document, issuer)
        self._discoveries[issuer] = (self._clock() + self._discovery_ttl_s, discovery)
        return discovery

    async def verify(
        self, token: str, *, discovery: Discovery, client_id: str, nonce: str | None
    ) -> dict[str, Any]:
        kid = token_header(token).get("kid")
        keys = await self._key_set(discovery, refresh=False)
        if kid is not None and not _has_kid(keys, kid):
            keys = await self._key_set(discovery, refresh=True)  # the provider rotated
        return validate_id_token(
            token,
            keys=keys,
            issuer=discovery.issuer,
            client_id=client_id,
            nonce=nonce,
            algorithms=discovery.algorithms,
            now=time.time(),
        )

    async def exchange_code(
        self, discovery: Discovery, client: Client, *, code: str, verifier: str, redirect_uri: str
    ) -> Tokens:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        return await self._token(discovery, client, form)

    async def refresh(self, discovery: Discovery, client: Client, refresh_token: str) -> Tokens:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token(discovery, client, form)

    async def _token(self, discovery: Discovery, client: Client, form: dict[str, str]) -> Tokens:
        try:
            response = await self._http.post(
                discovery.token_endpoint,
                data=form,
                auth=(client.client_id, client.client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as error:
            raise ServiceUnavailableError("The identity provider did not answer.") from error
        body = _json_object(response.content)
        if response.status_code != 200:
            code = str(body.get("error", response.status_code))[:64]
            raise IdTokenRefused("provider_refused", f"The identity provider refused: {code}.")
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise IdTokenRefused("no_id_token")
        refresh = body.get("refresh_token")
        return Tokens(
            id_token=id_token, refresh_token=refresh if isinstance(refresh, str) else None
        )

    async def _key_set(self, discovery: Discovery, *, refresh: bool) -> KeySet:
        cached = self._keys.get(discovery.jwks_uri)
        now = self._clock()
        fresh_enough = cached is not None and (
            cached[0] > now
            if not refresh
            else cached[0] - self._jwks_ttl_s + self._jwks_refetch_s > now
        )
        if cached is not None and fresh_enough:
            return cached[1]
        document = await self._get_json(discovery.jwks_uri)
        signing = [k for k in document.get("keys", []) if isinstance(k, dict)]
        signing = [k for k in signing if k.get("use", "sig") == "sig" and "d" not in k]
        try:
            keys = KeySet.import_key_set({"keys": signing})
        except (JoseError, ValueError, TypeError) as error:
            raise IdTokenRefused("unreadable_keys") from error
        self._keys[discovery.jwks_uri] = (now + self._jwks_ttl_s, keys)
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise ServiceUnavailableError(
                        f"The identity provider answered {r.status_code} for {urlsplit(url).path}."
                    )
                content = b""
                async for chunk in r.aiter_bytes():
                    content += chunk
                    if len(content) > MAX_DOCUMENT_BYTES:
                        raise ServiceUnavailableError(
                            "The identity provider's answer is too large."
                        )
        except httpx.HTTPError as error:
            raise ServiceUnavailableError("The identity provider did not answer.") from error
        return _json_object(content)


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys)


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _discovery_from(document: dict[str, Any], issuer: str) -> Discovery:
    if document.get("issuer") != issuer:
        raise IdTokenRefused("wrong_issuer", "The provider's discovery names another issuer.")
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str):
            raise ServiceUnavailableError(f"The provider's discovery has no {name}.")
        endpoints[name] = check_endpoint(value, what=name)
    advertised = document.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(a for a in advertised if isinstance(a, str) and a in ASYMMETRIC)
    return Discovery(issuer=issuer, algorithms=algorithms or ("RS256",), **endpoints)
