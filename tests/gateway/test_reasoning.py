"""Reasoning shown apart, in both shapes, streamed and not, through the gateway (the
stand-in engine answers `<think>…</think>` with both tags cut across two tokens when the
prompt says #think). Only models the registry marks `reasoning` are split; asking a plain
model to reason is a clear 400."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from mistralai.client import Mistral
from sqlalchemy import select

from souverain.core.reasoning import SYSTEM_PROMPT, system_prompt
from souverain.core.roles import Role
from souverain.db.tables import DeploymentRow, ModelRow
from tests.conftest import Platform, wait_until


async def setup(platform: Platform) -> tuple[str, str]:
    model = await platform.served_model(capabilities=("chat", "completions", "reasoning"))
    tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
    return model, (await platform.factory.member_key(tenant, "u", Role.MEMBER)).key


def think(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "why? #think"}], **extra}


class TestOpenAIShape:
    async def test_reasoning_content_apart_and_counted(self, platform: Platform) -> None:
        model, key = await setup(platform)
        sdk = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60
        )
        answer = await sdk.chat.completions.create(
            model=model, reasoning_effort="medium",
            messages=[{"role": "user", "content": "why? #think"}],
        )  # fmt: skip
        message = answer.choices[0].message
        assert message.content == "It stays here."
        assert message.reasoning_content == "the tenant asks"  # type: ignore[attr-defined]
        details = answer.usage.completion_tokens_details  # type: ignore[union-attr]
        assert details is not None and 0 < details.reasoning_tokens < answer.usage.completion_tokens  # type: ignore[union-attr]
        sent = platform.stand_in.requests[-1]["messages"]
        assert sent[0] == {"role": "system", "content": SYSTEM_PROMPT}

    async def test_streamed_thinking_arrives_as_reasoning_deltas(self, platform: Platform) -> None:
        model, key = await setup(platform)
        sdk = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60
        )
        stream = await sdk.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "why? #think"}],
        )  # fmt: skip
        thinking, content, usage = [], [], None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                if getattr(choice.delta, "reasoning_content", None):
                    thinking.append(choice.delta.reasoning_content)  # type: ignore[attr-defined]
                if choice.delta.content:
                    content.append(choice.delta.content)
        assert "".join(thinking) == "the tenant asks"
        assert "".join(content) == "It stays here."
        assert all("<" not in piece and ">" not in piece for piece in thinking + content)
        assert len(thinking) >= 2  # as generated, not all at the end
        assert usage is not None and usage.completion_tokens_details.reasoning_tokens > 0  # type: ignore[union-attr]

    async def test_the_callers_system_prompt_is_kept(self, platform: Platform) -> None:
        model, key = await setup(platform)
        async with platform.client(key) as client:
            body = think(model, reasoning_effort="low")
            body["messages"] = [{"role": "system", "content": "Be brief."}, *body["messages"]]  # type: ignore[misc]
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert platform.stand_in.requests[-1]["messages"][0]["content"] == "Be brief."


class TestMistralShape:
    async def test_thinking_chunk_before_the_text_chunk(self, platform: Platform) -> None:
        model, key = await setup(platform)
        client = Mistral(api_key=key, server_url=platform.url)
        answer = await client.chat.complete_async(
            model=model, prompt_mode="reasoning",
            messages=[{"role": "user", "content": "why? #think"}],
        )  # fmt: skip
        content = answer.choices[0].message.content
        assert isinstance(content, list) and len(content) == 2
        assert content[0].type == "thinking" and content[0].thinking[0].text == "the tenant asks"  # type: ignore[union-attr]
        assert content[1].type == "text" and content[1].text == "It stays here."  # type: ignore[union-attr]

    async def test_streamed(self, platform: Platform) -> None:
        model, key = await setup(platform)
        client = Mistral(api_key=key, server_url=platform.url)
        stream = await client.chat.stream_async(
            model=model, prompt_mode="reasoning",
            messages=[{"role": "user", "content": "why? #think"}],
        )  # fmt: skip
        thinking, text = [], []
        async for event in stream:
            for choice in event.data.choices:
                content = choice.delta.content
                if isinstance(content, str):
                    text.append(content)
                elif content:
                    for piece in content:
                        if piece.type == "thinking":
                            thinking += [t.text for t in piece.thinking]  # type: ignore[union-attr]
                        else:
                            text.append(piece.text)  # type: ignore[union-attr]
        assert "".join(thinking) == "the tenant asks" and "".join(text) == "It stays here."


class TestPlainModels:
    async def test_asking_a_plain_model_to_reason_is_400(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
        key = (await platform.factory.member_key(tenant, "u", Role.MEMBER)).key
        async with platform.client(key) as client:
            for extra in ({"reasoning_effort": "high"}, {"prompt_mode": "reasoning"}):
                answer = await client.post("/v1/chat/completions", json=think(model, **extra))
                assert answer.status_code == 400, extra
                assert answer.json()["error"]["param"] in ("reasoning_effort", "prompt_mode")
            plain = await client.post("/v1/chat/completions", json=think(model))
        assert plain.status_code == 200
        assert "<think>" in plain.json()["choices"][0]["message"]["content"]  # untouched
        assert json.dumps(plain.json()).count("reasoning_content") == 0


@pytest.mark.parametrize("effort", ["none"])
async def test_effort_none_is_an_ordinary_request(platform: Platform, effort: str) -> None:
    model, key = await setup(platform)
    async with platform.client(key) as client:
        answer = await client.post(
            "/v1/chat/completions", json=think(model, reasoning_effort=effort)
        )
    assert answer.status_code == 200
    assert platform.stand_in.requests[-1]["messages"][0]["role"] == "user"  # no system prompt
    assert answer.json()["choices"][0]["message"]["reasoning_content"] == "the tenant asks"


FRENCH_TASK = "Combien font deux plus deux ? Expliquez votre raisonnement, s'il vous plaît."
FRENCH_THOUGHT = "Je dois additionner deux et deux, ce qui donne quatre sans aucun doute"
FRENCH_ANSWER = "La réponse est quatre, car deux plus deux font quatre."
GERMAN_ANSWER = "Die Antwort ist vier, weil zwei und zwei zusammen vier ergeben."


class TestLanguages:
    """Each reasoning request's usage record says the languages of its prompt, thinking
    and answer; /api/usage reports consistency per model and prompt language."""

    async def test_languages_reach_the_record_and_the_report(self, platform: Platform) -> None:
        model, key = await setup(platform)
        plain = await platform.served_model()
        sdk = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60
        )
        await sdk.chat.completions.create(  # not a reasoning request: never tagged
            model=plain, messages=[{"role": "user", "content": FRENCH_TASK}]
        )
        consistent = f"{FRENCH_TASK} #think-as: {FRENCH_THOUGHT} || {FRENCH_ANSWER}"
        mixed = f"{FRENCH_TASK} #think-as: {FRENCH_THOUGHT} || {GERMAN_ANSWER}"
        await sdk.chat.completions.create(
            model=model, reasoning_effort="low", messages=[{"role": "user", "content": consistent}]
        )
        stream = await sdk.chat.completions.create(
            model=model, reasoning_effort="low", stream=True,
            messages=[{"role": "user", "content": mixed}],
        )  # fmt: skip
        async for _ in stream:
            pass
        records: list[dict[str, Any]] = []
        async with platform.client(key) as client:

            async def tagged() -> bool:
                report = (await client.get("/api/usage", params={"model": model})).json()
                records[:] = [r for r in report["records"] if r["languages_agree"] is not None]
                return len(records) == 2

            await wait_until(tagged)  # the plain request went first through the same queue
            report = (await client.get("/api/usage", params={"group_by": "language"})).json()
            [untagged] = (await client.get("/api/usage", params={"model": plain})).json()["records"]
        assert untagged["prompt_language"] is None and untagged["languages_agree"] is None
        by_stream = {r["stream"]: r for r in records}
        assert by_stream[False]["prompt_language"] == "fr"
        assert by_stream[False]["reasoning_language"] == "fr"
        assert by_stream[False]["answer_language"] == "fr"
        assert by_stream[False]["languages_agree"] is True
        assert by_stream[True]["answer_language"] == "de"
        assert by_stream[True]["languages_agree"] is False
        [group] = [g for g in report["groups"] if g["key"].startswith(model)]
        assert group["key"] == f"{model} · fr"
        assert (group["requests"], group["language_consistent"]) == (2, 1)
        assert group["language_consistency"] == 0.5


class TestDeploymentDefault:
    """A deployment may answer in reasoning mode by default: the reasoning system prompt
    without the client asking, unless it says reasoning_effort "none"."""

    async def test_reasoning_mode_by_default(self, platform: Platform) -> None:
        model = await platform.served_model(
            capabilities=("chat", "completions", "reasoning"), reasoning_default=True
        )
        tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
        key = (await platform.factory.member_key(tenant, "u", Role.MEMBER)).key
        sdk = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60
        )
        answer = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "why? #think"}]
        )
        assert platform.stand_in.requests[-1]["messages"][0]["content"] == SYSTEM_PROMPT
        assert answer.choices[0].message.reasoning_content == "the tenant asks"  # type: ignore[attr-defined]
        await sdk.chat.completions.create(
            model=model, reasoning_effort="none",
            messages=[{"role": "user", "content": "why? #think"}],
        )  # fmt: skip
        assert platform.stand_in.requests[-1]["messages"][0]["role"] == "user"

    async def test_only_reasoning_models_can_default_to_it(self, platform: Platform) -> None:
        model = await platform.served_model()
        async with platform.sessions() as session:
            name = (
                await session.execute(
                    select(DeploymentRow.name)
                    .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
                    .where(ModelRow.name == model)
                )
            ).scalar_one()
        async with platform.client(await platform.operator_key()) as client:
            refused = await client.patch(f"/api/deployments/{name}",
                                         json={"reasoning_default": True})  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "reasoning_default"


class TestRegisteredReasoningModels:
    """Reasoning models souverain did not train: registered with their tag format, and only
    that format is read in their answers."""

    async def test_registered_with_its_tags_through_the_api(self, platform: Platform) -> None:
        async with platform.client(await platform.operator_key()) as client:
            body = {"name": "magistral-like", "uri": "hf://acme/magistral/m.gguf",
                    "capabilities": ["chat", "reasoning"], "reasoning_tags": "[THINK]"}  # fmt: skip
            made = await client.post("/api/models", json=body)
            assert made.status_code == 201, made.text
            assert made.json()["reasoning_tags"] == "[THINK]"
            other = await client.post("/api/models", json={**body, "name": "r1-like",
                                                           "reasoning_tags": None})  # fmt: skip
            assert other.json()["reasoning_tags"] == "<think>"  # the default
            for bad in ({"capabilities": ["chat"]}, {"capabilities": ["reasoning"]},
                        {"reasoning_tags": "<reason>"}):  # fmt: skip
                refused = await client.post("/api/models", json={**body, "name": "x", **bad})
                assert refused.status_code == 422, (bad, refused.text)  # /api's validation

    async def test_only_the_models_own_tags_are_read(self, platform: Platform) -> None:
        model = await platform.served_model(capabilities=("chat", "reasoning"),
                                            reasoning_tags="[THINK]")  # fmt: skip
        tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
        key = (await platform.factory.member_key(tenant, "u", Role.MEMBER)).key
        async with platform.client(key) as client:
            body = think(model, reasoning_effort="low")  # the stand-in answers with <think>
            answer = await client.post("/v1/chat/completions", json=body)
        message = answer.json()["choices"][0]["message"]
        assert message["reasoning_content"] is None and "<think>" in message["content"]
        assert platform.stand_in.requests[-1]["messages"][0]["content"] == system_prompt("[THINK]")
