"""The cross-tenant prompt timing channel, attacked around the gateway's own bookkeeping.

The victim's long prompt starts with a secret. The attacker makes a move (a request the
engine refuses, one it fails, one the attacker cancels mid-prefill, or simply a request
through another server process of the installation), then sends the victim's prompt
with a guess of the secret. If the engine let the guess start from the victim's cached
prefix, a right guess would come back much faster than a wrong one: on a one-slot
replica a hit skips about 250 tokens. Whatever the move, the engine keeps a cached
prefix within the scope (organisation and model) that left it, so both take as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from souverain.core.roles import Role
from souverain.server.app import create_app
from souverain.testing.live import LiveServer, free_port
from tests.llamacpp_target import RUNTIMES, LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

FILLER = " ".join(
    f"Clause {i}: the contractor shall deliver the goods in good order and condition."
    for i in range(15)
)  # about 250 tokens after the secret: what a cache hit would skip
TOO_LONG = " ".join([FILLER] * 20)  # more than a slot's context (4,096 tokens)
LONG = " ".join([FILLER] * 6)  # about 1,500 tokens: still being read 0.3 s after it was sent
# An image part passes the gateway (OpenAI's shape) but a text-only llama-server refuses
# it before any slot takes it.
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
SECRET, WRONG = "7391", "2046"

Move = Callable[[LlamaTarget, httpx.AsyncClient], Awaitable[None]]


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": 1, "temperature": 0, **extra}  # fmt: skip


def secret_prompt(secret: str) -> str:
    return f"The vault code is {secret}. {FILLER} Summarise."


@pytest.fixture(scope="module", params=RUNTIMES)
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlamaTarget]:
    """Both runtimes on one slot (llama-cpp-python has one anyway): one KV cache that
    every request goes through, where a leak would be plainest."""
    engine_args = {"parallel": 1} if request.param == "llama-server" else {}
    directory = tmp_path_factory.mktemp("scope")
    async with llamacpp_target(directory, request.param, engine_args) as found:
        yield found


async def attacker_key(target: LlamaTarget) -> str:
    other = await target.factory.tenant(roles={"mallory": Role.OWNER})
    return (await target.factory.member_key(other, "mallory", Role.OWNER)).key


async def timed(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = await client.post("/v1/chat/completions", json=body)
    took = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return took


async def refused(target: LlamaTarget, attacker: httpx.AsyncClient) -> None:
    """llama-server refuses the request before any slot takes it (llama-cpp-python may
    answer it, without the image)."""
    body = {**chat(target.model, ""), "messages": [{"role": "user", "content": [IMAGE]}]}
    answer = await attacker.post("/v1/chat/completions", json=body)
    runtime = target.supervisor.status().runtime
    assert answer.status_code >= 400 or runtime == "llama-cpp-python", answer.text


async def failed(target: LlamaTarget, attacker: httpx.AsyncClient) -> None:
    """llama-server takes the request onto a slot, then fails it (longer than the
    slot's context); llama-cpp-python refuses it."""
    answer = await attacker.post("/v1/chat/completions", json=chat(target.model, TOO_LONG))
    assert answer.status_code == 400, answer.text


async def cancelled(target: LlamaTarget, attacker: httpx.AsyncClient) -> None:
    """The client goes away while the engine reads a long prompt of its own."""
    body = chat(target.model, f"Minutes of the meeting. {LONG}")
    with contextlib.suppress(httpx.TimeoutException):
        await attacker.post("/v1/chat/completions", json=body, timeout=0.3)
    await asyncio.sleep(0.5)  # the engine notices the closed connection


async def rounds(
    target: LlamaTarget, victim: httpx.AsyncClient, attacker: httpx.AsyncClient, move: Move
) -> tuple[list[float], list[float]]:
    """Right and wrong guesses, alternated, each right after the victim's prompt."""
    right: list[float] = []
    wrong: list[float] = []
    for round_ in range(3):
        for guess, bucket in ((SECRET, right), (WRONG, wrong))[:: 1 if round_ % 2 else -1]:
            await timed(victim, chat(target.model, secret_prompt(SECRET)))
            await move(target, attacker)
            bucket.append(await timed(attacker, chat(target.model, secret_prompt(guess))))
    return right, wrong


def check_no_leak(what: str, right: list[float], wrong: list[float]) -> None:
    """Only a faster right guess tells anything; a leak made it 20 to 80 times faster
    with twice this filler (measured on souverain's own code before the engine kept the
    scope; a hit then skips all but a few tokens of either), while a loaded machine's noise
    goes either way."""
    ratio = statistics.median(right) / statistics.median(wrong)
    print(f"[scope] {what}: right {statistics.median(right):.3f}s, "
          f"wrong {statistics.median(wrong):.3f}s, ratio {ratio:.2f}")  # fmt: skip
    assert ratio > 0.5, (right, wrong)


@pytest.mark.parametrize("move", [refused, failed, cancelled], ids=lambda m: m.__name__)
async def test_a_guess_is_no_faster_when_right_whatever_became_of_the_last_request(
    target: LlamaTarget, move: Move
) -> None:
    key = await attacker_key(target)
    async with target.client() as victim, target.client(key) as attacker:
        await timed(attacker, chat(target.model, "Hello there."))  # its slot, in the book
        right, wrong = await rounds(target, victim, attacker, move)
    check_no_leak(f"{move.__name__} on {target.supervisor.status().runtime}", right, wrong)


async def nothing(target: LlamaTarget, attacker: httpx.AsyncClient) -> None:
    """No move: the other server process simply sends the guess."""


async def test_a_guess_through_another_server_process_is_no_faster_when_right(
    target: LlamaTarget,
) -> None:
    key = await attacker_key(target)
    config = target.config.model_copy(update={"port": free_port()})
    with LiveServer(create_app(config), port=config.port) as other:
        async with (
            target.client() as victim,
            httpx.AsyncClient(
                base_url=other.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as attacker,
        ):
            await timed(attacker, chat(target.model, "Hello there."))  # its slot, in its book
            right, wrong = await rounds(target, victim, attacker, nothing)
    check_no_leak(f"another process on {target.supervisor.status().runtime}", right, wrong)
