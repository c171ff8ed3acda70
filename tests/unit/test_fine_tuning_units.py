"""The parts of fine-tuning that are plain functions: hyperparameters ("auto" included,
supervised and reinforcement) resolved and bounded, and the adapter's q/k layout for llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest

from souverain.core.errors import InvalidRequestError
from souverain.jobs.fine_tuning.recipe import (
    BASE_LEARNING_RATE,
    Asked,
    Limits,
    resolve_evaluation,
    resolve_hyperparameters,
    resolve_reinforcement,
)
from souverain.training import lora_gguf

LIMITS = Limits(max_steps=1000, max_epochs=20, max_seq_len=4096, max_dataset_bytes=2**20,
                max_samples=10_000, cpus=1.0)  # fmt: skip


def asked(**fields: object) -> Asked:
    base: dict[str, object] = {"shape": "openai", "model": "m", "training_files": [("f", 1.0)],
                               "validation_file": None}  # fmt: skip
    return Asked(**(base | fields))  # type: ignore[arg-type]


class TestHyperparameters:
    def test_auto_gives_three_epochs_of_batches_of_up_to_eight(self) -> None:
        resolved = resolve_hyperparameters(asked(), samples=20, context_length=8192, limits=LIMITS)
        assert resolved["batch_size"] == 8
        assert resolved["max_steps"] == 3 * 3  # ceil(20 / 8) steps an epoch
        assert resolved["learning_rate"] == BASE_LEARNING_RATE
        assert resolved["seq_len"] == 2048 and resolved["save_steps"] == 3

    def test_steps_epochs_and_rates_as_asked(self) -> None:
        openai = resolve_hyperparameters(
            asked(n_epochs=5, batch_size=2, learning_rate_multiplier=10), samples=8,
            context_length=512, limits=LIMITS,
        )  # fmt: skip
        assert (openai["max_steps"], openai["learning_rate"], openai["seq_len"]) == (
            20,
            pytest.approx(10 * BASE_LEARNING_RATE),
            512,
        )
        mistral = resolve_hyperparameters(
            asked(shape="mistral", training_steps=7, learning_rate=0.01, seq_len=64),
            samples=8, context_length=512, limits=LIMITS,
        )  # fmt: skip
        assert (mistral["max_steps"], mistral["learning_rate"], mistral["seq_len"]) == (7, 0.01, 64)

    @pytest.mark.parametrize(
        ("fields", "param"),
        [
            ({"n_epochs": 21}, "n_epochs"),
            ({"n_epochs": 20, "batch_size": 1}, "n_epochs"),  # 20 × 100 steps > 1000
            ({"training_steps": 1001}, "training_steps"),
            ({"batch_size": 0}, "batch_size"),
            ({"n_epochs": 0}, "n_epochs"),
            ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
            ({"batch_size": 257}, "batch_size"),
            ({"learning_rate_multiplier": 101}, "learning_rate_multiplier"),
            ({"learning_rate": 2.0}, "learning_rate"),
            ({"seq_len": 8}, "seq_len"),
            ({"seq_len": 5000}, "seq_len"),  # above the model's context
            ({"warmup_fraction": 1.5}, "warmup_fraction"),
            ({"weight_decay": -0.1}, "weight_decay"),
        ],
    )
    def test_out_of_bounds_is_refused_with_the_parameter(
        self, fields: dict[str, object], param: str
    ) -> None:
        with pytest.raises(InvalidRequestError) as refused:
            resolve_hyperparameters(asked(**fields), samples=100, context_length=4096,
                                    limits=LIMITS)  # fmt: skip
        assert refused.value.param == param


class TestReinforcementHyperparameters:
    @staticmethod
    def resolve(**reinforcement: object) -> dict[str, object]:
        job = asked(method="reinforcement", grader={"type": "magistral"},
                    reinforcement=reinforcement)  # fmt: skip
        return resolve_reinforcement(job, samples=10, context_length=2048, limits=LIMITS)

    def test_a_short_budget_shortens_the_length_ramp_it_was_not_given(self) -> None:
        assert self.resolve()["length_cache"] == 64
        assert self.resolve(max_tokens=64)["length_cache"] == 32
        assert self.resolve(max_tokens=64, length_cache=16)["length_cache"] == 16

    def test_a_ramp_as_long_as_the_budget_is_refused(self) -> None:
        with pytest.raises(InvalidRequestError, match="length_cache"):
            self.resolve(max_tokens=64, length_cache=64)

    def test_an_evaluation_with_a_short_budget_resolves_to_no_step(self) -> None:
        job = asked(method="reinforcement", grader={"type": "magistral"},
                    reinforcement={"max_tokens": 64})  # fmt: skip
        resolved = resolve_evaluation(job, samples=5, context_length=2048, limits=LIMITS)
        assert resolved["max_steps"] == 0 and resolved["length_cache"] == 32


class TestAdapterLayout:
    def test_query_and_key_rows_are_permuted_as_llama_cpp_expects(self) -> None:
        """transformers undoes llama.cpp's permutation when it loads a GGUF; the adapter
        must be permuted back, so that loading it through transformers' reverse gives the
        trained B again (for q with 9 heads and k with 3 KV heads, as in SmolLM2)."""
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

        reverse = LlamaTensorProcessor(config={})._reverse_permute_weights
        rng = np.random.default_rng(0)
        for heads, kv_heads, rows in ((9, 9, 576), (9, 3, 192)):
            b = rng.standard_normal((rows, 8)).astype(np.float32)
            permuted = lora_gguf.permute_rows(b, kv_heads)
            assert not np.array_equal(permuted, b)
            assert np.array_equal(reverse(permuted, heads, kv_heads), b)

    def test_a_peft_adapter_becomes_a_gguf_lora_with_llama_names(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        import gguf
        from safetensors.numpy import save_file

        rank, hidden = 4, 64
        tensors = {}
        for module, out in (
            ("self_attn.q_proj", 64),
            ("self_attn.k_proj", 32),
            ("mlp.up_proj", 128),
        ):
            prefix = f"base_model.model.model.layers.1.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.ones((rank, hidden), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.arange(out * rank, dtype=np.float32).reshape(
                out, rank
            )
        save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
        out = tmp_path / "adapter.gguf"
        written = lora_gguf.convert(tmp_path, out, architecture="llama", n_layers=2, n_heads=4,
                                    n_kv_heads=2)  # fmt: skip
        reader = gguf.GGUFReader(str(out))
        names = {t.name: t for t in reader.tensors}
        assert written["tensors"] == 6
        assert set(names) == {f"blk.1.{n}.weight.lora_{ab}" for n in ("attn_q", "attn_k", "ffn_up")
                              for ab in "ab"}  # fmt: skip
        fields = {f.name: f for f in reader.fields.values()}
        assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
        assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
        up_b = np.asarray(names["blk.1.ffn_up.weight.lora_b"].data).reshape(128, rank)
        assert np.array_equal(
            up_b, tensors["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"]
        )
        q_b = np.asarray(names["blk.1.attn_q.weight.lora_b"].data).reshape(64, rank)
        assert np.array_equal(
            q_b,
            lora_gguf.permute_rows(
                tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"], 4
            ),
        )
