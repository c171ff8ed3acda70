"""Both runtimes of the llamacpp engine answer the same requests the same way, through
souverain, with the official openai SDK: llama-cpp-python's server (one request at a
time) and llama.cpp's own llama-server (parallel slots). Chat and completions, streamed
and not, tools with forced and automatic choice, JSON schemas, logprobs, stop sequences,
seeds; exact usage in streams and one settled usage record per request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from sqlalchemy import select

from souverain.db.tables import UsageRecordRow
from tests.llamacpp_target import RUNTIMES, LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module", params=RUNTIMES)
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlamaTarget]:
    async with llamacpp_target(
        tmp_path_factory.mktemp("runtime"), request.param, engine_args={"parallel": 4}
    ) as found:
        yield found


def sdk(target: LlamaTarget) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{target.url}/v1", api_key=target.key, max_retries=0)


async def records(target: LlamaTarget) -> list[UsageRecordRow]:
    async with target.factory.sessions() as session:
        query = select(UsageRecordRow).where(UsageRecordRow.org_id == target.tenant.org_id)
        return list((await session.execute(query)).scalars())


async def settled(target: LlamaTarget, count: int) -> list[UsageRecordRow]:
    for _ in range(100):
        rows = await records(target)
        if len(rows) >= count and all(r.status != "open" for r in rows):
            return rows
        await asyncio.sleep(0.1)
    return await records(target)


async def test_the_replica_says_which_runtime_serves_it(target: LlamaTarget) -> None:
    status = target.supervisor.status()
    assert status.runtime in RUNTIMES
    assert status.slots == (4 if status.runtime == "llama-server" else None)


async def test_the_replica_says_what_its_start_took(target: LlamaTarget) -> None:
    """The engine's CPU time from its spawn to ready (loading the model, the probe's
    generation), read from its process: what the controller records as the start's."""
    status = target.supervisor.status()
    assert status.start_cpu_s is not None and status.start_cpu_s > 0.1
    assert status.start_wall_s is not None and status.start_wall_s > 0


async def test_chat_streamed_usage_equals_the_answer_and_one_record_each(
    target: LlamaTarget,
) -> None:
    before = len(await records(target))
    body: dict[str, Any] = {"model": target.model, "messages": ASK_WEATHER, "max_tokens": 12,
                            "temperature": 0, "seed": 7}  # fmt: skip
    whole = await sdk(target).chat.completions.create(**body)
    stream = await sdk(target).chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        elif chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None, "the stream ended without its usage chunk"
    assert whole.usage is not None
    assert text and whole.choices[0].message.content  # (a reused cache may change a token)
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    rows = (await settled(target, before + 2))[before:]
    assert len(rows) == 2
    assert {(r.prompt_tokens, r.completion_tokens, r.status) for r in rows} == {
        (usage.prompt_tokens, usage.completion_tokens, "ok")
    }
    assert {r.tokens_counted_by for r in rows} == {"engine"}


async def test_completions_streamed_usage_is_a_chunk_of_its_own(target: LlamaTarget) -> None:
    body: dict[str, Any] = {"model": target.model, "prompt": "The capital of France is",
                            "max_tokens": 6, "temperature": 0}  # fmt: skip
    whole = await sdk(target).completions.create(**body)
    stream = await sdk(target).completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])  # OpenAI's shape, whatever the engine
    assert "".join(c.choices[0].text for c in chunks[:-1] if c.choices)
    assert whole.usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert 0 < chunks[-1].usage.completion_tokens <= 6


async def test_a_stream_without_include_usage_has_no_usage_chunk(target: LlamaTarget) -> None:
    stream = await sdk(target).completions.create(
        model=target.model, prompt="One, two,", max_tokens=4, temperature=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.choices and c.usage is None for c in chunks)


async def test_a_forced_tool_call_names_the_tool_with_valid_arguments(target: LlamaTarget) -> None:
    answer = await sdk(target).chat.completions.create(
        model=target.model, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0,
    )  # fmt: skip
    calls = answer.choices[0].message.tool_calls
    assert calls, answer
    assert calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


async def test_a_forced_tool_call_streams_as_deltas(target: LlamaTarget) -> None:
    stream = await sdk(target).chat.completions.create(
        model=target.model, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=40, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0,
    )  # fmt: skip
    name, arguments = "", ""
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function is not None:
                name += call.function.name or ""
                arguments += call.function.arguments or ""
    assert name == "get_weather"
    assert isinstance(json.loads(arguments)["city"], str)


async def test_auto_tool_choice_answers_with_a_call_or_with_text(target: LlamaTarget) -> None:
    answer = await sdk(target).chat.completions.create(
        model=target.model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="auto",
        max_tokens=40, temperature=0,
    )  # fmt: skip
    choice = answer.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == "get_weather"
        json.loads(choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.message.content


async def test_a_json_schema_is_obeyed(target: LlamaTarget) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
              "age": {"type": "integer"}}, "required": ["name", "age"],
              "additionalProperties": False}  # fmt: skip
    answer = await sdk(target).chat.completions.create(
        model=target.model, max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema}},
    )  # fmt: skip
    data = json.loads(answer.choices[0].message.content or "")
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


async def test_logprobs_come_with_every_token(target: LlamaTarget) -> None:
    answer = await sdk(target).chat.completions.create(
        model=target.model, messages=ASK_WEATHER, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and answer.usage is not None
    assert len(content) == answer.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


async def test_a_stop_sequence_ends_the_answer_before_it(target: LlamaTarget) -> None:
    answer = await sdk(target).completions.create(
        model=target.model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 6"]
    )
    assert " 6" not in answer.choices[0].text
    assert answer.choices[0].finish_reason == "stop"


async def test_the_same_seed_samples_the_same_answer(target: LlamaTarget) -> None:
    async def sample(seed: int) -> str:
        answer = await sdk(target).chat.completions.create(
            model=target.model, messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=16, temperature=1.0, seed=seed,
        )  # fmt: skip
        return answer.choices[0].message.content or ""

    await sample(11)  # from here on the prompt's prefix is cached, as for the next ones
    first = await sample(11)
    assert await sample(11) == first
    assert {await sample(12), await sample(13)} != {first}


async def test_concurrent_streams_all_complete_and_are_all_metered(target: LlamaTarget) -> None:
    before = len(await records(target))

    async def one(i: int) -> int:
        stream = await sdk(target).chat.completions.create(
            model=target.model, max_tokens=10, temperature=0, stream=True,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            stream_options={"include_usage": True},
        )  # fmt: skip
        return [c async for c in stream][-1].usage.completion_tokens  # type: ignore[union-attr]

    counts = await asyncio.gather(*(one(i) for i in range(6)))
    rows = (await settled(target, before + 6))[before:]
    assert sorted(r.completion_tokens for r in rows) == sorted(counts)
    assert {r.status for r in rows} == {"ok"}


def random_adapter(directory: Path) -> Path:
    """A LoRA adapter on SmolLM2-135M's value projections, random but strong enough to
    change its answers, as the GGUF llama.cpp loads (what fine-tuning exports)."""
    from safetensors.numpy import save_file

    from souverain.training import lora_gguf

    rng = np.random.default_rng(7)
    rank, tensors = 4, {}
    for layer in range(30):  # hidden 576, 3 KV heads of 64
        name = f"base_model.model.model.layers.{layer}.self_attn.v_proj"
        tensors[f"{name}.lora_A.weight"] = rng.normal(0, 0.2, (rank, 576)).astype(np.float32)
        tensors[f"{name}.lora_B.weight"] = rng.normal(0, 0.2, (192, rank)).astype(np.float32)
    peft = directory / "peft"
    peft.mkdir()
    save_file(tensors, str(peft / "adapter_model.safetensors"))
    (peft / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
    out = directory / "adapter.gguf"
    lora_gguf.convert(peft, out, architecture="llama", n_layers=30, n_heads=9, n_kv_heads=3)
    return out


@pytest.fixture(scope="module")
async def adapted(
    target: LlamaTarget, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlamaTarget]:
    directory = tmp_path_factory.mktemp("adapted")
    runtime = target.supervisor.status().runtime or "llama-cpp-python"
    async with llamacpp_target(directory, runtime, adapter_path=random_adapter(directory)) as found:
        yield found


async def test_a_lora_adapter_changes_what_the_engine_answers(
    target: LlamaTarget, adapted: LlamaTarget
) -> None:
    body: dict[str, Any] = {"messages": ASK_WEATHER, "max_tokens": 12, "temperature": 0}
    base = await sdk(target).chat.completions.create(model=target.model, **body)
    tuned = await sdk(adapted).chat.completions.create(model=adapted.model, **body)
    assert adapted.supervisor.status().runtime == target.supervisor.status().runtime
    assert tuned.choices[0].message.content != base.choices[0].message.content
