"""The controller reads a node's certified datacenter from the certificate its server
presents on the node's address, as a node of the cluster: a certificate of another
authority is not taken for the node's (nor one for another address: the handshake checks
the address dialled, which `tests/cluster/test_ray_certificates.py` shows each certificate
names)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from souverain.cluster import ray_node, ray_tls
from souverain.cluster.node_identity import presented_certificate

HERE = "127.0.0.1"


@contextlib.contextmanager
def tls_server(directory: Path) -> Iterator[int]:
    """A server presenting `directory`'s certificate and demanding a client certificate of
    its authority, as Ray's gRPC servers do; its port."""
    tls = ray_tls.TlsDir(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls.node_cert), str(tls.node_key))
    context.load_verify_locations(cafile=str(tls.ca_cert))
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server((HERE, 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                with (
                    contextlib.suppress(OSError),
                    context.wrap_socket(connection, server_side=True),
                ):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(5)


class TestPresentedCertificate:
    def test_the_certified_datacenter_is_read_from_the_node_itself(self, tmp_path: Path) -> None:
        head, node, controller = tmp_path / "head", tmp_path / "node", tmp_path / "controller"
        ray_tls.ensure_head(head, "10.24.0.1")
        ray_node.certify(head, HERE, node, "fra1")
        ray_node.certify(head, HERE, controller)
        with tls_server(node) as port:
            certificate = presented_certificate(HERE, port, ray_tls.TlsDir(controller))
        assert ray_tls.certified_datacenter(certificate) == "fra1"

    def test_another_authoritys_certificate_is_refused(self, tmp_path: Path) -> None:
        head, foreign, controller = tmp_path / "head", tmp_path / "foreign", tmp_path / "ctl"
        ray_tls.ensure_head(head, "10.24.0.1")
        ray_tls.ensure_head(foreign, HERE, "fra1")  # another cluster's node for this address
        ray_node.certify(head, HERE, controller)
        with tls_server(foreign) as port, pytest.raises(ssl.SSLCertVerificationError):
            presented_certificate(HERE, port, ray_tls.TlsDir(controller))
