"""The installation's one Ed25519 signing key, the same in every server and controller.

Residency reports and audit seals are signed with it, so two servers behind a load balancer
must hold the same key. It is made once (by `souverain init`, or the first start) and kept
in the database: its public key, and its private key sealed with the installation's master
key (AES-GCM, `identity.sealing`), so reading the database alone forges nothing. An
operator who keeps the key elsewhere (an HSM-backed mount) points every process at that
file with SOUVERAIN_SIGNING_KEY_FILE; then only its public key is in the database.

Every process checks the key it would sign with against the installation's public key and
refuses to start on a difference (another file, another master key), naming the fix.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import AuthenticationError
from souverain.core.signing import key_id, public_key_pem
from souverain.db.installation import InstallationSecretRow
from souverain.identity.sealing import seal, unseal

SIGNING = "signing"
_PURPOSE = "installation/signing"


class InstallationMismatch(RuntimeError):
    """This process would sign with another key than the installation's: it must not start."""


async def installation_key(
    sessions: async_sessionmaker[AsyncSession],
    *,
    master_key: bytes,
    key_file: Path | None,
    adopt: Path | None = None,
) -> Ed25519PrivateKey:
    """The installation's signing key, made on first use. `adopt` is a key file an older
    souverain made in the data directory: the first start after an upgrade keeps it."""
    given = await asyncio.to_thread(read_key_file, key_file) if key_file else None
    adopted = await asyncio.to_thread(_adoptable, adopt)
    for _attempt in range(2):  # a second process may record the key at the same moment
        try:
            async with sessions.begin() as session:
                row = await session.get(InstallationSecretRow, SIGNING)
                if row is None:
                    return await _record(
                        session, master_key=master_key, given=given, adopted=adopted
                    )
                return _check(row, master_key=master_key, given=given, key_file=key_file)
        except IntegrityError:
            continue
    raise InstallationMismatch("the installation's signing key could not be recorded")


def _adoptable(path: Path | None) -> Ed25519PrivateKey | None:
    return read_key_file(path) if path is not None and path.is_file() else None


def _check(
    row: InstallationSecretRow,
    *,
    master_key: bytes,
    given: Ed25519PrivateKey | None,
    key_file: Path | None,
) -> Ed25519PrivateKey:
    if given is not None:
        check_same(given, row.public, f"SOUVERAIN_SIGNING_KEY_FILE ({key_file})")
        return given
    if row.sealed is None:
        raise InstallationMismatch(
            "this installation keeps its signing key in a file: give every server and "
            "controller that file with SOUVERAIN_SIGNING_KEY_FILE"
        )
    try:
        pem = unseal(master_key, row.sealed, purpose=_PURPOSE)
    except AuthenticationError:
        raise InstallationMismatch(
            "this process's master key is not the installation's (its signing key cannot be "
            "opened): give every server and controller the same SOUVERAIN_SECRET_KEY"
        ) from None
    key = _private(pem.encode(), "the installation's signing key")
    check_same(key, row.public, "the sealed signing key")
    return key


async def _record(
    session: AsyncSession,
    *,
    master_key: bytes,
    given: Ed25519PrivateKey | None,
    adopted: Ed25519PrivateKey | None,
) -> Ed25519PrivateKey:
    sealed: str | None = None
    if given is not None:
        key = given  # kept in its file: only the public key is recorded
    else:
        key = adopted or Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
        sealed = seal(master_key, pem, purpose=_PURPOSE)
    session.add(
        InstallationSecretRow(name=SIGNING, public=public_key_pem(key.public_key()), sealed=sealed)
    )
    await session.flush()
    return key


def check_same(key: Ed25519PrivateKey, installation_public: str, what: str) -> None:
    mine = public_key_pem(key.public_key())
    if mine != installation_public:
        raise InstallationMismatch(
            f"{what} is not the installation's signing key (key id "
            f"{key_id(key.public_key())}); every server and controller must sign with the "
            "same key: give them the installation's key file, or none (the key in the database)"
        )


def read_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InstallationMismatch(f"cannot read the signing key file {path}: {error}") from None
    return _private(data, str(path))


def _private(pem: bytes, what: str) -> Ed25519PrivateKey:
    try:
        loaded = load_pem_private_key(pem, password=None)
    except ValueError:
        raise InstallationMismatch(f"{what} is not a PEM private key") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InstallationMismatch(f"{what} does not hold an Ed25519 private key")
    return loaded
