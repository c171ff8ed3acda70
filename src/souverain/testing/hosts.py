"""Several hosts on one Linux machine, for tests that must see a fleet as an operator does.

Each host is a network namespace (`ip netns`) with its own address on a private bridge
in the root namespace, its own HOME, node directory (`SOUVERAIN_NODE_DIR`), memory-backed scratch
(`SOUVERAIN_SCRATCH_DIR`) and temp directory (`TMPDIR`, where Ray keeps its session
files): nothing that real hosts would not
share is shared, and a port taken on one host (Ray's 6379, a server's 8000) is free on
the others. The root namespace keeps the bridge's address; a TCP relay there lets the
hosts reach a service of the root namespace bound to loopback (PostgreSQL in CI).

Every name carries this process's id, so parallel runs never collide, and a run that
crashed is swept by the next one (its process is gone). Teardown always kills every
process of every namespace, then deletes the namespaces and the bridge, also on failure.
Needs root and `ip` (iproute2); `available()` says why not otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PREFIX = "sfh"  # namespaces sfh-<pid>-<host>, bridge sfb<pid>, links sf<pid>h<n>
KEPT_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "SOUVERAIN_LLAMA_SERVER")
SHORT_TMP = Path("/tmp")  # noqa: S108 - Ray's socket paths under a host's temp dir must fit 107 bytes
SHM = Path("/dev/shm")  # noqa: S108 - each host's memory-backed scratch below it, made 0700


def available() -> str | None:
    """None when hosts can be made here, else why not (a reason to skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    return None


def ip_binary() -> str:
    found = shutil.which("ip")
    if found is None:
        raise RuntimeError("`ip` (iproute2) is not installed")
    return found


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run([ip_binary(), *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    """One host: a namespace, an address, and its own private directories."""

    name: str
    namespace: str
    address: str
    link: str  # the root side of its veth pair: down = the host is cut off
    root: Path
    tmp: Path  # short: Ray's socket paths below it must fit in 107 bytes
    scratch: Path  # its memory-backed scratch: real hosts share no /dev/shm
    logs: list[Path] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A login's environment on this host: nothing of another host's."""
        env = {k: os.environ[k] for k in KEPT_ENVIRONMENT if k in os.environ}
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        env |= {
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "SOUVERAIN_NODE_DIR": str(self.home / ".souverain-node"),
            "SOUVERAIN_SCRATCH_DIR": str(self.scratch),
        }
        return env | dict(extra or {})

    def run(
        self, script: str, *, env: Mapping[str, str] | None = None, timeout_s: float = 180
    ) -> tuple[int, str]:
        """(exit code, output) of a bash script run on this host (`-euo pipefail`). What it
        leaves running in the background keeps writing to the run's log, not to a pipe."""
        log = self.root / f"run-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            done = subprocess.run(
                [ip_binary(), "netns", "exec", self.namespace, "bash", "-euo", "pipefail", "-c", script],
                env=self.environment(env), cwd=self.home, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
            )  # fmt: skip
        return done.returncode, log.read_text(errors="replace")

    def pids(self) -> list[int]:
        listed = ip("netns", "pids", self.namespace, check=False)
        return [int(pid) for pid in listed.split()]

    def runs(self, name: str) -> bool:
        """Whether a process of this name runs on this host."""
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).name() == name:
                    return True
        return False

    def kill(self) -> int:
        """The host dies: every process in it is killed at once (SIGKILL)."""
        return _kill(self.pids(), grace_s=0)

    def cut_off(self) -> None:
        ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.link, "up")


class Network:
    """A bridge and hosts on it; a context manager that always tears everything down."""

    def __init__(self, names: Sequence[str], root: Path) -> None:
        self.tag = str(os.getpid())
        self.bridge = f"sfb{self.tag}"
        self.root = root
        subnet = _free_subnet()
        self.prefix = subnet.prefixlen
        addresses = list(subnet.hosts())
        self.bridge_address = str(addresses[-1])
        self.hosts = {
            name: Host(
                name=name,
                namespace=f"{PREFIX}-{self.tag}-{name}",
                address=str(addresses[i]),
                link=f"sf{self.tag}h{i}",
                root=root / name,
                tmp=SHORT_TMP / f"sf{self.tag}h{i}",
                scratch=SHM / f"sf{self.tag}h{i}",
            )
            for i, name in enumerate(names)
        }
        self._relays: list[Relay] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        sweep()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.bridge_address}/{self.prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            for directory in (host.home, host.tmp, host.scratch):
                directory.mkdir(parents=True, mode=0o700)
            ip("netns", "add", host.namespace)
            peer = f"{host.link}p"
            ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.namespace)
            inside = ("netns", "exec", host.namespace, "ip")
            ip(*inside, "link", "set", peer, "name", "eth0")
            ip(*inside, "addr", "add", f"{host.address}/{self.prefix}", "dev", "eth0")
            ip(*inside, "link", "set", "eth0", "up")
            ip(*inside, "link", "set", "lo", "up")
            ip("link", "set", host.link, "master", self.bridge)
            ip("link", "set", host.link, "up")

    def relay(self, target: tuple[str, int]) -> int:
        """A port on the bridge address that forwards to `target` in the root namespace
        (e.g. PostgreSQL on 127.0.0.1): the hosts' way to it."""
        relay = Relay(self.bridge_address, target)
        self._relays.append(relay)
        return relay.port

    def close(self) -> None:
        for relay in self._relays:
            relay.stop()
        _kill([pid for host in self.hosts.values() for pid in _pids_of(host.namespace)])
        for host in self.hosts.values():
            ip("netns", "del", host.namespace, check=False)
            ip("link", "del", host.link, check=False)
            shutil.rmtree(host.tmp, ignore_errors=True)
            shutil.rmtree(host.scratch, ignore_errors=True)
        ip("link", "del", self.bridge, check=False)


def sweep() -> None:
    """Remove what a crashed run left (its process is gone): processes, namespaces, links."""
    alive = {str(pid) for pid in psutil.pids()}
    for name in ip("netns", "list", check=False).split():
        found = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if found and found.group(1) not in alive:
            _kill(_pids_of(name))
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", check=False).splitlines():
        found = re.search(r"^\d+: (sfb?(\d+)(?:h\d+)?)[@:]", line)
        if found and found.group(2) not in alive:
            ip("link", "del", found.group(1), check=False)
    for leftover in [*SHORT_TMP.glob("sf*h*"), *SHM.glob("sf*h*")]:
        found = re.fullmatch(r"sf(\d+)h\d+", leftover.name)
        if found and found.group(1) not in alive:
            shutil.rmtree(leftover, ignore_errors=True)


def _pids_of(namespace: str) -> list[int]:
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def _kill(pids: list[int], grace_s: float = 5.0) -> int:
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    if grace_s > 0:
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        _, processes = psutil.wait_procs(processes, timeout=grace_s)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)
    return len(pids)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.77.0.0/16 that no interface of the root namespace uses yet."""
    used = {
        ipaddress.IPv4Interface(address).network
        for address in re.findall(r"inet (\S+)", ip("-4", "-o", "addr", check=False))
    }
    start = os.getpid() % 250
    for offset in range(250):
        subnet = ipaddress.IPv4Network(f"10.77.{(start + offset) % 250}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError("no free /24 in 10.77.0.0/16 for the test hosts")


class Relay:
    """A TCP relay from (address, a free port) to `target`, in a thread of its own."""

    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._pipe_pair, address, 0)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _pipe_pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # the relay stops
            await asyncio.gather(
                _pipe(reader, upstream_writer),
                _pipe(upstream_reader, writer),
                return_exceptions=True,
            )

    def stop(self) -> None:
        async def shut() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.contextmanager
def timed(label: str, into: dict[str, float]) -> Iterator[None]:
    """Record how long a step took (printed by the test, kept for the benchmark note)."""
    started = time.monotonic()
    try:
        yield
    finally:
        into[label] = time.monotonic() - started
