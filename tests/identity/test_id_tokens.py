"""Every ID token passes the same checks before anyone is signed in: the provider's issuer,
this installation as audience, a signature by one of the provider's published keys with an
asymmetric algorithm it advertises, the nonce of the sign-in, and time.

The tokens below are what a hostile party would forge; the same forgeries also go through
the whole sign-in in test_sign_in_attacks.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from souverain.identity.oidc import IdTokenRefused, check_endpoint, validate_id_token

ISSUER = "https://idp.acme.example"
CLIENT = "souverain"
NONCE = "n-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_key(kid: str = "k1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


class Later(int):
    """A time claim given as seconds from when the token is made (the test's parameters are
    made when the suite is collected, which can be an hour before the test runs)."""


def claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "u-1", "iat": now, "exp": now + 300}
    timed = {k: now + int(v) if isinstance(v, Later) else v for k, v in override.items()}
    return {**base, "nonce": NONCE, **timed}


def signed(key: RSAKey, body: dict[str, Any], alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


def check(token: str, published: KeySet, *, nonce: str | None = NONCE) -> dict[str, Any]:
    return validate_id_token(
        token,
        keys=published,
        issuer=ISSUER,
        client_id=CLIENT,
        nonce=nonce,
        algorithms=("RS256",),
        now=time.time(),
    )


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return signing_key()


@pytest.fixture(scope="module")
def published(key: RSAKey) -> KeySet:
    return KeySet.import_key_set({"keys": [key.as_dict(private=False)]})


class TestIdTokenChecks:
    def test_a_token_of_the_provider_for_this_installation_passes(
        self, key: RSAKey, published: KeySet
    ) -> None:
        assert check(signed(key, claims()), published)["sub"] == "u-1"

    @pytest.mark.parametrize(
        ("override", "reason"),
        [
            ({"iss": "https://idp.evil.example"}, "wrong_issuer"),
            ({"aud": "another-client"}, "wrong_audience"),
            ({"aud": [CLIENT, "another-client"]}, "wrong_audience"),  # several, no azp
            ({"exp": Later(-3600)}, "expired"),
            ({"iat": Later(3600)}, "issued_in_the_future"),
            ({"nonce": "n-of-another-sign-in"}, "nonce_mismatch"),
            ({"nonce": None}, "missing_nonce"),
            ({"sub": None}, "missing_sub"),
        ],
    )
    def test_a_wrong_claim_is_refused_by_name(
        self, key: RSAKey, published: KeySet, override: dict[str, Any], reason: str
    ) -> None:
        body = {k: v for k, v in claims(**override).items() if v is not None}
        with pytest.raises(IdTokenRefused) as refused:
            check(signed(key, body), published)
        assert refused.value.reason == reason

    def test_several_audiences_need_this_installation_as_authorised_party(
        self, key: RSAKey, published: KeySet
    ) -> None:
        token = signed(key, claims(aud=[CLIENT, "other"], azp=CLIENT))
        assert check(token, published)["azp"] == CLIENT

    def test_a_key_the_provider_never_published_is_refused(self, published: KeySet) -> None:
        impostor = signing_key(kid="k1")  # same key id, another key
        with pytest.raises(IdTokenRefused) as refused:
            check(signed(impostor, claims()), published)
        assert refused.value.reason == "bad_signature"

    def test_alg_none_is_refused(self, published: KeySet) -> None:
        header = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
        token = f"{header}.{b64(json.dumps(claims()).encode())}."
        with pytest.raises(IdTokenRefused) as refused:
            check(token, published)
        assert refused.value.reason == "disallowed_algorithm"

    def test_hs256_keyed_with_the_providers_public_key_is_refused(
        self, key: RSAKey, published: KeySet
    ) -> None:
        """The classic confusion: an HMAC whose secret is the RSA public key, which anyone
        can read from the provider's JWKS."""
        public_pem = key.as_pem(private=False)
        signing_input = (
            f"{b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}."
            f"{b64(json.dumps(claims()).encode())}"
        )
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(IdTokenRefused) as refused:
            check(f"{signing_input}.{b64(mac)}", published)
        assert refused.value.reason == "disallowed_algorithm"

    def test_a_tampered_payload_breaks_the_signature(self, key: RSAKey, published: KeySet) -> None:
        header, _, signature = signed(key, claims()).split(".")
        forged = b64(json.dumps(claims(sub="u-admin")).encode())
        with pytest.raises(IdTokenRefused) as refused:
            check(f"{header}.{forged}.{signature}", published)
        assert refused.value.reason == "bad_signature"

    def test_a_refreshed_token_may_come_without_a_nonce(
        self, key: RSAKey, published: KeySet
    ) -> None:
        body = {k: v for k, v in claims().items() if k != "nonce"}
        assert check(signed(key, body), published, nonce=None)["sub"] == "u-1"


class TestEndpoints:
    @pytest.mark.parametrize(
        "url",
        ["https://idp.example", "http://127.0.0.1:8080", "http://localhost/x", "http://[::1]:9"],
    )
    def test_https_or_loopback_http_is_accepted(self, url: str) -> None:
        assert check_endpoint(url) == url

    @pytest.mark.parametrize(
        "url",
        [
            "http://idp.example",
            "http://10.0.0.8",
            "ftp://idp.example",
            "https://user:pw@idp.example",
            "https://idp.example/#x",
            "javascript:alert(1)",
        ],
    )
    def test_anything_else_is_refused(self, url: str) -> None:
        with pytest.raises(Exception, match=r"https|plain URL"):
            check_endpoint(url)
