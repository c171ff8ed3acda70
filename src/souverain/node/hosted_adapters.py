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
engine). The last two need the `gguf` package (installed with souverain's training extra);
a node without it checks the sha256 only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from souverain.core.fleet import AdapterState, HostedAdapter
from souverain.node.sealed import decrypt_to

RUNTIMES = frozenset({"llama-server"})  # the programs that pick an adapter per request


def prepare(
    adapters: tuple[HostedAdapter, ...], *, scratch: Path, base: Path, runtime: str
) -> tuple[tuple[HostedAdapter, ...], tuple[AdapterState, ...]]:
    """The adapters to load (each with its clear `path`) and what became of every one."""
    if runtime not in RUNTIMES:  # it would answer with the base model for all of them
        refused = f"{runtime} on this node serves no shared adapters (build llama-server)"
        return (), tuple(AdapterState(a.model_id, refused) for a in adapters)
    loaded: list[HostedAdapter] = []
    states: list[AdapterState] = []
    for index, adapter in enumerate(adapters):
        try:
            path = _clear_path(adapter, scratch / f"adapter-{index}.gguf")
            refused = fits(path, base)
        except Exception as error:  # a key erased, an object gone, tampered with, truncated
            refused = f"the adapter cannot be read: {_plain(error)}"
        if refused:
            states.append(AdapterState(adapter.model_id, refused))
        else:
            loaded.append(replace(adapter, path=str(path)))
            states.append(AdapterState(adapter.model_id))
    return tuple(loaded), tuple(states)


def _clear_path(adapter: HostedAdapter, target: Path) -> Path:
    if adapter.grant is None:
        if adapter.path is None:
            raise ValueError("neither a sealed object nor a file")
        return Path(adapter.path)
    target.unlink(missing_ok=True)
    decrypt_to([adapter.grant], target)  # checked against the grant's sha256
    return target


def fits(adapter: Path, base: Path) -> str:
    """Why the engine would refuse `adapter` on `base` ("" when it fits, or when this node
    cannot tell: no `gguf` package)."""
    try:
        import gguf
    except ImportError:
        return ""
    try:
        lora, model = gguf.GGUFReader(str(adapter)), gguf.GGUFReader(str(base))
    except Exception as error:
        return f"not a GGUF file: {_plain(error)}"
    if _text(lora, "general.type") != "adapter" or _text(lora, "adapter.type") != "lora":
        return "not a GGUF LoRA adapter"
    arch, base_arch = _text(lora, "general.architecture"), _text(model, "general.architecture")
    if arch != base_arch:
        return f"an adapter for the {arch!r} architecture, not this base's {base_arch!r}"
    return _shapes_fit(lora, model)


def _shapes_fit(lora: Any, model: Any) -> str:
    """llama.cpp's own rule: for base weight W (in × out, GGUF order), lora_a is in × r
    and lora_b is r × out."""
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in model.tensors}
    parts = {t.name: tuple(int(n) for n in t.shape) for t in lora.tensors}
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


def _text(reader: Any, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        return ""
    return str(bytes(field.parts[field.data[0]]), "utf-8")


def _plain(error: BaseException) -> str:
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
