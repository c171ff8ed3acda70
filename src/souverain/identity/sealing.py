"""Secrets souverain must be able to read back (a provider's client secret, a person's
refresh token), sealed with AES-GCM under a key derived from the installation's master key.

The associated data names what the secret is for and which row holds it, so a sealed value
copied into another row, or another column, does not open.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from souverain.core.errors import AuthenticationError

_INFO = b"souverain/identity/sealed"


def _key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master_key)


def seal(master_key: bytes, plaintext: str, *, purpose: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(master_key)).encrypt(nonce, plaintext.encode(), purpose.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(master_key: bytes, sealed: str, *, purpose: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return AESGCM(_key(master_key)).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
    except Exception as error:  # tampered, truncated, or another installation's
        raise AuthenticationError("A stored identity secret cannot be read.") from error
