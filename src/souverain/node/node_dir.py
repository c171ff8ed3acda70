"""This node's private directory: engine logs, the verified-checksum cache, and what is
decrypted for work on this node (training jobs' data, served models' adapters), each in a
directory naming its owner's pid so that what a killed owner left is swept.

Never the shared temporary directory, where another local user could plant a symlink at a
predictable name and have root write through it, or poison the cache so that a tampered
model passes as verified. The directory is 0700, owned by this user and not a symlink;
files in it are 0600, written to a fresh name (O_EXCL) and renamed into place, and opened
with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from platformdirs import user_state_dir


class UnsafeDirectory(RuntimeError):
    pass


def node_dir(*parts: str) -> Path:
    """`SOUVERAIN_NODE_DIR` (default: the user's state directory) / parts, made private."""
    base = Path(os.environ.get("SOUVERAIN_NODE_DIR") or user_state_dir("souverain"))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = base
    for part in ("node", *parts):
        path = path / part
        path.mkdir(exist_ok=True, mode=0o700)
        private(path)
    return path


def private(path: Path) -> Path:
    """Check that `path` is a real directory of ours, and make it 0700."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a plain directory")
    if info.st_uid != os.getuid():
        raise UnsafeDirectory(f"{path} belongs to another user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def read_private(path: Path) -> bytes | None:
    """The file's bytes, or None if it is missing; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_private(path: Path, data: bytes) -> None:
    """Replace the file atomically: a new 0600 file with an unguessable name, then rename."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def open_log(path: Path) -> int:
    """An append-only 0600 log file descriptor, never through a symlink."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
