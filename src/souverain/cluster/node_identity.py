"""The controller measures each live node's identity: the certificate its raylet presents on
the node's own address, and the node's clock. `core/node_identity.py` judges them.

The certificate is read by a TLS handshake with the raylet, as a node of the cluster (the
controller's own certificate, verified against the cluster's authority and the node's
address): what the head certified, not what the node declared. It is read again every few
minutes, and at once for a node Ray reports under a new id (a node that rejoined). The
clock is read by a task pinned to the node (no CPU reserved, so a full node answers too);
it runs in the background, and a node stays without work until it has answered.

Only a cluster with Ray's TLS is measured (`souverain controller`); `souverain up`'s
embedded head has one node on the loopback address and nothing to verify.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from cryptography import x509
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from souverain.cluster import ray_tls
from souverain.core.fleet import DATACENTER_LABEL
from souverain.core.node_identity import ClockReading, NodeIdentity

CERTIFICATE_REFRESH_S = 300.0
CERTIFICATE_RETRY_S = 10.0  # after a failed handshake (each may wait 5 s on a silent node)
CLOCK_REFRESH_S = 300.0
CLOCK_GIVE_UP_S = 120.0  # a node that has not answered by then is asked again


def _node_time() -> float:
    return time.time()


_remote_time: Any = ray.remote(num_cpus=0, max_retries=0)(_node_time)


@dataclass
class _Known:
    """What was measured of one node (by its Ray node id)."""

    read_at: float | None = None  # when its certificate was read
    certified_datacenter: str | None = None
    certificate_ends: datetime | None = None
    error: str | None = None
    clock: ClockReading | None = None
    clock_read_at: float = 0.0
    asking: tuple[float, Any] | None = None  # (asked at, the pending reference)


class NodeIdentities:
    def __init__(self, tls_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._tls = ray_tls.TlsDir(tls_dir)
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()  # the controller's loops observe from their own threads

    @classmethod
    def from_ray_environment(cls) -> NodeIdentities | None:
        """The directory this process's Ray TLS files are in; None without Ray's TLS."""
        if os.environ.get("RAY_USE_TLS") != "1" or "RAY_TLS_CA_CERT" not in os.environ:
            return None
        return cls(Path(os.environ["RAY_TLS_CA_CERT"]).parent)

    def measure(self, nodes: list[dict[str, Any]]) -> dict[str, NodeIdentity]:
        """Each alive labelled node's identity as measured so far (node id -> identity); a
        node without a datacenter label gets no work anyway."""
        alive = {
            node["NodeID"]: node
            for node in nodes
            if node.get("Alive") and DATACENTER_LABEL in (node.get("Labels") or {})
        }
        with self._lock:
            for gone in set(self._known) - set(alive):
                del self._known[gone]
            return {node_id: self._measure(node_id, node) for node_id, node in alive.items()}

    def _measure(self, node_id: str, node: dict[str, Any]) -> NodeIdentity:
        known = self._known.setdefault(node_id, _Known())
        now = self._clock()
        every = CERTIFICATE_RETRY_S if known.error else CERTIFICATE_REFRESH_S
        if known.read_at is None or now - known.read_at > every:
            self._read_certificate(node, known)
            known.read_at = now
        self._read_clock(node_id, known, now)
        return NodeIdentity(
            certified_datacenter=known.certified_datacenter,
            certificate_ends=known.certificate_ends,
            clock=known.clock,
            error=known.error,
        )

    def _read_certificate(self, node: dict[str, Any], known: _Known) -> None:
        host, port = str(node.get("NodeManagerAddress", "")), int(node.get("NodeManagerPort", 0))
        try:
            certificate = presented_certificate(host, port, self._tls)
        except (OSError, ValueError) as error:
            known.error = f"its raylet at {host}:{port}: {error}"
            return
        known.error = None
        known.certified_datacenter = ray_tls.certified_datacenter(certificate)
        known.certificate_ends = certificate.not_valid_after_utc

    def _read_clock(self, node_id: str, known: _Known, now: float) -> None:
        if known.asking is not None:
            asked_at, reference = known.asking
            ready, _ = ray.wait([reference], timeout=0)
            if ready:
                known.asking = None
                with contextlib.suppress(Exception):
                    known.clock = ClockReading(asked_at, float(ray.get(reference)), self._clock())
                    known.clock_read_at = now
            elif now - asked_at > CLOCK_GIVE_UP_S:
                known.asking = None
                with contextlib.suppress(Exception):
                    ray.cancel(reference, force=True)
        stale = known.clock is None or now - known.clock_read_at > CLOCK_REFRESH_S
        if known.asking is None and stale:
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            reference = _remote_time.options(scheduling_strategy=strategy).remote()
            known.asking = (self._clock(), reference)


def presented_certificate(host: str, port: int, tls: ray_tls.TlsDir) -> x509.Certificate:
    """The certificate a node's gRPC server presents, once it has proved to be the cluster
    authority's and for `host`; the handshake is made as a node of the cluster."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.node_cert), str(tls.node_key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls_sock,
    ):
        der = tls_sock.getpeercert(binary_form=True)
    if der is None:
        raise ValueError("no certificate presented")
    return x509.load_der_x509_certificate(der)
