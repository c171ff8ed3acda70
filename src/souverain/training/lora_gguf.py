"""A PEFT LoRA adapter (safetensors) as a GGUF LoRA adapter, which llama.cpp loads beside
the base model's GGUF (`--lora`, llama-cpp-python's `lora_path`).

What llama.cpp expects, as its own `convert_lora_to_gguf.py` writes it: metadata
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`; for each adapted
weight `blk.N.<name>.weight.lora_a` (PEFT's A, rank × in) and `….lora_b` (B, out × rank),
under the base tensor's GGUF name. llama.cpp scales by alpha / rank at run time.

One subtlety: llama.cpp's converter permutes the rows of the query and key projections of
LLaMA-family models (its rotary embedding pairs dimensions differently from the Hugging
Face layout), and transformers undoes that permutation when it loads a GGUF. An adapter
trained on the Hugging Face layout must have the output rows of its q/k B matrices
permuted the same way, or the adapter would rotate the wrong dimensions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LLAMA_FAMILY = frozenset({"llama", "mistral"})


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k layout: within each head, interleaved halves instead of two blocks."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def convert(
    adapter_dir: Path,
    out_path: Path,
    *,
    architecture: str,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
) -> dict[str, object]:
    """Write `out_path`; returns what was written (rank, alpha, tensor count)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA}.get(architecture)
    if arch is None:
        raise ValueError(f"no GGUF LoRA export for the {architecture!r} architecture yet")
    names = gguf.get_tensor_name_map(arch, n_layers)
    writer = gguf.GGUFWriter(str(out_path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    written = 0
    for name, array in sorted(tensors.items()):
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        module, part = name.removeprefix("base_model.model.").rsplit(".lora_", 1)
        which = part.split(".", 1)[0]
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise ValueError(f"adapter tensor {name!r} has no GGUF counterpart")
        data = array.astype(np.float32)
        if which == "B" and architecture in LLAMA_FAMILY:
            if module.endswith("q_proj"):
                data = permute_rows(data, n_heads)
            elif module.endswith("k_proj"):
                data = permute_rows(data, n_kv_heads)
        suffix = ".lora_a" if which == "A" else ".lora_b"
        writer.add_tensor(target + suffix, np.ascontiguousarray(data))
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"rank": config["r"], "alpha": config["lora_alpha"], "tensors": written}
