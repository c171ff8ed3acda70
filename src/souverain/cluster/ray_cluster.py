"""The controller's view of Ray: observe nodes, start, probe and stop replica actors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from souverain.cluster import ray_node
from souverain.cluster.node_identity import NodeIdentities
from souverain.cluster.replica_actor import ReplicaActor
from souverain.cluster.training_actor import TrainingActor
from souverain.core.fleet import (
    DATACENTER_LABEL,
    RAY_NAMESPACE,
    AdapterChange,
    HostedAdapter,
    ObservedNode,
    ReplicaSpec,
    ReplicaStatus,
    TrainingSpec,
    TrainingStatus,
    unanswered_status,
)
from souverain.core.node_identity import why_untrusted

log = logging.getLogger(__name__)

WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by each raylet when it starts
NODE_ID_LABEL = "ray.io/node-id"  # every node's, set by Ray
CHANGE_TIMEOUT_S = 120.0  # a shared replica decrypts, checks and loads its new adapters

_RemoteReplica: Any = ray.remote(ReplicaActor)
_RemoteTraining: Any = ray.remote(TrainingActor)


class RayCluster:
    """Synchronous calls, which the controller runs in a worker thread, and one long poll."""

    def __init__(self, identities: NodeIdentities | None = None) -> None:
        self._handles: dict[str, Any] = {}  # actor name -> handle (valid across restarts)
        self._identities = identities  # None: nodes' identities are not measured

    def observe_nodes(self) -> list[ObservedNode]:
        """Every node Ray knows; an alive one whose identity fails its checks carries why."""
        available = _available_per_node()
        listed = ray.nodes()
        identities = self._identities.measure(listed) if self._identities else {}
        now = datetime.now(UTC)
        nodes = []
        for node in listed:
            node_id = node["NodeID"]
            labels = {str(k): str(v) for k, v in (node.get("Labels") or {}).items()}
            identity = identities.get(node_id)
            resources = {
                k: float(v)
                for k, v in node.get("Resources", {}).items()
                if not k.startswith("node:")
            }
            nodes.append(
                ObservedNode(
                    id=node_id,
                    address=node.get("NodeManagerAddress", ""),
                    alive=bool(node.get("Alive")),
                    resources=resources,
                    available=available.get(node_id, {}),
                    labels=labels,
                    refusal=None
                    if identity is None
                    else why_untrusted(labels.get(DATACENTER_LABEL), identity, now),
                )
            )
        return nodes

    def start_replica(self, spec: ReplicaSpec) -> None:
        options: dict[str, Any] = {
            "name": spec.actor_name,
            "namespace": RAY_NAMESPACE,
            "lifetime": "detached",
            "label_selector": label_selector(spec.datacenter_id, spec.avoid_nodes),
            "num_cpus": spec.cpus,
            "num_gpus": spec.gpus,
            "max_restarts": -1,
            "max_concurrency": 8,  # a long poll, status, stop and energy reads at once
        }
        _RemoteReplica.options(**options).remote(spec)

    def replica_status(self, actor_name: str, timeout_s: float = 5.0) -> ReplicaStatus | None:
        """None when the actor does not exist (any more)."""
        actor = _find_actor(actor_name)
        if actor is None:
            return None
        try:
            status: ReplicaStatus = ray.get(actor.status.remote(), timeout=timeout_s)
        except (GetTimeoutError, ActorUnavailableError):
            return unanswered_status()
        except RayActorError:
            return None  # dead for good
        return status

    async def watch_replica(
        self, actor_name: str, version: int, timeout_s: float
    ) -> ReplicaStatus | None:
        """The replica's status once newer than `version` (or after `timeout_s`); None when
        the actor does not exist any more. A restarting actor answers `starting`."""
        actor = self._handles.get(actor_name) or await asyncio.to_thread(_find_actor, actor_name)
        if actor is None:
            return None
        self._handles[actor_name] = actor
        try:
            status: ReplicaStatus = await asyncio.wait_for(
                actor.watch.remote(version, timeout_s), timeout=timeout_s + 10
            )
        except (TimeoutError, ActorUnavailableError, RayActorError):
            if await asyncio.to_thread(_find_actor, actor_name) is None:
                self._handles.pop(actor_name, None)
                return None
            return unanswered_status()
        return status

    def engine_pid(self, actor_name: str) -> int | None:
        actor = _find_actor(actor_name)
        return None if actor is None else ray.get(actor.engine_pid.remote(), timeout=10)

    def change_adapters(
        self, actor_name: str, wanted: tuple[HostedAdapter, ...]
    ) -> AdapterChange | None:
        """What a shared replica did when asked to hold `wanted`; None when it could not
        answer now (gone, not serving): the controller asks again next round."""
        actor = _find_actor(actor_name)
        if actor is None:
            return None
        try:
            method = actor.change_adapters
        except AttributeError:  # an actor of an earlier souverain: it is replaced instead
            return AdapterChange(runtime_load=False)
        try:
            change: AdapterChange = ray.get(method.remote(wanted), timeout=CHANGE_TIMEOUT_S)
        except Exception as error:  # not serving, restarting, timed out
            log.warning("replica %s did not change its adapters: %s", actor_name, error)
            return None
        return change

    def stop_replica(self, actor_name: str) -> None:
        actor = _find_actor(actor_name)
        if actor is None:
            return
        with contextlib.suppress(Exception):
            ray.get(actor.stop.remote(), timeout=15)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    def replica_actor_names(self) -> list[str]:
        names = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") == RAY_NAMESPACE and entry["name"].startswith(
                "souverain-replica-"
            ):
                names.append(entry["name"])
        return names

    # -- training jobs -------------------------------------------------------------------

    def start_training(self, spec: TrainingSpec) -> None:
        _RemoteTraining.options(
            name=spec.actor_name,
            namespace=RAY_NAMESPACE,
            lifetime="detached",
            label_selector=label_selector(spec.datacenter_id, spec.avoid_nodes),
            num_cpus=spec.cpus,
            num_gpus=spec.gpus,
            max_restarts=0,  # the controller resumes from the last checkpoint instead
            max_concurrency=4,
        ).remote(spec)

    def training_status(
        self, actor_name: str, after_seq: int, timeout_s: float = 10.0
    ) -> TrainingStatus | None:
        """None when the actor does not exist (any more); `starting` while it is created."""
        actor = _find_actor(actor_name)
        if actor is None:
            return None
        try:
            status: TrainingStatus = ray.get(actor.status.remote(after_seq), timeout=timeout_s)
        except (GetTimeoutError, ActorUnavailableError):
            return TrainingStatus(state="starting", node_id=None)
        except RayActorError:
            return None
        return status

    def signal_training(
        self, actor_name: str, what: str, energy_limit_j: float | None = None
    ) -> None:
        """`pause` (checkpoint, then stop; stopped at once at `energy_limit_j`) or
        `cancel` (stop now)."""
        actor = _find_actor(actor_name)
        if actor is not None:
            with contextlib.suppress(Exception):
                call = (
                    actor.pause.remote(energy_limit_j) if what == "pause" else actor.cancel.remote()
                )
                ray.get(call, timeout=10)

    def training_worker_pid(self, actor_name: str) -> int | None:
        actor = _find_actor(actor_name)
        return None if actor is None else ray.get(actor.worker_pid.remote(), timeout=10)

    def stop_training(self, actor_name: str) -> None:
        actor = _find_actor(actor_name)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def training_actor_names(self) -> list[str]:
        return [
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == RAY_NAMESPACE
            and entry["name"].startswith("souverain-training-")
        ]


def label_selector(datacenter_id: str, avoid_nodes: tuple[str, ...] = ()) -> dict[str, str]:
    """Ray starts the actor only on a node of this datacenter, and never on a node the
    controller refused (its label not certified, its clock off): Ray picks among the nodes
    carrying the label, and a node's label is its own word."""
    selector = {DATACENTER_LABEL: datacenter_id}
    if avoid_nodes:
        selector[NODE_ID_LABEL] = f"!in({','.join(avoid_nodes)})"
    return selector


def _find_actor(actor_name: str) -> Any:
    try:
        return ray.get_actor(actor_name, namespace=RAY_NAMESPACE)
    except ValueError:
        return None


def _available_per_node() -> dict[str, dict[str, float]]:
    with contextlib.suppress(Exception):
        state = ray._private.state.state  # per-node availability; no public API offers it
        return {
            node_id: {k: float(v) for k, v in resources.items() if not k.startswith("node:")}
            for node_id, resources in state.available_resources_per_node().items()
        }
    return {}


class ClusterRefused(RuntimeError):
    """The Ray cluster given is not one souverain may drive; the message names the fix."""


def explicit_address(address: str | None) -> str:
    """The head's host:port. `auto` would attach to whatever Ray runs on this host, maybe
    another cluster: refused, as is no address at all."""
    if not address or address.strip().lower() in ("auto", "localhost"):
        raise ClusterRefused(
            "set SOUVERAIN_RAY_ADDRESS to the Ray head's private host:port (as `souverain node "
            "head` printed it); 'auto' could attach to another cluster on this host"
        )
    return address.strip()


def missing_token_environment(
    token_file: Path | None, tls_dir: Path | None = None
) -> dict[str, str] | None:
    """The environment this process must be started with to join an authenticated
    cluster, or None when it has it. Ray reads its authentication mode once, when its
    library loads, so setting it later in the same process changes nothing; its TLS
    files (paths) go along, when this host has them."""
    tls = tls_dir or ray_node.default_tls_dir()
    wanted = ray_node.ray_environment(
        token_file or ray_node.default_token_file(), tls if tls.is_dir() else None
    )
    names = (
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN_PATH",
        *(k for k in wanted if k.startswith("RAY_TLS") or k == "RAY_USE_TLS"),
    )
    return None if all(os.environ.get(k) == wanted[k] for k in names) else wanted


def connect_authenticated(
    address: str, *, token_file: Path | None, tls_dir: Path | None = None
) -> None:
    """Join the cluster at `address` as its driver, with its token and this host's TLS
    certificate (the driver serves gRPC too, on the address that routes to the head); a
    cluster that takes clients without a token, or speaks no TLS, is refused before
    anything is sent to it."""
    if ray.is_initialized():
        return
    token = token_file or ray_node.default_token_file()
    tls = tls_dir or ray_node.default_tls_dir()
    try:
        ray_node.check_token_file(token)
        ray_node.check_tls_dir(tls, source_address(address))
        ray_node.check_head(address, token, tls)
    except ray_node.NodeError as error:
        raise ClusterRefused(str(error)) from None
    os.environ.update(ray_node.ray_environment(token, tls))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False, configure_logging=False)
    protect_token_file()


def source_address(address: str) -> str:
    """This host's address on the route to the head, which Ray takes as the driver's."""
    host = address.rpartition(":")[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))  # nothing is sent: it only picks the route
        return str(sock.getsockname()[0])


def attach_test_cluster(address: str) -> None:
    """A `ray.cluster_utils.Cluster` of the test suite, as its driver, unchecked. Never a
    production path: `souverain controller` and `up` go through `connect_authenticated`."""
    if not ray.is_initialized():
        ray.init(
            address=address, namespace=RAY_NAMESPACE, log_to_driver=False, configure_logging=False
        )


def start_embedded(*, labels: dict[str, str], num_cpus: int | None) -> None:
    """`souverain up`'s own head: the local datacenter's label, its files in a private
    directory, its processes on the loopback address, no dashboard, no usage statistics."""
    if ray.is_initialized():
        return
    loopback_only()
    serving_priority()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        namespace=RAY_NAMESPACE,
        labels=labels,
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=str(private_temp_dir()),
    )
    protect_token_file()


def serving_priority() -> None:
    """Ray starts its workers at niceness 15, and an engine started by a replica actor
    inherits it: below the API server and every other process in the CPU scheduler, so on
    a CPU node each token the gateway relays preempted the engine's decoding threads
    (measured: a lone stream straight to the replica 77.6 tokens/s at 15, 82.7 at 0, plain
    llama-server 79-84). Workers of an embedded head run at 0; training workers lower
    themselves (`node/training_job.py`). Nodes joined with `ray start` need
    `RAY_worker_niceness=0` in its environment (the README's join command has it)."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")


def loopback_only() -> None:
    """An embedded head is a one-machine cluster: every Ray process listens on the loopback
    address only. Ray binds its servers to the node's address, and takes the loopback
    address as the node's when single-machine mode is on (the mode it uses on macOS and
    Windows), which this switches on for this process and the ones Ray starts."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False


def private_temp_dir() -> Path:
    """Ray's session files (sockets, logs, ports) inside a 0700 directory of this user: Ray
    makes its own temp directory 0777, so that one is a child of the private one."""
    private_dir = Path(tempfile.gettempdir()) / f"souverain-ray-{os.getuid()}" / "up"
    try:
        ray_node.check_private_dir(private_dir)
    except ray_node.NodeError as error:
        raise ClusterRefused(str(error)) from None
    return ray_node.ray_temp_dir(private_dir)


def protect_token_file() -> None:
    """Ray's cluster token, readable by this user only."""
    token = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if token.is_file() and not token.is_symlink() and token.stat().st_uid == os.getuid():
            os.chmod(token.parent, 0o700)
            os.chmod(token, 0o600)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def datacenter_labels(datacenter_id: str) -> dict[str, str]:
    return {DATACENTER_LABEL: datacenter_id}
