"""How a supervisor reaches its engine: a free port on the node's private address, the
engine's URL, and a client that checks the engine as the gateway does.

An engine serves HTTPS with the replica's own certificate. The client trusts only the
installation's authority and asks for the replica's name (TLS 1.3); an engine whose
certificate is refused (expired, foreign, another replica's) or that answers in clear is
not to be restarted (the next start would present the same), and `tls_refusal` tells
those errors from the transient ones of an engine that starts or dies.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx

from souverain.core.fleet import ReplicaSpec
from souverain.core.tls import client_context
from souverain.node.engines.base import TlsFiles
from souverain.node.secret import write_secret_file


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def url_for(host: str, port: int, *, tls: bool = True) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# What OpenSSL says when the other end answers a TLS hello with something else (plain HTTP).
# Any other TLS error (an engine closing mid-handshake as it starts or dies) is transient:
# the probe tries again, and a restart is worth it.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)


def tls_refusal(error: BaseException) -> str | None:
    """Why the engine's TLS was refused, if that is what `error` comes from."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the engine's certificate was refused: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS:
            return f"the engine does not speak TLS as required: {cause.reason}"
        cause = cause.__cause__ or cause.__context__
    return None


def tls_files(spec: ReplicaSpec, scratch: Path) -> TlsFiles | None:
    """The replica's key and certificate as 0600 files in its memory-backed scratch, for
    the engine to load as it starts (None: the engine serves in clear)."""
    credential = spec.tls
    if credential is None:
        return None
    files = TlsFiles(scratch / "engine.crt", scratch / "engine.key")
    write_secret_file(files.certificate, credential.certificate)
    write_secret_file(files.key, credential.key)
    return files


def engine_client(spec: ReplicaSpec, timeout: httpx.Timeout | float) -> httpx.Client:
    """A client that checks the engine as the gateway does."""
    credential = spec.tls
    verify = client_context(credential.authority) if credential is not None else True
    return httpx.Client(timeout=timeout, verify=verify)


def post(spec: ReplicaSpec, client: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
    """A POST to the engine, naming the replica in the TLS hello when it serves HTTPS."""
    extensions = {"sni_hostname": spec.server_name} if spec.tls else {}
    return client.post(url, extensions=extensions, **kwargs)  # type: ignore[arg-type]
