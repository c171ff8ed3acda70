"""LoRA adapter files for tests: random, on SmolLM2-135M's value projections, strong enough
to change its answers, as the GGUF llama.cpp loads (what fine-tuning exports)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from souverain.core.fleet import ObjectGrant
from souverain.storage.crypto import Sealer
from souverain.storage.stores import LocalStore


def adapter_file(directory: Path, *, seed: int, hidden: int = 576) -> Path:
    """A random LoRA adapter on SmolLM2-135M's value projections, strong enough to change
    its answers, as the GGUF llama.cpp loads; `hidden` other than 576: one of another base."""
    from safetensors.numpy import save_file

    from souverain.training import lora_gguf

    rng = np.random.default_rng(seed)
    rank, tensors = 4, {}
    for layer in range(30):
        name = f"base_model.model.model.layers.{layer}.self_attn.v_proj"
        tensors[f"{name}.lora_A.weight"] = rng.normal(0, 0.2, (rank, hidden)).astype(np.float32)
        tensors[f"{name}.lora_B.weight"] = rng.normal(0, 0.2, (192, rank)).astype(np.float32)
    peft = directory / f"peft-{seed}"
    peft.mkdir()
    save_file(tensors, str(peft / "adapter_model.safetensors"))
    (peft / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
    out = directory / f"adapter-{seed}.gguf"
    lora_gguf.convert(peft, out, architecture="llama", n_layers=30, n_heads=9, n_kv_heads=3)
    return out


async def sealed_adapter(
    store: LocalStore, plain: bytes, name: str, *, sha256: str | None = None
) -> ObjectGrant:
    """`plain` sealed under a new data key in `store`, and the grant a node opens it with
    (its sha256: `sha256` if given, that of `plain` otherwise)."""
    key, object_id = os.urandom(32), f"ftjob_{name}/adapter.gguf"
    sealer = Sealer(key, object_id)

    async def chunks() -> AsyncIterator[bytes]:
        yield sealer.header
        for piece in sealer.feed(plain):
            yield piece
        yield sealer.finish()

    await store.write(name, chunks())
    digest = hashlib.sha256(plain).hexdigest() if sha256 is None else sha256
    return ObjectGrant(store.uri, name, object_id, key, digest)
