"""Requests built to crash the shared engine, against a real llama.cpp engine serving
SmolLM2: every class of grammar and sampler input that once killed it is refused with a
400 before the engine sees it; generated schemas and sampling parameters within the bounds
never kill it; and a key whose requests keep breaking engines is paused and audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from souverain.gateway.grammar_bounds import MAX_REPEAT
from tests.llamacpp_target import LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@dataclass
class Target:
    url: str
    key: str
    model: str
    found: LlamaTarget

    def chat(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "Give me data."}], **extra}  # fmt: skip


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    async with llamacpp_target(tmp_path_factory.mktemp("hostile")) as found:
        yield Target(found.url, found.key, found.model, found)


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def _wide(count: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(count)}}


CRASHERS = {
    "maxItems 10000": {"type": "array", "items": {"type": "integer"}, "maxItems": 10000},
    "minItems 5000": {"type": "array", "items": {"type": "integer"}, "minItems": 5000},
    "maxLength 2000": {"type": "string", "maxLength": 2000},
    "minLength 100000": {"type": "string", "minLength": 100000},
    "maxProperties 10000": {"type": "object", "maxProperties": 10000},
    "pattern a{0,5000}": {"type": "string", "pattern": "^a{0,5000}$"},
    "pattern a{9999,}": {"type": "string", "pattern": "^a{9999,}$"},
    "long pattern": {"type": "string", "pattern": "a" * 2000},
    "nested 40 deep": _deep(40),
    "1000 properties": _wide(1000),
    "remote $ref": {"$ref": "http://169.254.169.254/latest/meta-data"},
    "maxItems as text": {"type": "array", "items": {}, "maxItems": "10000"},
    "maxItems negative": {"type": "array", "items": {}, "maxItems": -1},
    # stalls: nested repetitions a shared engine spent 17 s (two levels) and minutes on
    "pattern (a{0,100}){0,100}": {"type": "string", "pattern": "^(a{0,100}){0,100}$"},
    "pattern four levels": {"type": "string", "pattern": "^(((a{0,10}){0,10}){0,10}){0,10}$"},
    "pattern ((a+)+)+": {"type": "string", "pattern": "^((a+)+)+$"},
    # refused by the engine after the gateway chose a slot (issue of the cache scope)
    "unresolved $ref": {"$ref": "#/$defs/missing", "$defs": {"there": {"type": "string"}}},
}


class TestCrashersAreRefused:
    @pytest.mark.parametrize("name", list(CRASHERS))
    @pytest.mark.parametrize("where", ["json_object", "json_schema", "tool"])
    async def test_refused_before_the_engine_and_the_engine_lives(
        self, target: Target, name: str, where: str
    ) -> None:
        schema = CRASHERS[name]
        if where == "json_object":
            extra: dict[str, Any] = {"response_format": {"type": "json_object", "schema": schema}}
        elif where == "json_schema":
            extra = {"response_format": {"type": "json_schema",
                                         "json_schema": {"name": "x", "schema": schema}}}  # fmt: skip
        else:
            tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
            extra = {
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            }
        async with httpx.AsyncClient(base_url=target.url, timeout=60,
                                     headers={"Authorization": f"Bearer {target.key}"}) as client:  # fmt: skip
            answer = await client.post("/v1/chat/completions", json=target.chat(**extra))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert target.found.engine_alive()

    @pytest.mark.parametrize(
        "extra",
        [
            {"logit_bias": {"abc": 1}},
            {"logit_bias": {"-5": 1}},
            {"logit_bias": {str(i): 1 for i in range(301)}},
            {"logit_bias": {"1": 1000}},
            {"stop": ["x"] * 5},
            {"stop": "x" * 600},
            {"grammar": "root ::= [a]*"},
            {"response_format": {"type": "regex", "regex": "a*"}},
            {"tool_choice": {"type": "function", "function": {"name": "f", "x": 1}}},
            {"top_k": 10**9},
            {"n": 5},
        ],
        ids=lambda extra: next(iter(extra)),
    )
    async def test_sampler_inputs_out_of_bounds_are_refused(
        self, target: Target, extra: dict[str, Any]
    ) -> None:
        async with httpx.AsyncClient(base_url=target.url, timeout=60,
                                     headers={"Authorization": f"Bearer {target.key}"}) as client:  # fmt: skip
            answer = await client.post("/v1/chat/completions", json=target.chat(**extra))
        assert answer.status_code == 400, answer.text
        assert target.found.engine_alive()


def _bounded(name: str) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=MAX_REPEAT)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    strings = st.fixed_dictionaries(
        {"type": st.just("string")},
        optional={"maxLength": _bounded("max"), "minLength": st.integers(0, 8),
                  "pattern": st.sampled_from(["^[a-z]{1,256}$", "^[0-9]{2,4}-[A-Z]{0,3}$", "^x+$"]),
                  "enum": st.lists(st.text("abc", max_size=5), min_size=1, max_size=5)},
    )  # fmt: skip
    numbers = st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number"])},
        optional={"minimum": st.integers(-1000, 0), "maximum": st.integers(1, 1000)},
    )
    return st.one_of(strings, numbers, st.just({"type": "boolean"}), st.just({"type": "null"}))


SCHEMAS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("array"), "items": inner},
            optional={"maxItems": _bounded("max"), "minItems": st.integers(0, 4)},
        ),
        st.builds(
            lambda props: {"type": "object", "properties": props, "required": sorted(props)[:2]},
            st.dictionaries(st.text("abcdef", min_size=1, max_size=6), inner, max_size=5),
        ),
        st.builds(lambda options: {"anyOf": options}, st.lists(inner, min_size=1, max_size=3)),
    ),
    max_leaves=8,
)
SAMPLING = st.fixed_dictionaries(
    {"max_tokens": st.integers(1, 6)},
    optional={
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "top_k": st.integers(0, 1000),
        "min_p": st.floats(0, 1), "repetition_penalty": st.floats(0, 10),
        "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
        "seed": st.integers(0, 2**31), "stop": st.lists(st.text(min_size=1, max_size=8), max_size=4),
        "logit_bias": st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=20),
    },
)  # fmt: skip


class TestFuzz:
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schema=SCHEMAS, sampling=SAMPLING, as_tool=st.booleans())
    def test_bounded_schemas_and_samplers_never_kill_the_engine(
        self, target: Target, schema: dict[str, Any], sampling: dict[str, Any], as_tool: bool
    ) -> None:
        if as_tool:
            tool = {"type": "function", "function": {"name": "f", "parameters":
                    {"type": "object", "properties": {"v": schema}}}}  # fmt: skip
            extra = {
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            }
        else:
            extra = {"response_format": {"type": "json_object", "schema": schema}}
        body = {**target.chat(**extra), **sampling}
        answer = httpx.post(f"{target.url}/v1/chat/completions", json=body, timeout=120,
                            headers={"Authorization": f"Bearer {target.key}"})  # fmt: skip
        assert target.found.engine_alive(), f"the engine died on {json.dumps(body)[:2000]}"
        assert answer.status_code in (200, 400), (answer.status_code, answer.text[:500])
