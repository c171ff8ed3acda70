"""The installation's certificate authority: the root of the TLS between servers and engines.

Created once per installation (the first server or controller to need it), kept in the
database beside the signing key (`installation_secrets`, name `authority`): its certificate
in clear, its private key sealed with the master key (`identity.sealing`), so the database
alone issues nothing. The controller issues one
certificate per replica when it places it, for the replica's own name
(`core.fleet.replica_server_name`) and nothing else; servers trust this authority alone and
check that name (core/tls.py). A replica that is gone is never called again, so its
certificate needs no revocation list: no server asks for its name any more.

ECDSA P-256: every TLS stack of the engines takes it (OpenSSL in llama-server, Python's ssl
under uvicorn) and its handshakes are cheap. The `cryptography` library builds the
certificates; nothing here is written by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import AuthenticationError
from souverain.core.fleet import EngineCredential, replica_server_name
from souverain.db.installation import InstallationSecretRow
from souverain.identity.sealing import seal, unseal

AUTHORITY = "authority"  # its name among the installation secrets
_PURPOSE = "installation/authority"
AUTHORITY_YEARS = 10
REPLICA_CERT_DAYS = 397  # a replica lives until it is replaced; its name is never reused
_BACKDATE = timedelta(minutes=5)  # nodes' clocks differ a little


class AuthorityUnreadable(RuntimeError):
    """The sealed key does not open: another installation's master key, or tampering."""


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)


def create(*, now: datetime | None = None) -> Authority:
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "souverain"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"installation authority {os.urandom(6).hex()}"
            ),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=365 * AUTHORITY_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def issue(
    authority: Authority, name: str, *, now: datetime | None = None, days: float = REPLICA_CERT_DAYS
) -> EngineCredential:
    """A server certificate for `name` alone, with a fresh key."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    issuer_key = authority.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return EngineCredential(
        certificate=certificate.public_bytes(Encoding.PEM),
        key=key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        authority=authority.certificate_pem,
    )


def _usage(*, signs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=signs, crl_sign=signs,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _sealed_key(master_key: bytes, authority: Authority) -> str:
    pem = authority.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return seal(master_key, pem.decode(), purpose=_PURPOSE)


def _opened(master_key: bytes, row: InstallationSecretRow) -> Authority:
    try:
        pem = unseal(master_key, row.sealed or "", purpose=_PURPOSE)
    except AuthenticationError as error:
        raise AuthorityUnreadable(
            "the installation's certificate authority cannot be opened with this master key "
            "(every server and controller of an installation needs the same SOUVERAIN_SECRET_KEY)"
        ) from error
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthorityUnreadable("the installation's authority key is not an EC key")
    return Authority(x509.load_pem_x509_certificate(row.public.encode()), key)


async def load_or_create(
    sessions: async_sessionmaker[AsyncSession], master_key: bytes
) -> Authority:
    """The installation's authority, created by whichever process asks first."""
    async with sessions() as session:
        row = await session.get(InstallationSecretRow, AUTHORITY)
    if row is not None:
        return _opened(master_key, row)
    authority = create()
    try:
        async with sessions.begin() as session:
            session.add(
                InstallationSecretRow(
                    name=AUTHORITY,
                    public=authority.certificate_pem.decode(),
                    sealed=_sealed_key(master_key, authority),
                )
            )
    except IntegrityError:  # another process created it first: use theirs
        return await load_or_create(sessions, master_key)
    return authority


class Issuer:
    """Issues replicas' certificates for the controller, loading the authority once."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], master_key: bytes) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._authority: Authority | None = None

    async def authority(self) -> Authority:
        if self._authority is None:
            self._authority = await load_or_create(self._sessions, self._master_key)
        return self._authority

    async def issue_replica(self, replica_id: str) -> EngineCredential:
        return issue(await self.authority(), replica_server_name(replica_id))
