"""Hyperparameters that cannot learn are refused before any job exists: a 400 in the API's
own error shape, naming the setting and saying why, through the official openai SDK and in
Mistral's shape; the bounds are the recipes' typed configurations (training/configs.py)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import openai
import pytest

from souverain.core.roles import Role
from tests.conftest import Platform

PROBLEM = {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}


async def tenant(platform: Platform) -> tuple[str, str, openai.OpenAI]:
    """A base model, an owner's key and a reinforcement file of theirs."""
    model = await platform.served_model()
    org = await platform.factory.tenant(roles={"o": Role.OWNER})
    key = (await platform.factory.member_key(org, "o", Role.OWNER)).key
    sdk = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)
    lines = (json.dumps(PROBLEM) + "\n").encode() * 4
    stored = await asyncio.to_thread(
        sdk.files.create, file=("rl.jsonl", io.BytesIO(lines)), purpose="fine-tune"
    )
    return model, stored.id, sdk


def reinforcement(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {
        "grader": {"type": "magistral"}, "hyperparameters": hyperparameters}}  # fmt: skip


CANNOT_LEARN = [
    (reinforcement(group_size=1), "group_size", "no advantage"),
    (reinforcement(learning_rate_multiplier=0), "learning_rate_multiplier", "nothing is learnt"),
    (reinforcement(learning_rate_multiplier=1000), "learning_rate_multiplier", "diverges"),
    (reinforcement(max_tokens=24), "max_tokens", "thinking block"),
    (reinforcement(temperature=0.01), "temperature", "the same"),
    (reinforcement(collapse_margin=-0.5), "collapse_margin", "from 0 to 1"),
    (reinforcement(batch_size=8, group_size=16), "batch_size", "sampled together"),
    (reinforcement(colour="red"), "colour", "not permitted"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}},
     "batch_size", "from 1 to 256"),
]  # fmt: skip


class TestSettingsThatCannotLearn:
    @pytest.mark.parametrize(("method", "param", "reason"), CANNOT_LEARN)
    async def test_refused_with_the_setting_and_why_before_any_job(
        self, platform: Platform, method: dict[str, Any], param: str, reason: str
    ) -> None:
        model, file_id, sdk = await tenant(platform)
        with pytest.raises(openai.BadRequestError) as refused:
            await asyncio.to_thread(sdk.fine_tuning.jobs.create, model=model,
                                    training_file=file_id, method=method)  # type: ignore[arg-type]  # fmt: skip
        error = refused.value.body
        assert isinstance(error, dict) and error["param"] == param, error
        assert reason in error["message"], error
        assert error["type"] == "invalid_request_error"
        listed = await asyncio.to_thread(sdk.fine_tuning.jobs.list)
        assert listed.data == []

    async def test_mistral_shape_a_rate_of_zero_or_a_huge_one(self, platform: Platform) -> None:
        model, file_id, sdk = await tenant(platform)
        async with platform.client(sdk.api_key) as client:
            for rate in (0, 0.5):
                answer = await client.post("/v1/fine_tuning/jobs", json={
                    "model": model, "training_files": [{"file_id": file_id}],
                    "hyperparameters": {"learning_rate": rate}})  # fmt: skip
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["param"] == "learning_rate"

    async def test_good_settings_are_taken_as_given(self, platform: Platform) -> None:
        model, file_id, sdk = await tenant(platform)
        job = await asyncio.to_thread(
            sdk.fine_tuning.jobs.create, model=model, training_file=file_id,
            method=reinforcement(group_size=4, max_tokens=96, collapse_margin=0.2),  # type: ignore[arg-type]
        )  # fmt: skip
        assert job.method is not None and job.method.reinforcement is not None
        shown = job.method.reinforcement.hyperparameters.model_dump()
        assert (shown["group_size"], shown["max_tokens"], shown["collapse_margin"]) == (4, 96, 0.2)
        assert shown["length_cache"] == 48  # half the budget, not given
