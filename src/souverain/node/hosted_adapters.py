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
engine). Both read the GGUF headers only (`read_header`). A refusal the file is to
blame for stays; one the store is (`UNAVAILABLE`, a brief store or network error) is tried
again by the next change of the replica's adapters (node/runtime_adapters.py).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from souverain.core.fleet import ADAPTER_UNAVAILABLE, AdapterState, HostedAdapter
from souverain.node.sealed import SealedObjectError, check_digest, decrypt_to
from souverain.storage.crypto import DecryptionError

RUNTIMES = frozenset({"llama-server"})  # the programs that pick an adapter per request

# What the adapter's owner is told (a fixed category: no object id, store error or node
# path reaches a tenant); the detail goes to the node's log, for operators.
UNREADABLE = "the adapter could not be opened or does not match its checksum"
NOT_FOR_BASE = "the file is not a LoRA adapter of this base model"
NO_RUNTIME = "the node's engine cannot serve shared adapters"
UNAVAILABLE = ADAPTER_UNAVAILABLE  # the store could not be read: tried again
# What the file itself is to blame for (a key erased, no or another sha256, tampered with,
# truncated): the same file is refused the same way every time.
_BAD_FILE = (SealedObjectError, DecryptionError)

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
        path, refused = check(adapter, scratch / f"adapter-{index}.gguf", base)
        if refused:
            states.append(AdapterState(adapter.model_id, refused))
        else:
            # llama-server numbers its `--lora`s in the order given (engines/llama_server.py)
            states.append(AdapterState(adapter.model_id, lora_id=len(loaded)))
            loaded.append(replace(adapter, path=str(path)))
    return tuple(loaded), tuple(states)


def check(adapter: HostedAdapter, target: Path, base: Path) -> tuple[Path, str]:
    """The adapter decrypted at `target` and checked against `base`: its path, and why it
    is refused ("" when it may be loaded; a refused one leaves no clear copy behind)."""
    refused = ""
    try:
        path = _clear_path(adapter, target)
        if detail := fits(path, base):
            log.warning("adapter of %s refused: %s", adapter.model_id, detail)
            refused = NOT_FOR_BASE
    except _BAD_FILE as error:
        log.warning("adapter of %s cannot be read: %s", adapter.model_id, plain(error))
        refused = UNREADABLE
    except Exception as error:  # the store or the network, maybe for a moment
        log.warning("adapter of %s cannot be fetched: %s", adapter.model_id, plain(error))
        refused = UNAVAILABLE
    if refused:
        target.unlink(missing_ok=True)
    return target, refused


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
        return f"not a GGUF file: {plain(error)}"
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


_MAX_DEPTH = 4  # arrays of arrays: GGUF files nest one level at most
_MAX_DIMS = 8  # ggml's tensors have 4


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A GGUF file's string metadata and its tensors' shapes, from the header alone. The
    `gguf` package's reader builds every metadata value (a base's 49k-token vocabulary) as
    numpy views: 14 s for SmolLM2 on a busy 2-core node, where this takes 0.1 s. The file
    is untrusted: every count is bounded by the bytes left, a short read is an error, and
    arrays nest `_MAX_DEPTH` deep at most."""
    with path.open("rb") as file:
        header = _Header(file, path.stat().st_size)
        magic, _version, tensors, count = struct.unpack("<4sIQQ", header.read(24))
        if magic != b"GGUF":
            raise ValueError("no GGUF magic")
        strings: dict[str, str] = {}
        for _ in range(header.bounded(count, 12)):  # a key: its length and a type at least
            key, kind = header.string(), header.u32()
            if kind == _STRING:
                strings[key] = header.string()
            else:
                header.skip(kind, depth=0)
        shapes = {}
        for _ in range(header.bounded(tensors, 24)):
            name, dims = header.string(), header.u32()
            if dims > _MAX_DIMS:
                raise ValueError(f"a tensor of {dims} dimensions")
            shapes[name] = struct.unpack(f"<{dims}Q", header.read(8 * dims))
            header.read(12)  # the tensor's type and offset
        return strings, shapes


class _Header:
    """Reads from an untrusted GGUF file of `size` bytes: never past its end."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file, self._size = file, size

    def left(self) -> int:
        return self._size - self._file.tell()

    def bounded(self, count: int, least: int) -> int:
        """`count` items of `least` bytes each at least, if the file can hold them."""
        if count * least > self.left():
            raise ValueError(f"{count} items do not fit in the file")
        return count

    def read(self, size: int) -> bytes:
        data = self._file.read(self.bounded(size, 1))
        if len(data) != size:
            raise ValueError("the file ends inside its header")
        return data

    def seek(self, size: int) -> None:
        self._file.seek(self.bounded(size, 1), 1)

    def u32(self) -> int:
        return int(struct.unpack("<I", self.read(4))[0])

    def string(self) -> str:
        (length,) = struct.unpack("<Q", self.read(8))
        return self.read(length).decode("utf-8", "replace")

    def skip(self, kind: int, *, depth: int) -> None:
        if kind == _STRING:
            (length,) = struct.unpack("<Q", self.read(8))
            self.seek(length)
        elif kind == _ARRAY:
            if depth >= _MAX_DEPTH:
                raise ValueError("arrays nested too deep")
            item, count = struct.unpack("<IQ", self.read(12))
            if item in _SIZES:
                self.seek(self.bounded(count, _SIZES[item]) * _SIZES[item])
            else:
                for _ in range(self.bounded(count, 8)):  # a string or an array at least
                    self.skip(item, depth=depth + 1)
        elif kind in _SIZES:
            self.seek(_SIZES[kind])
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def plain(error: BaseException) -> str:
    """An exception in words, without Python's internals or a traceback."""
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
