"""A 200-line batch on a real llama.cpp engine serving SmolLM2: each output line is the
answer the same request gets live (temperature 0, fixed seed), with the same token usage."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import openai
import pytest

from tests.llamacpp_target import LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

LINES = 200


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaTarget]:
    async with llamacpp_target(tmp_path_factory.mktemp("batch-llama")) as found:
        yield found


def body(model: str, i: int) -> dict[str, object]:
    return {"model": model, "max_tokens": 4, "temperature": 0, "seed": 7,
            "messages": [{"role": "user", "content": f"Count to {i % 20}."}]}  # fmt: skip


async def test_batch_answers_equal_live_answers(target: LlamaTarget) -> None:
    sdk = openai.OpenAI(base_url=f"{target.url}/v1", api_key=target.key, max_retries=0)
    content = b"".join(
        json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body(target.model, i)}).encode() + b"\n"
        for i in range(LINES)
    )  # fmt: skip
    uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    started = time.monotonic()
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h")  # fmt: skip
    while (batch := sdk.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() - started < 600
        await asyncio.sleep(1.0)
    assert batch.status == "completed" and batch.request_counts.completed == LINES
    output = {
        line["custom_id"]: line["response"]["body"]
        for line in map(json.loads, sdk.files.content(batch.output_file_id).read().splitlines())
    }
    assert len(output) == LINES
    for i in range(0, LINES, 10):  # the live answers of one line in ten
        live = sdk.chat.completions.create(**body(target.model, i))  # type: ignore[call-overload]
        answer = output[f"q{i}"]
        assert answer["choices"][0]["message"]["content"] == live.choices[0].message.content
        assert answer["usage"]["completion_tokens"] == live.usage.completion_tokens
        assert answer["usage"]["prompt_tokens"] == live.usage.prompt_tokens
