"""Identifiers and API key strings.

Resource ids are `<prefix>_<random>`. API keys are `sk-souv-<id>_<secret>`: the id is
stored in clear and indexed; only the SHA-256 of the secret is stored, and compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "sk-souv-"
_KEY_RE = re.compile(r"^sk-souv-([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_api_key() -> tuple[str, str, str]:
    """Return (key_id, secret, full key string)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def parse_api_key(value: str) -> tuple[str, str] | None:
    """Split a full key into (key_id, secret), or None when it is not shaped like one."""
    match = _KEY_RE.match(value)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def replica_secret(master_key: bytes, replica_id: str) -> str:
    """The bearer secret an engine replica accepts, derived so it is never stored."""
    return hmac.new(master_key, f"replica:{replica_id}".encode(), hashlib.sha256).hexdigest()


def cache_scope(master_key: bytes, org_id: str | None, model_id: str) -> str:
    """The opaque name of an organisation's KV-cache partition on engines, for one model
    (a fine-tuned model's adapter changes what a prefix computes to)."""
    subject = f"cache:{org_id or 'platform'}:{model_id}"
    return hmac.new(master_key, subject.encode(), hashlib.sha256).hexdigest()[:32]


SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$")
