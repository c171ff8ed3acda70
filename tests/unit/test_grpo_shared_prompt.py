"""A group's log-probabilities with its prompt run once (KV cache shared by the group's
completions) equal those of each whole sequence run alone, and so do their gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from souverain.training.grpo_objective import groups_logprobs, token_logprobs  # noqa: E402


def tiny_model() -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).float()


def whole(model: object, prompt: list[int], completion: list[int]) -> object:
    seq = prompt + completion
    ids = torch.tensor([seq])
    mask = torch.zeros((1, len(seq)))
    mask[0, len(prompt) :] = 1.0
    logp = token_logprobs(model, ids, torch.ones_like(ids), mask)
    return logp[0, len(prompt) - 1 :]


def test_shared_prompt_equals_each_sequence_alone_values_and_gradients() -> None:
    model = tiny_model()
    groups = [([1, 5, 9, 13, 2], [[7, 8, 3], [4], [6, 6, 6, 6, 1], []]),
              ([3, 11, 2], [[9, 9], [10, 12, 14]])]  # fmt: skip
    logp, mask = groups_logprobs(model, groups, pad=0)
    assert logp.shape == mask.shape == (6, 5)
    expected = []
    row = 0
    for prompt, completions in groups:
        for completion in completions:
            assert mask[row].sum() == len(completion)
            if completion:
                torch.testing.assert_close(logp[row, : len(completion)],
                                           whole(model, prompt, completion), atol=1e-5, rtol=1e-5)  # fmt: skip
                expected.append(whole(model, prompt, completion).sum())
            assert float(logp[row, len(completion) :].detach().abs().sum()) == 0.0
            row += 1
    model.zero_grad()
    (logp * mask).sum().backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.stack(expected).sum().backward()
    for ours, alone in zip(shared, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(ours, alone, atol=1e-5, rtol=1e-4)
