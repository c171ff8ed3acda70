"""What an engine's chat template adds to a prompt, measured once per engine and model file
on this node and kept in the node's private directory (node/node_dir.py).

Measuring takes two requests to a ready engine (a tenth of a start from zero on a CPU
node); the answer depends only on the model file (its template and tokenizer), the
engine's program and its arguments, so a later replica of the same model on this node
reads it instead. The key names the model file and the engine's program by path, size,
modification time and inode (a rebuilt engine or a replaced model file is measured
again), with the launcher and the deployment's engine arguments (a chat template given
there changes the answer). Nothing of a tenant is kept: two integers per key, for the
newest 256 keys.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.artifacts import file_marker
from souverain.node.engines.base import EngineLauncher
from souverain.node.node_dir import node_dir, read_private, write_private

CACHE_FILE = "chat-template-overhead.json"
KEPT = 256  # keys kept, the newest: a node serves far fewer engine and model pairs


def key_of(
    launcher: EngineLauncher, spec: ReplicaSpec, argv: Sequence[str], model_path: Path
) -> str:
    """The cache key of this engine serving this model file with these arguments."""
    program = [_marker(Path(argv[0]))] if argv else []
    if len(argv) > 2 and argv[1] == "-m":  # a Python engine: its module is its program
        found = importlib.util.find_spec(argv[2])
        if found is not None and found.origin:
            program.append(_marker(Path(found.origin)))
    parts = [launcher.name, launcher.runtime, _marker(model_path), program,
             json.dumps(spec.engine_args, sort_keys=True, default=str)]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def known(key: str) -> tuple[int, int] | None:
    """The overhead (fixed, per message) measured before under `key`, if any."""
    value = _read().get(key)
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return value[0], value[1]
    return None


def remember(key: str, overhead: tuple[int, int]) -> None:
    cache = _read()
    cache.pop(key, None)
    cache[key] = list(overhead)  # the newest last
    kept = dict(list(cache.items())[-KEPT:])
    write_private(_path(), json.dumps(kept).encode())


def _read() -> dict[str, object]:
    try:
        cache = json.loads(read_private(_path()) or b"{}")
    except ValueError:
        return {}
    return cache if isinstance(cache, dict) else {}


def _path() -> Path:
    return node_dir() / CACHE_FILE


def _marker(path: Path) -> str:
    try:
        return file_marker(path)
    except OSError:
        return str(path)
