"""Encrypted objects on a node: decrypted into its private directory only, checked.

A grant (`core.fleet.ObjectGrant`) names the object and carries its data key; the key
reaches the node through the cluster, like a replica secret, and is never written down.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from souverain.core.fleet import ObjectGrant
from souverain.storage.crypto import open_sealed
from souverain.storage.stores import store_from_uri


class SealedObjectError(Exception):
    pass


def check_digest(grant: ObjectGrant) -> None:
    """Refuse a grant that carries no sha256 to check its plaintext against (what a model's
    adapter must have: decrypt_to checks only the digests it is given)."""
    digest = grant.sha256 or ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SealedObjectError(f"{grant.object_id} has no sha256 to check it against")


def decrypt_to(grants: Sequence[ObjectGrant], target: Path, *, join_lines: bool = False) -> None:
    """The plaintexts of `grants`, one after the other, in a new 0600 file `target`; each
    checked against its sha256. `join_lines`: JSONL files joined line by line."""

    async def copy() -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            for grant in grants:
                digest, last = hashlib.sha256(), b""
                store = store_from_uri(grant.store_uri)
                async for piece in open_sealed(
                    store.read(grant.object_key), grant.data_key, grant.object_id
                ):
                    digest.update(piece)
                    out.write(piece)
                    last = piece[-1:] or last
                if grant.sha256 and digest.hexdigest() != grant.sha256:
                    raise SealedObjectError(f"{grant.object_id} does not match its sha256")
                if join_lines and last not in (b"", b"\n"):
                    out.write(b"\n")

    try:
        asyncio.run(copy())
    except Exception:
        target.unlink(missing_ok=True)
        raise
