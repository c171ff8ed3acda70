"""Signed documents: canonical JSON signed with Ed25519.

    {"document": {...}, "signature": {"algorithm": "Ed25519", "key_id": "<sha256 of the
     public key>", "public_key": "<base64 raw>", "value": "<base64>"}}

The signature covers the canonical encoding of `document` (UTF-8 JSON, keys sorted, no
insignificant whitespace). A verifier must trust the public key through another channel
(download it from the platform, compare the key id); the embedded copy only says which
key was used.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:32]


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    """A PEM public key, or the raw key in base64."""
    if "BEGIN PUBLIC KEY" in text:
        key = load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip()))


def sign(private_key: Ed25519PrivateKey, document: dict[str, Any]) -> dict[str, Any]:
    public = private_key.public_key()
    return {
        "document": document,
        "signature": {
            "algorithm": "Ed25519",
            "key_id": key_id(public),
            "public_key": base64.b64encode(raw_public_key(public)).decode(),
            "value": base64.b64encode(private_key.sign(canonical_json(document))).decode(),
        },
    }


def verify(signed: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    """True when `signed` carries a valid signature by `public_key` over its document."""
    try:
        signature = signed["signature"]
        if signature.get("algorithm") != "Ed25519":
            return False
        public_key.verify(base64.b64decode(signature["value"]), canonical_json(signed["document"]))
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True
