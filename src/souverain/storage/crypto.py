"""Envelope encryption of tenants' files, streamed in bounded memory.

    master key ──HKDF(salt of the organisation, kept in the database)──▶ organisation key
    organisation key ──AES-256-GCM wrap──▶ a random data key per file (kept in the row)
    data key ──AES-256-GCM, 64 KiB segments──▶ the object in the store

Each segment is sealed on its own with nonce = file nonce (8 bytes) ‖ segment number
(4 bytes) and authenticated data naming the file, the segment number and whether it is the
last one, so a reordered, truncated, extended or transplanted object fails to decrypt.
Objects are length-prefixed segments; nothing in the store says who owns them.

Deleting an organisation's salt makes its key underivable: every file of the organisation
becomes unreadable at once (crypto-erasure), whatever copies of the objects exist.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEGMENT = 64 * 1024
_LENGTH = struct.Struct(">I")
_TAG = 16


class DecryptionError(Exception):
    """The object is not what was stored (tampered, truncated) or the key is gone."""


def new_salt() -> bytes:
    return os.urandom(32)


def organisation_key(master_key: bytes, salt: bytes, org_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=f"souverain/org/{org_id}".encode()
    ).derive(master_key)


def wrap(kek: bytes, data_key: bytes, file_id: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, f"file-key:{file_id}".encode())


def unwrap(kek: bytes, wrapped: bytes, file_id: str) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], f"file-key:{file_id}".encode())
    except Exception as error:
        raise DecryptionError("the file's key cannot be unwrapped") from error


def _aad(file_id: str, index: int, last: bool) -> bytes:
    return f"{file_id}:{index}:{int(last)}".encode()


class Sealer:
    """Plaintext in, stored bytes out, one 64 KiB segment at a time."""

    def __init__(self, data_key: bytes, file_id: str) -> None:
        self._aead = AESGCM(data_key)
        self._file_id = file_id
        self._prefix = os.urandom(8)
        self._index = 0
        self._pending = bytearray()
        self.header = self._prefix  # written first

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._pending += data
        while len(self._pending) > SEGMENT:  # keep one back: the last one is marked last
            piece = bytes(self._pending[:SEGMENT])
            del self._pending[:SEGMENT]
            yield self._seal(piece, last=False)

    def finish(self) -> bytes:
        sealed = self._seal(bytes(self._pending), last=True)
        self._pending.clear()
        return sealed

    def _seal(self, piece: bytes, *, last: bool) -> bytes:
        nonce = self._prefix + struct.pack(">I", self._index)
        sealed = self._aead.encrypt(nonce, piece, _aad(self._file_id, self._index, last))
        self._index += 1
        return _LENGTH.pack(len(sealed)) + sealed


async def open_sealed(
    chunks: AsyncIterator[bytes], data_key: bytes, file_id: str
) -> AsyncIterator[bytes]:
    """Stored bytes in, plaintext out; raises DecryptionError on any tampering."""
    aead, buffer, index, prefix, finished = AESGCM(data_key), bytearray(), 0, b"", False
    async for chunk in chunks:
        buffer += chunk
        if not prefix:
            if len(buffer) < 8:
                continue
            prefix, buffer = bytes(buffer[:8]), buffer[8:]
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if size < _TAG or size > SEGMENT + _TAG:
                raise DecryptionError("malformed segment")
            if len(buffer) < _LENGTH.size + size:
                break
            sealed = bytes(buffer[_LENGTH.size : _LENGTH.size + size])
            del buffer[: _LENGTH.size + size]
            if finished:
                raise DecryptionError("data after the last segment")
            plain, finished = _open(aead, prefix, index, sealed, file_id, more=bool(buffer))
            index += 1
            yield plain
    if not finished or buffer:
        raise DecryptionError("the object is truncated")


def _open(
    aead: AESGCM, prefix: bytes, index: int, sealed: bytes, file_id: str, *, more: bool
) -> tuple[bytes, bool]:
    nonce = prefix + struct.pack(">I", index)
    for last in (more is False, more is not False):  # the likely flag first
        try:
            return aead.decrypt(nonce, sealed, _aad(file_id, index, last)), last
        except Exception:  # noqa: S112 - try the other flag, then give up
            continue
    raise DecryptionError(f"segment {index} does not authenticate")
