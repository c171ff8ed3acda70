"""LoRA adapter files for tests: random, on SmolLM2-135M's value projections, strong enough
to change its answers, as the GGUF llama.cpp loads (what fine-tuning exports)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
