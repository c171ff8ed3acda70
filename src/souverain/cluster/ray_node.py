"""Start this host's Ray node the one way souverain supports: `souverain node head` and
`souverain node join`.

Every node starts with: the head's explicit address, this host's private address
(`--node-ip-address`), its datacenter label, token authentication on (the token read from
a 0600 file whose path Ray is given, never the token in argv or the environment), Ray's
TLS on every gRPC connection (`cluster/ray_tls.py`: a certificate for this host's address
from the cluster's authority, mutual), usage statistics off, no dashboard, engines at normal CPU priority (`RAY_worker_niceness=0`) and
its session files in a private directory (Ray makes its temp directory 0777; it lives
inside a 0700 one here, and what Ray opened is closed again after the start).

Everything that can be checked is checked before anything starts, each refusal naming its
fix: an address that is not this host's, a port already taken (a second head), a node
already running here, a missing or too-open token file or TLS directory, a head that cannot
be reached, speaks no TLS or another authority's, refuses the token or needs none. If Ray
fails after all, what it started is stopped: nothing is left half-started.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from souverain.cluster import ray_tls
from souverain.cluster.probe import REFUSED
from souverain.core.fleet import DATACENTER_LABEL
from souverain.node import scratch
from souverain.node.node_dir import node_dir

DEFAULT_PORT = 6379
JOIN_TIMEOUT_S = 30.0


class NodeError(RuntimeError):
    """A node could not start; the message names the fix."""


@dataclass(frozen=True)
class NodePlan:
    """What `ray start` is given on this host."""

    node_ip: str
    token_file: Path
    node_dir: Path  # private (0700): Ray's temp directory is inside it
    datacenter: str | None = None
    cpus: int | None = None
    gpus: int | None = None
    tls_dir: Path | None = None  # None: this host's default (`default_tls_dir`)

    @property
    def temp_dir(self) -> Path:
        return ray_temp_dir(self.node_dir)

    @property
    def tls(self) -> Path:
        return self.tls_dir or default_tls_dir()


def ray_temp_dir(node_dir: Path) -> Path:
    """Ray's own temp directory, which Ray makes 0777, inside the private one."""
    return node_dir / "ray"


def default_token_file() -> Path:
    return node_dir("ray") / "auth_token"


def default_tls_dir() -> Path:
    """This host's Ray TLS directory (the head's holds the cluster's authority too)."""
    return node_dir("ray") / "tls"


def default_node_dir() -> Path:
    """Short, since Ray's socket paths must fit in 107 bytes."""
    return Path(tempfile.gettempdir()) / f"souverain-ray-{os.getuid()}" / "node"


_TLS_VARIABLES = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def ray_environment(token_file: Path, tls_dir: Path | None = None) -> dict[str, str]:
    """This process's environment for Ray: token authentication from the file, TLS from
    this host's directory (paths only), no usage statistics, workers at normal priority; no
    token, no `auto` address and no other TLS files inherited."""
    dropped = ("RAY_AUTH_TOKEN", "RAY_ADDRESS", *_TLS_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",
    }
    if tls_dir is not None:
        env |= ray_tls.ray_tls_environment(tls_dir)
    return env


# -- checks ------------------------------------------------------------------------------


def check_own_address(ip: str) -> None:
    try:
        with socket.socket(_family(ip), socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
    except OSError as error:
        raise NodeError(
            f"{ip} is not an address of this host ({error.strerror}): give "
            "--node-ip-address this host's private address"
        ) from None


def check_port_free(port: int) -> None:
    """Ray's GCS listens on every address of the host: any listener on the port stops it."""
    for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's GCS does
            try:
                sock.bind((wildcard, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise NodeError(
                        f"port {port} is already in use on this host (a Ray head already "
                        "running, or another service): stop it (`souverain node stop`) or "
                        "give --port another port"
                    ) from None


def check_token_file(path: Path) -> None:
    fix = (
        "copy the token file `souverain node head` made on the head to this host, "
        "`chmod 600` it, and give it with --token-file"
    )
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise NodeError(f"no Ray token file at {path}: {fix}") from None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise NodeError(f"{path} is not a regular file of this user: {fix}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise NodeError(f"{path} is readable by others: `chmod 600 {path}`")
    if info.st_size == 0:
        raise NodeError(f"{path} is empty: {fix}")


def ensure_token_file(path: Path) -> bool:
    """The cluster's token, made once (0600) on the head. True when made now."""
    if path.exists():
        check_token_file(path)
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return True


def check_not_running(node_dir: Path) -> None:
    if _processes_under(ray_temp_dir(node_dir)):
        raise NodeError(
            f"a Ray node already runs on this host (in {node_dir}): "
            f"`souverain node stop --temp-dir {node_dir}` first"
        )


def probe(
    address: str, token_file: Path | None, tls_dir: Path | None = None
) -> tuple[int, list[dict[str, object]]]:
    """(exit code, alive nodes) of asking the head's GCS, with the token or without any,
    with this host's TLS certificate or without any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token_file is None:
        env |= {"RAY_AUTH_MODE": "disabled", "HOME": tempfile.gettempdir() + "/nonexistent"}
    else:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    if tls_dir is not None:
        env |= ray_tls.ray_tls_environment(tls_dir)
    env["RAY_py_gcs_connect_timeout_s"] = "5"  # a refused handshake fails in seconds, not 40
    done = subprocess.run(
        [sys.executable, "-m", "souverain.cluster.probe", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    nodes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, nodes


def check_head(address: str, token_file: Path, tls_dir: Path) -> None:
    """The head is there, speaks TLS with this cluster's authority, takes this token, and
    takes nothing without one."""
    _check_reachable(address)
    _check_head_tls(address, tls_dir)
    code, _ = probe(address, token_file, tls_dir)
    if code == REFUSED:
        raise NodeError(
            f"the Ray head at {address} refused this token ({token_file}): copy the head's "
            "token file again (it is the one `souverain node head` printed)"
        )
    if code != 0:
        raise NodeError(
            f"the Ray head at {address} did not answer: check --address, and that the TLS "
            f"directory ({tls_dir}) was certified by this head"
        )
    if probe(address, None, tls_dir)[0] != REFUSED:
        raise NodeError(
            f"the Ray cluster at {address} accepts clients without a token: restart its head "
            "with `souverain node head`"
        )


def check_tls_dir(tls_dir: Path, ip: str, datacenter: str | None = None) -> None:
    """This host's certificate is for its address and the datacenter it declares."""
    try:
        ray_tls.check_node_dir(tls_dir, ip, datacenter)
    except ray_tls.TlsError as error:
        raise NodeError(str(error)) from None


def _check_head_tls(address: str, tls_dir: Path) -> None:
    """The head answers in TLS, with a certificate of this authority for its address."""
    host, port = _split(address)
    try:
        encrypted = ray_tls.speaks_tls(host, port)
        if encrypted:
            ray_tls.check_peer(host, port, tls_dir)
    except ray_tls.TlsError as error:
        raise NodeError(str(error)) from None
    except OSError as error:
        raise NodeError(
            f"the Ray head at {address} ended the TLS handshake ({error}): certify this host "
            "on the head again (`souverain node certify`)"
        ) from None
    if not encrypted:
        raise NodeError(
            f"the Ray cluster at {address} does not encrypt its traffic (no TLS): restart its "
            "head with `souverain node head`"
        )


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise NodeError(
            f"cannot reach the Ray head at {address} ({reason}): check --address (the head's "
            "private address and port, as `souverain node head` printed them) and that the "
            "firewall lets this host reach it"
        ) from None


# -- starting and stopping -----------------------------------------------------------------


def start_head(plan: NodePlan, *, port: int = DEFAULT_PORT) -> str:
    check_own_address(plan.node_ip)
    check_not_running(plan.node_dir)
    check_port_free(port)
    ensure_token_file(plan.token_file)
    try:
        ray_tls.ensure_head(plan.tls, plan.node_ip, plan.datacenter)
    except ray_tls.TlsError as error:
        raise NodeError(str(error)) from None
    scratch.sweep()  # plaintext a killed actor left in memory before this start
    address = _address(plan.node_ip, port)
    with _stopped_on_failure(plan.node_dir):
        _ray_start(plan, ["--head", "--port", str(port)])
        _wait_for_node(address, plan)
    return address


def certify(
    authority_dir: Path,
    ip: str,
    out_dir: Path,
    datacenter: str | None = None,
    *,
    renew: bool = False,
) -> None:
    """On the head: a TLS directory for the host at `ip` of `datacenter` (never the
    authority's key); with `renew`, a new certificate into the directory made before."""
    if out_dir.exists() and not renew:
        raise NodeError(
            f"{out_dir} already exists: give --out a new directory, or --renew to issue a new "
            "certificate into it"
        )
    if renew and not ray_tls.TlsDir(out_dir).node_cert.is_file():
        raise NodeError(f"{out_dir} holds no certificate to renew: certify without --renew")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise NodeError(f"{ip} is not an IP address: give the host's private address") from None
    try:
        ray_tls.issue(authority_dir, ip, out_dir, datacenter)
    except ray_tls.TlsError as error:
        raise NodeError(str(error)) from None


def join(plan: NodePlan, *, address: str) -> None:
    check_own_address(plan.node_ip)
    check_not_running(plan.node_dir)
    check_token_file(plan.token_file)
    check_tls_dir(plan.tls, plan.node_ip, plan.datacenter)
    check_head(address, plan.token_file, plan.tls)
    scratch.sweep()  # plaintext a killed actor left in memory before this start
    with _stopped_on_failure(plan.node_dir):
        _ray_start(plan, ["--address", address])
        _wait_for_node(address, plan)


@contextlib.contextmanager
def _stopped_on_failure(node_dir: Path) -> Iterator[None]:
    """Nothing half-started: whatever fails once Ray was asked to start stops it again."""
    try:
        yield
    except BaseException:
        stop(node_dir)
        raise


def stop(node_dir: Path) -> int:
    """Stop the Ray processes of the node whose files are in `node_dir` (and no other Ray
    of this host); the number stopped."""
    found = _processes_under(ray_temp_dir(node_dir))
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(found, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(found)


def _ray_start(plan: NodePlan, role: list[str]) -> None:
    check_private_dir(plan.node_dir)
    args = [
        str(Path(sys.executable).with_name("ray")), "start", *role,
        "--node-ip-address", plan.node_ip,
        "--temp-dir", str(plan.temp_dir),  # inside the private node_dir
        "--disable-usage-stats",
    ]  # fmt: skip
    if "--head" in role:
        args.append("--include-dashboard=false")
    if plan.datacenter:
        args += ["--labels", f"{DATACENTER_LABEL}={plan.datacenter}"]
    if plan.cpus is not None:
        args += ["--num-cpus", str(plan.cpus)]
    if plan.gpus is not None:
        args += ["--num-gpus", str(plan.gpus)]
    done = subprocess.run(
        args,
        env=ray_environment(plan.token_file, plan.tls),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise NodeError(f"Ray did not start (nothing is left running):\n{tail}")
    _close_up(plan.temp_dir)


def _wait_for_node(address: str, plan: NodePlan) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        code, nodes = probe(address, plan.token_file, plan.tls)
        if code == 0 and any(_is_this_node(node, plan) for node in nodes):
            return
        time.sleep(0.5)
    raise NodeError(
        f"this node did not appear in the cluster at {address} within {JOIN_TIMEOUT_S:.0f}s "
        "(stopped again): check that the head can reach this host's address"
    )


def _is_this_node(node: dict[str, object], plan: NodePlan) -> bool:
    labels = node.get("labels")
    label = labels.get(DATACENTER_LABEL) if isinstance(labels, dict) else None
    return node.get("address") == plan.node_ip and label == plan.datacenter


def check_private_dir(base: Path) -> None:
    """The node's directory is this user's alone (made 0700 when missing, and so is a
    missing parent); one that is not is refused, never changed: it may be a shared one
    such as /tmp itself. Its parent must be this user's or root's, and writable by others
    only with the sticky bit (as /tmp): otherwise another user could swap the directory
    for one of theirs after this check."""
    with contextlib.suppress(FileExistsError):
        base.parent.mkdir(parents=True, mode=0o700)
    _check_parent(base.parent)
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = os.lstat(base)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise NodeError(
            f"{base} is not a private directory of this user (0700): give --temp-dir a "
            "directory of its own (souverain makes it when missing)"
        )


def _check_parent(parent: Path) -> None:
    info = os.stat(parent)
    shared = stat.S_IMODE(info.st_mode) & 0o022 and not info.st_mode & stat.S_ISVTX
    if info.st_uid not in (os.getuid(), 0) or shared:
        raise NodeError(
            f"{parent} may be changed by other users: give --temp-dir a directory inside one "
            f"that only this user (or root) may change, or `chmod 700 {parent}`"
        )


def _close_up(temp_dir: Path) -> None:
    """Ray makes its temp and session directories 0777: this user's only again."""
    for directory in _directories(temp_dir):
        with contextlib.suppress(OSError):
            info = os.lstat(directory)
            if stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
                os.chmod(directory, 0o700)


def _directories(root: Path) -> Iterator[Path]:
    yield root
    for parent, names, _files in os.walk(root):
        for name in names:
            yield Path(parent) / name


def _processes_under(temp_dir: Path) -> list[psutil.Process]:
    """Ray's processes name their session directory (inside `temp_dir`) or `--x=temp_dir`
    in their arguments; the command that started them, or this one, names it bare."""
    marker = str(temp_dir)
    ours = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        ray = any(f"{marker}/" in part or part.endswith(f"={marker}") for part in cmdline)
        if ray and process.pid not in ours:
            found.append(process)
    return found


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
