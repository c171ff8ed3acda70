"""Ray's own TLS: every gRPC connection of a cluster souverain starts (GCS, raylets, workers,
object transfers, drivers) is encrypted and authenticated both ways.

Ray reads four environment variables, each a file *path* (never a secret itself):
`RAY_USE_TLS`, `RAY_TLS_SERVER_CERT`, `RAY_TLS_SERVER_KEY`, `RAY_TLS_CA_CERT`. Every server
of the cluster demands a client certificate from the same authority, and every client checks
that the server's certificate names the address it dialled, so each host needs a
certificate for its own private address.

The cluster has an authority of its own, made by `souverain node head` in the head's TLS
directory (`ca.crt`, `ca.key`, and the head's `node.crt`/`node.key`). The authority's key
stays on the head: `souverain node certify --node-ip-address <ip> --datacenter <id>` issues a
directory for another host (`ca.crt`, `node.crt`, `node.key`, no `ca.key`), copied to that
host like the token file. A node that is broken into holds a certificate for its own address
only: it cannot pose as another node to the rest of the cluster. The certificate names the
node's datacenter too (a URI `urn:souverain:datacenter:<id>`): the label a node declares
when it joins is checked against it, by `node join` and again by the controller on the
live node (`cluster/node_identity.py`), so a node that rejoins under another label gets no
work. `--renew` issues a new certificate into an existing directory (a certificate within
30 days of its end is refused). Not the installation's authority:
that one is kept in the database and trusted by the gateway for engines; mixing the two
would let a Ray certificate and an engine certificate stand in for each other.

ECDSA P-256 certificates (gRPC's BoringSSL and Python's ssl take them; handshakes are
cheap), built with the `cryptography` library. Directories 0700, files 0600, written
atomically; a key is never printed, logged or put in argv or the environment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from souverain.node.node_dir import write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"  # on the head only
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
AUTHORITY_YEARS = 10
NODE_CERT_DAYS = 397
RENEW_BEFORE = timedelta(days=30)  # a certificate this close to its end is refused
DATACENTER_URI = "urn:souverain:datacenter:"
_BACKDATE = timedelta(minutes=5)  # hosts' clocks differ a little
_LOOPBACK = ("127.0.0.1", "::1")  # Ray's processes also dial their own node's loopback


class TlsError(RuntimeError):
    """A TLS directory or peer souverain will not use; the message names the fix."""


@dataclass(frozen=True)
class TlsDir:
    path: Path

    @property
    def ca_cert(self) -> Path:
        return self.path / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.path / CA_KEY

    @property
    def node_cert(self) -> Path:
        return self.path / NODE_CERT

    @property
    def node_key(self) -> Path:
        return self.path / NODE_KEY


def ray_tls_environment(directory: Path) -> dict[str, str]:
    """What Ray is given: the paths of this host's certificate, its key and the authority."""
    tls = TlsDir(directory)
    return {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(tls.node_cert),
        "RAY_TLS_SERVER_KEY": str(tls.node_key),
        "RAY_TLS_CA_CERT": str(tls.ca_cert),
    }


# -- the authority and the nodes' certificates ------------------------------------------


def ensure_head(
    directory: Path, ip: str, datacenter: str | None = None, *, now: datetime | None = None
) -> bool:
    """The head's directory: the cluster's authority (made once) and a certificate for the
    head's address and datacenter (made again when missing, expiring, or for another address
    or datacenter). True when the authority was made now."""
    made = not TlsDir(directory).ca_key.exists()
    _private_dir(directory)
    if made:
        _write_authority(TlsDir(directory), now=now)
    tls = TlsDir(directory)
    if not _valid_for(tls, ip, now=now) or _certified_datacenter_in(tls) != datacenter:
        issue(directory, ip, directory, datacenter, now=now)
    check_node_dir(directory, ip, datacenter, now=now)  # a key left open to others is refused
    return made


def issue(
    authority_dir: Path,
    ip: str,
    out_dir: Path,
    datacenter: str | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """A certificate and key for the host at `ip` (of `datacenter`, when it serves work),
    with the authority's certificate, into `out_dir` (made 0700); the authority's key is
    never copied there. An existing certificate there is replaced (a renewal)."""
    source = TlsDir(authority_dir)
    ca_cert, ca_key = _load_authority(source)
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _node_builder(ca_cert, key.public_key(), ip, datacenter, now)
    certificate = builder.sign(ca_key, hashes.SHA256())
    target = TlsDir(out_dir)
    _private_dir(out_dir)
    if target.ca_cert != source.ca_cert:
        write_private(target.ca_cert, source.ca_cert.read_bytes())
    write_private(
        target.node_key, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    write_private(target.node_cert, certificate.public_bytes(Encoding.PEM))


def _write_authority(tls: TlsDir, *, now: datetime | None) -> None:
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "souverain"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ray cluster authority {os.urandom(6).hex()}"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=365 * AUTHORITY_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(tls.ca_key, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    write_private(tls.ca_cert, certificate.public_bytes(Encoding.PEM))


def _node_builder(
    ca_cert: x509.Certificate,
    public: ec.EllipticCurvePublicKey,
    ip: str,
    datacenter: str | None,
    now: datetime,
) -> x509.CertificateBuilder:
    """Server and client at once: Ray presents the same certificate both ways."""
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip))]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _LOOPBACK if a != ip]
    names.append(x509.DNSName("localhost"))
    if datacenter:
        names.append(x509.UniformResourceIdentifier(DATACENTER_URI + datacenter))
    issuer_key = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ray node {ip}")]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=NODE_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key),
            critical=False,
        )
    )


def _usage(*, signs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=signs, crl_sign=signs,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _load_authority(tls: TlsDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not tls.ca_key.is_file():
        raise TlsError(
            f"{tls.path} holds no cluster authority key ({CA_KEY}): run this on the head, "
            "with the TLS directory `souverain node head` made (--tls-dir)"
        )
    _check_secret_file(tls.ca_key)
    key = load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{tls.ca_key} is not the cluster authority's key")
    return x509.load_pem_x509_certificate(tls.ca_cert.read_bytes()), key


# -- checks -------------------------------------------------------------------------------


def check_node_dir(
    directory: Path, ip: str, datacenter: str | None = None, *, now: datetime | None = None
) -> None:
    """This host's TLS directory is private, complete, and its certificate is one of the
    authority's, valid now and for 30 days more, for `ip` and (when given) `datacenter`."""
    tls = TlsDir(directory)
    fix = certify_fix(ip, datacenter)
    if not directory.is_dir():
        raise TlsError(f"no Ray TLS directory at {directory}: {fix}")
    _check_private_dir(directory)
    for path in (tls.ca_cert, tls.node_cert, tls.node_key):
        if not path.is_file():
            raise TlsError(f"{directory} has no {path.name}: {fix}")
    _check_secret_file(tls.node_key)
    certificate = _node_certificate(tls)
    if certificate is None or not _names_ip(certificate, ip):
        raise TlsError(
            f"the certificate in {directory} is not this cluster authority's or is not for "
            f"{ip}: {fix}"
        )
    ends = certificate.not_valid_after_utc
    if ends - (now or datetime.now(UTC)) < RENEW_BEFORE:
        raise TlsError(
            f"the certificate in {directory} ends on {ends:%Y-%m-%d} (expired or within "
            f"{RENEW_BEFORE.days} days): renew it: {certify_fix(ip, datacenter, renew=True)}"
        )
    certified = certified_datacenter(certificate)
    if datacenter is not None and certified != datacenter:
        raise TlsError(
            f"this host is certified for datacenter {certified or '(none)'}, not {datacenter}: "
            + (f"join with --datacenter {certified}, or " if certified else "")
            + certify_fix(ip, datacenter, renew=True)
        )


def certify_fix(ip: str, datacenter: str | None, *, renew: bool = False) -> str:
    """The commands that give a host the certificate it needs."""
    dc = f" --datacenter {datacenter}" if datacenter else ""
    again = " --renew" if renew else ""
    return (
        f"on the head, run `souverain node certify --node-ip-address {ip}{dc} --out <dir>"
        f"{again}`, copy that directory to this host (keeping its modes), give it with "
        "--tls-dir (a controller: SOUVERAIN_RAY_TLS_DIR) and start the node again "
        "(`souverain node stop`, then `souverain node join`)"
    )


def certified_datacenter(certificate: x509.Certificate) -> str | None:
    """The datacenter a node certificate binds its host to (None: a host serving no work)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DATACENTER_URI):
            return uri.removeprefix(DATACENTER_URI)
    return None


def check_this_node_serves(datacenter: str) -> None:
    """On a node, before anything of a tenant is touched: this node's own certificate (the
    one Ray was started with) binds it to `datacenter`. Nothing to check without Ray's TLS."""
    path = os.environ.get("RAY_TLS_SERVER_CERT")
    if os.environ.get("RAY_USE_TLS") != "1" or not path:
        return
    certified = certified_datacenter(x509.load_pem_x509_certificate(Path(path).read_bytes()))
    if certified != datacenter:
        raise TlsError(
            f"this node is certified for datacenter {certified or '(none)'}, not {datacenter}: "
            "it starts no work of that datacenter"
        )


def _certified_datacenter_in(tls: TlsDir) -> str | None:
    certificate = _node_certificate(tls)
    return None if certificate is None else certified_datacenter(certificate)


def _node_certificate(tls: TlsDir) -> x509.Certificate | None:
    """The directory's node certificate, when its authority issued it."""
    try:
        ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
        certificate = x509.load_pem_x509_certificate(tls.node_cert.read_bytes())
        certificate.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    return certificate


def _names_ip(certificate: x509.Certificate, ip: str) -> bool:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return ipaddress.ip_address(ip) in names.value.get_values_for_type(x509.IPAddress)


def _valid_for(tls: TlsDir, ip: str, *, now: datetime | None = None) -> bool:
    """The node certificate chains to the directory's authority, is valid now (and for a
    month more) and names `ip`."""
    certificate = _node_certificate(tls)
    if certificate is None:
        return False
    now = now or datetime.now(UTC)
    fresh = certificate.not_valid_before_utc <= now + _BACKDATE and (
        now + RENEW_BEFORE < certificate.not_valid_after_utc
    )
    return fresh and _names_ip(certificate, ip)


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private_dir(directory)


def _check_private_dir(directory: Path) -> None:
    info = os.lstat(directory)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise TlsError(
            f"{directory} is not a private directory of this user: `chmod 700 {directory}`"
        )


def _check_secret_file(path: Path) -> None:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise TlsError(f"{path} is not a regular file of this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise TlsError(f"{path} is readable by others: `chmod 600 {path}`")


# -- peers ----------------------------------------------------------------------------------


def speaks_tls(host: str, port: int, *, timeout_s: float = 5.0) -> bool:
    """Whether the server at host:port answers a TLS ClientHello with a TLS record (a
    server of plain gRPC answers with HTTP/2 or hangs up). Nothing is sent but the hello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        handshake.do_handshake()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(outgoing.read())
        try:
            first = sock.recv(1)
        except OSError:
            return False
    return first == b"\x16"  # a TLS handshake record


def check_peer(host: str, port: int, directory: Path, *, timeout_s: float = 5.0) -> None:
    """A full handshake as a node of this cluster: the server's certificate must be this
    authority's and name `host`, and it must take this host's certificate."""
    tls = TlsDir(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.node_cert), str(tls.node_key))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls_sock,
        ):
            tls_sock.do_handshake()
    except ssl.SSLCertVerificationError as error:
        raise TlsError(
            f"the Ray head at {host}:{port} presented a certificate this cluster's authority "
            f"did not issue for it ({error.verify_message}): the TLS directory is another "
            "cluster's; certify this host again on the head"
        ) from None
