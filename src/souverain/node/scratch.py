"""Memory-backed private scratch: where a tenant's plaintext lives on a node, and only
while it is used.

Decrypted adapters, training files and checkpoints, a replica's TLS key and its engine's
temporary files are written under `SOUVERAIN_SCRATCH_DIR` (default
`/dev/shm/souverain-<uid>`, a tmpfs): none of it reaches a disk, and a host that restarts
has none of it. Each owner (a replica or training actor) claims a 0700 directory named
after what it serves and after its own process (pid and start time). Whoever claims next
first sweeps every directory whose owner process is gone, so a SIGKILLed actor, or a node
whose Ray processes were killed and started again, leaves nothing readable behind once
anything of souverain starts there again; `sweep` also runs when a node starts.

Crypto-erasure reaches these copies too: they exist only while their owner runs, and an
owner is stopped when its organisation's key is erased (a replica's adapter cannot be
decrypted again; a job is cancelled).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import psutil

from souverain.node.node_dir import private

ROOT_ENV = "SOUVERAIN_SCRATCH_DIR"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def root() -> Path:
    """The node's scratch root, made private (0700, ours, not a symlink)."""
    # A shared, predictable path: `private` refuses it unless it is our own real directory.
    base = Path(os.environ.get(ROOT_ENV) or f"/dev/shm/souverain-{os.getuid()}")  # noqa: S108
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private(base)


def claim(kind: str, name: str) -> Path:
    """A fresh private directory for `name`, owned by this process; sweeps first."""
    sweep()
    path = root() / f"{kind}-{_UNSAFE.sub('-', name)}.{_tag(os.getpid())}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def release(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep() -> list[Path]:
    """Delete every directory whose owner process is gone; returns what it deleted."""
    removed = []
    for entry in root().iterdir():
        owner = entry.name.rsplit(".", 1)[-1]
        if owner == _tag_or_empty(owner):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _tag(pid: int) -> str:
    """A process's identity that a recycled pid does not repeat: pid and start time."""
    return f"{pid}-{int(psutil.Process(pid).create_time() * 100)}"


def _tag_or_empty(owner: str) -> str:
    """`owner` again if that process still runs, else ''."""
    pid, _, _ = owner.partition("-")
    try:
        return _tag(int(pid))
    except (ValueError, psutil.Error):
        return ""
