"""The adapters a shared base replica holds: decrypted, checked, and only then loaded.

A shared replica serves its base model and several organisations' fine-tuned models at
once (llama-server's `--lora … --lora-init-without-apply`: every adapter loaded, none
applied unless a request names it). One bad adapter must not take the others down: the
engine refuses to start at all when one `--lora` does not fit the base, so each adapter is
checked here first and a refused one is left out, with its reason, while the replica
starts with the rest.

Checks, in order: the sealed object decrypts and matches its sha256 (node/sealed.py: a
truncated, tampered or corrupt file is never loaded); it is a GGUF LoRA adapter for the
base's architecture; every `….lora_a`/`….lora_b` pair names a tensor of the base with the
shapes that tensor needs (an adapter trained on another base is refused here, not by the
engine). Both read the GGUF headers only (`read_header`).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from souverain.core.fleet import AdapterState, HostedAdapter
from souverain.node.sealed import check_digest, decrypt_to

RUNTIMES = frozenset({"llama-server"})  # the programs that pick an adapter per request

# What the adapter's owner is told (a fixed category: no object id, store error or node
# path reaches a tenant); the detail goes to the node's log, for operators.
UNREADABLE = "the adapter could not be opened or does not match its checksum"
NOT_FOR_BASE = "the file is not a LoRA adapter of this base model"
NO_RUNTIME = "the node's engine cannot serve shared adapters"

log = logging.getLogger(__name__)


def prepare(
    adapters: tuple[HostedAdapter, ...], *, scratch: Path, base: Path, runtime: str
) -> tuple[tuple[HostedAdapter, ...], tuple[AdapterState, ...]]:
    """The adapters to load (each with its clear `path`) and what became of every one."""
    if runtime not in RUNTIMES:  # it would answer with the base model for all of them
        log.warning("%s on this node serves no shared adapters (build llama-server)", runtime)
        return (), tuple(AdapterState(a.model_id, NO_RUNTIME) for a in adapters)
    loaded: list[HostedAdapter] = []
    states: list[AdapterState] = []
    for index, adapter in enumerate(adapters):
        refused = ""
        try:
            path = _clear_path(adapter, scratch / f"adapter-{index}.gguf")
            if detail := fits(path, base):
                log.warning("adapter of %s refused: %s", adapter.model_id, detail)
                refused = NOT_FOR_BASE
        except Exception as error:  # a key erased, an object gone, tampered with, truncated
            log.warning("adapter of %s cannot be read: %s", adapter.model_id, _plain(error))
            refused = UNREADABLE
        if refused:
            states.append(AdapterState(adapter.model_id, refused))
        else:
            # llama-server numbers its `--lora`s in the order given (engines/llama_server.py)
            states.append(AdapterState(adapter.model_id, lora_id=len(loaded)))
            loaded.append(replace(adapter, path=str(path)))
    return tuple(loaded), tuple(states)


def _clear_path(adapter: HostedAdapter, target: Path) -> Path:
    """The adapter in clear at `target`, only if its plaintext matches the grant's sha256
    (a grant without one is refused: nothing is loaded unchecked)."""
    check_digest(adapter.grant)
    target.unlink(missing_ok=True)
    decrypt_to([adapter.grant], target)
    return target


def fits(adapter: Path, base: Path) -> str:
    """Why the engine would refuse `adapter` on `base` ("" when it fits)."""
    try:
        lora_kv, lora = read_header(adapter)
        base_kv, model = read_header(base)
    except (OSError, ValueError, struct.error) as error:
        return f"not a GGUF file: {_plain(error)}"
    if lora_kv.get("general.type") != "adapter" or lora_kv.get("adapter.type") != "lora":
        return "not a GGUF LoRA adapter"
    arch, base_arch = lora_kv.get("general.architecture"), base_kv.get("general.architecture")
    if arch != base_arch:
        return f"an adapter for the {arch!r} architecture, not this base's {base_arch!r}"
    return _shapes_fit(lora, model)


def _shapes_fit(parts: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> str:
    """llama.cpp's own rule: for base weight W (in × out, GGUF order), lora_a is in × r
    and lora_b is r × out."""
    if not parts:
        return "the adapter holds no tensors"
    for name, a in parts.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b, weight = parts.get(target + ".lora_b"), shapes.get(target)
        if weight is None:
            return f"the base has no tensor {target!r}: an adapter of another base"
        if b is None or len(a) != 2 or len(b) != 2 or len(weight) < 2:
            return f"{target!r} is not a LoRA pair"
        if a[0] != weight[0] or b[1] != weight[1] or a[1] != b[0]:
            return f"{target!r} has shapes {a} and {b}, not those of the base's {weight}"
    return ""


# GGUF value types (ggml's gguf.h): their sizes; 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A GGUF file's string metadata and its tensors' shapes, from the header alone. The
    `gguf` package's reader builds every metadata value (a base's 49k-token vocabulary) as
    numpy views: 14 s for SmolLM2 on a busy 2-core node, where this takes 0.1 s."""
    with path.open("rb") as file:
        magic, _version, tensors, count = struct.unpack("<4sIQQ", file.read(24))
        if magic != b"GGUF":
            raise ValueError("no GGUF magic")
        strings: dict[str, str] = {}
        for _ in range(count):
            key, kind = _string(file), _u32(file)
            if kind == _STRING:
                strings[key] = _string(file)
            else:
                _skip(file, kind)
        shapes = {}
        for _ in range(tensors):
            name, dims = _string(file), _u32(file)
            shapes[name] = struct.unpack(f"<{dims}Q", file.read(8 * dims))
            file.read(12)  # the tensor's type and offset
        return strings, shapes


def _u32(file: BinaryIO) -> int:
    return int(struct.unpack("<I", file.read(4))[0])


def _string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", file.read(8))
    return file.read(length).decode("utf-8", "replace")


def _skip(file: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(length, 1)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", file.read(12))
        if item in _SIZES:
            file.seek(_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip(file, item)
    elif kind in _SIZES:
        file.seek(_SIZES[kind], 1)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def _plain(error: BaseException) -> str:
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
