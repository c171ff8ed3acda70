"""Rollouts with llama.cpp: many completions of many prompts decoded together.

GRPO spends most of its time generating. transformers' `generate` runs the training copy
of the model in float32 PyTorch; here the base model's own GGUF runs in llama.cpp with the
current LoRA adapter on top (exported after each optimiser step, swapped in without
reloading the model), and every sequence of a step advances in one batch:

    each prompt is decoded once, its tokens tagged with the ids of all its n sequences
    (the KV cache of a shared prompt is shared), then every live sequence adds one token
    per decode; a sequence ends at an end-of-generation token or at max_tokens.

Token ids go in and come out: the trainer's tokenizer is the GGUF's vocabulary, so what
was sampled is exactly what is trained on. With each sampled token comes its log-probability
under the distribution it was drawn from (the logits divided by the temperature, restricted
to the nucleus when top_p < 1, as llama.cpp's chain applies them): the trainer's truncated
importance sampling corrects with it whatever differs between this engine and PyTorch
(quantised weights, kernels, the nucleus). The chain holds nothing else: no top-k, min-p,
repetition penalty or other hidden sampler.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from souverain.training.grpo_objective import LOGPROB_FLOOR

MAX_SEQUENCES = 64


@dataclass(frozen=True)
class Sample:
    prompt: int  # index of its prompt
    tokens: tuple[int, ...]  # generated, with the end-of-generation token when it stopped
    stopped: bool  # ended by the model (else cut at max_tokens)
    logprobs: tuple[float, ...] = ()  # of each token as sampled (empty when greedy)


class Rollouts:
    def __init__(
        self, gguf: Path, *, sequences: int, context: int, threads: int, seed: int = 0
    ) -> None:
        import llama_cpp as llama

        if not 1 <= sequences <= MAX_SEQUENCES:
            raise ValueError(f"rollouts: 1 to {MAX_SEQUENCES} sequences at once")
        self._l = llama
        llama.llama_backend_init()
        _silence(llama)
        params = llama.llama_model_default_params()
        model = llama.llama_model_load_from_file(str(gguf).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {gguf.name}")
        self._model = model
        self._vocab = llama.llama_model_get_vocab(model)
        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = context
        ctx_params.n_batch = max(512, sequences)
        ctx_params.n_ubatch = max(512, sequences)
        ctx_params.n_seq_max = sequences
        ctx_params.kv_unified = True  # one cache: a shared prompt is stored once
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx = llama.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama.llama_model_free(model)
            raise RuntimeError("llama.cpp could not create a context for the rollouts")
        self._ctx = ctx
        self._sequences = sequences
        self._vocab_size = int(llama.llama_vocab_n_tokens(self._vocab))
        self._context = context
        self._seed = seed
        self._adapter: Any = None
        self._batch = llama.llama_batch_init(max(512, sequences), 0, sequences)
        self._pending: dict[int, tuple[int, float]] = {}  # each sequence's next token
        self._scoring = (1.0, 1.0)  # temperature and top_p of the current generation

    def set_adapter(self, path: Path | None) -> None:
        """Use this LoRA adapter (GGUF) from the next decode on; None: the base model."""
        llama = self._l
        old = self._adapter
        if path is None:
            llama.llama_set_adapters_lora(self._ctx, None, 0, None)
            self._adapter = None
        else:
            adapter = llama.llama_adapter_lora_init(self._model, str(path).encode())
            if not adapter:
                raise RuntimeError(f"llama.cpp could not load the adapter {path.name}")
            adapters = (llama.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(1.0)
            llama.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
            self._adapter = adapter
        if old is not None:
            llama.llama_adapter_lora_free(old)

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        round_seed: int = 0,
    ) -> list[Sample]:
        """`n` completions of each prompt (temperature 0: greedy), in prompt order."""
        llama = self._l
        total = len(prompts) * n
        if total > self._sequences:
            raise ValueError(f"{total} sequences asked, the context holds {self._sequences}")
        needed = sum(len(p) for p in prompts) + total * max_tokens
        if needed > self._context:
            raise ValueError(f"{needed} tokens asked, the context holds {self._context}")
        llama.llama_memory_clear(llama.llama_get_memory(self._ctx), True)
        samplers = [self._sampler(temperature, top_p, round_seed, s) for s in range(total)]
        self._scoring = (temperature, top_p)
        try:
            return self._generate(prompts, n, max_tokens, samplers)
        finally:
            for sampler in samplers:
                llama.llama_sampler_free(sampler)

    def _generate(
        self, prompts: list[list[int]], n: int, max_tokens: int, samplers: list[Any]
    ) -> list[Sample]:
        llama = self._l
        # Prompts, one decode each (a long prompt in n_batch pieces): every token belongs
        # to the prompt's n sequences; the last one's logits start them all.
        for index, prompt in enumerate(prompts):
            seqs = list(range(index * n, index * n + n))
            for start in range(0, len(prompt), 512):
                piece = prompt[start : start + 512]
                last = start + len(piece) == len(prompt)
                self._fill([(tok, start + i, seqs, last and i == len(piece) - 1)
                            for i, tok in enumerate(piece)])  # fmt: skip
                self._decode()
            for seq in seqs:
                self._pending[seq] = self._sample(samplers[seq], len(piece) - 1)
        generated: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        logprobs: list[list[float]] = [[] for _ in generated]
        stopped = [False] * len(generated)
        live = set(range(len(generated)))
        positions = [len(prompts[seq // n]) for seq in range(len(generated))]
        while live:
            rows = []
            for seq in sorted(live):
                token, logprob = self._pending[seq]
                generated[seq].append(token)
                logprobs[seq].append(logprob)
                if llama.llama_vocab_is_eog(self._vocab, token):
                    stopped[seq] = True
                    live.discard(seq)
                elif len(generated[seq]) >= max_tokens:
                    live.discard(seq)
                else:
                    rows.append((token, positions[seq], [seq], True))
                    positions[seq] += 1
            if not rows:
                break
            self._fill(rows)
            self._decode()
            for i, (_, _, (seq,), _) in enumerate(rows):
                self._pending[seq] = self._sample(samplers[seq], i)
        greedy = self._scoring[0] <= 0
        return [
            Sample(seq // n, tuple(generated[seq]), stopped[seq],
                   () if greedy else tuple(logprobs[seq]))
            for seq in range(len(generated))
        ]  # fmt: skip

    def _sample(self, sampler: Any, row: int) -> tuple[int, float]:
        """A token from the logits of the batch's `row`, and its log-probability as sampled."""
        token = int(self._l.llama_sampler_sample(sampler, self._ctx, row))
        temperature, top_p = self._scoring
        if temperature <= 0:
            return token, 0.0
        import numpy as np

        logits = np.ctypeslib.as_array(
            self._l.llama_get_logits_ith(self._ctx, row), shape=(self._vocab_size,)
        )
        return token, sampled_logprob(logits, token, temperature=temperature, top_p=top_p)

    def _fill(self, rows: list[tuple[int, int, list[int], bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(rows)
        for i, (token, pos, seqs, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = len(seqs)
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
            batch.logits[i] = logits

    def _decode(self) -> None:
        code = self._l.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama.cpp could not decode the batch (code {code})")

    def _sampler(self, temperature: float, top_p: float, round_seed: int, seq: int) -> Any:
        llama = self._l
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
            return chain
        if top_p < 1.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(top_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(temperature))
        seed = (self._seed * 1_000_003 + round_seed * 1009 + seq) & 0xFFFFFFFF
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    def close(self) -> None:
        llama = self._l
        llama.llama_batch_free(self._batch)
        if self._adapter is not None:
            llama.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        llama.llama_free(self._ctx)
        llama.llama_model_free(self._model)


def sampled_logprob(logits: Any, token: int, *, temperature: float, top_p: float = 1.0) -> float:
    """log p(token) under llama.cpp's chain [top-p at temperature 1] → temperature → dist:
    softmax(logits / temperature), over the nucleus when top_p < 1 (`LOGPROB_FLOOR` for a
    token this nucleus leaves out, where llama.cpp's edge differed)."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float32)  # in place of llama.cpp's own: no copy
    if top_p < 1.0:
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        kept = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
        if token not in set(kept.tolist()):
            return LOGPROB_FLOOR
        values = values[kept]
        token = int(np.nonzero(kept == token)[0][0])
    scaled = values * np.float32(1.0 / temperature)
    top = scaled.max()
    total = float(np.exp(scaled - top).sum(dtype=np.float64))
    return float(scaled[token] - top) - math.log(total)


def _quiet(level: int, text: bytes, data: Any) -> None:
    return None


_log_callback: Any = None  # kept referenced while llama.cpp may call it


def _silence(llama: Any) -> None:
    global _log_callback
    if _log_callback is None:
        _log_callback = llama.llama_log_callback(_quiet)
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
