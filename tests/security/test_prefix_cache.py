"""The cross-tenant prompt timing channel, attacked on a real llama.cpp engine.

Tenant A's long prompt carries a secret. Right after it, tenant B sends the same prompt
with a guess of the secret. If the engine reused A's cached prefix for B, a right guess
would come back much faster than a wrong one. It must not: B's right and wrong guesses
take the same time, while A repeating its own prompt still benefits from the cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator

import pytest

from souverain.core.roles import Role
from tests.llamacpp_target import RUNTIMES, LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

FILLER = " ".join(
    f"Clause {i}: the contractor shall deliver the goods in good order and condition."
    for i in range(30)
)  # about 500 tokens after the secret: what a cache hit would skip


def prompt(secret: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"The vault code is {secret}. {FILLER} Summarise."}]


@pytest.fixture(scope="module", params=RUNTIMES)
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlamaTarget]:
    """Both runtimes of the llamacpp engine: llama-cpp-python (one cache, reset when the
    organisation changes) and llama-server (a cache per slot; the gateway names the slot
    and allows reuse only of a slot that last served the same organisation)."""
    async with llamacpp_target(tmp_path_factory.mktemp("prefix"), request.param) as found:
        yield found


async def timed(target: LlamaTarget, key: str, secret: str) -> float:
    body = {"model": target.model, "messages": prompt(secret), "max_tokens": 1, "temperature": 0}
    async with target.client(key) as client:
        started = time.perf_counter()
        answer = await client.post("/v1/chat/completions", json=body)
        took = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return took


async def flush(target: LlamaTarget, key: str) -> None:
    """A short unrelated request: what the caller's slot holds afterwards."""
    body = {"model": target.model, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello there."}]}  # fmt: skip
    async with target.client(key) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_a_guess_is_not_faster_when_right_across_tenants(target: LlamaTarget) -> None:
    victim = target.key
    other = await target.factory.tenant(roles={"mallory": Role.OWNER})
    attacker = (await target.factory.member_key(other, "mallory", Role.OWNER)).key
    await timed(target, victim, "7391")  # warm the engine
    right: list[float] = []
    wrong: list[float] = []
    for round_ in range(4):
        for guess, bucket in (("7391", right), ("2046", wrong))[:: 1 if round_ % 2 else -1]:
            await timed(target, victim, "7391")  # the victim's prompt is in the cache now
            # The attacker's own previous guess must not help it either: on llama-server
            # its slot keeps its own prompts (reuse within an organisation is allowed).
            await flush(target, attacker)
            bucket.append(await timed(target, attacker, guess))
    ratio = statistics.median(right) / statistics.median(wrong)
    print(f"[prefix] across tenants: right {statistics.median(right):.3f}s, "
          f"wrong {statistics.median(wrong):.3f}s, ratio {ratio:.2f}")  # fmt: skip
    assert 0.75 < ratio < 1.33, (right, wrong)


async def test_reuse_within_one_tenant_still_speeds_it_up(target: LlamaTarget) -> None:
    cold = await timed(target, target.key, "0000")
    warm = statistics.median([await timed(target, target.key, "0000") for _ in range(3)])
    print(f"[prefix] within a tenant: cold {cold:.3f}s, warm {warm:.3f}s, ratio {warm / cold:.2f}")
    assert warm < cold / 3
