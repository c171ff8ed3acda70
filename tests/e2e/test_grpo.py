"""Reasoning trained the Magistral way on `souverain up`, as a tenant does it: a cold-start
supervised job on worked examples from the shipped generator (all five languages), then a
short GRPO job (method `reinforcement`, the magistral grader) from that model, evaluated on
held-out problems before and after, and the result served as a reasoning model: both SDKs
get its thinking apart from its answer. Real: files store, Ray, TRL + PEFT on CPU,
rollouts in llama.cpp, the adapter served by llama.cpp."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import openai
import pytest
from mistralai.client import Mistral

from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.training import mathgen
from tests.e2e.conftest import Up
from tests.e2e.test_fine_tuning import tenant

pytestmark = [pytest.mark.ray, pytest.mark.engine]

MODEL = "smollm2-135m-instruct"


def lines(split: str, count: int, *, worked: bool, skip: int = 0) -> bytes:
    chosen = list(mathgen.problems(split, skip + count))[skip:]
    system = SYSTEM_PROMPT if worked else None
    return "".join(
        json.dumps(p.chat(worked=worked, system=system), ensure_ascii=False) + "\n" for p in chosen
    ).encode()


def upload(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def wait(client: openai.OpenAI, job_id: str, timeout_s: float = 900) -> Any:
    deadline = time.monotonic() + timeout_s
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status != "succeeded":
        assert job.status not in ("failed", "cancelled"), job.error
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(2.0)
    return job


def reasoning_answer(client: openai.OpenAI, model: str, question: str) -> Any:
    deadline = time.monotonic() + 180
    while True:
        try:
            return client.chat.completions.create(
                model=model, reasoning_effort="medium", max_tokens=96, temperature=0,
                messages=[{"role": "user", "content": question}],
            )  # fmt: skip
        except (openai.NotFoundError, openai.APIStatusError) as error:
            if time.monotonic() > deadline or getattr(error, "status_code", 0) not in (404, 503):
                raise
            time.sleep(1.0)


class TestReinforcement:
    def test_cold_start_then_grpo_then_served_reasoning(self, up: Up) -> None:
        key = tenant(up, "thinkers")
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0, timeout=120)
        worked = upload(client, "cold.jsonl", lines("train", 40, worked=True))
        cold = client.fine_tuning.jobs.create(
            model=MODEL, training_file=worked, suffix="cold",
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}}},
        )  # fmt: skip
        cold = wait(client, cold.id)
        assert "reasoning" in _model(up, key, cold.fine_tuned_model)["capabilities"]

        problems = upload(client, "rl.jsonl", lines("train", 12, worked=False, skip=40))
        # held-out: 3 problems in the training templates, 2 in templates never trained on
        heldout = upload(client, "heldout.jsonl", lines("heldout", 3, worked=False)
                         + lines("heldout-templates", 2, worked=False))  # fmt: skip
        job = client.fine_tuning.jobs.create(
            model=cold.fine_tuned_model, training_file=problems, validation_file=heldout,
            suffix="grpo", seed=3,
            method={"type": "reinforcement", "reinforcement": {
                "grader": {"type": "magistral"},
                "hyperparameters": {"training_steps": 2, "batch_size": 2, "group_size": 4,
                                    "max_tokens": 64, "length_cache": 16,
                                    "dev_samples": 2, "dev_steps": 2,
                                    # CI time: fewer than the defaults (4 and 2)
                                    "eval_samples_per_prompt": 2, "refill_rounds": 0}}},
        )  # fmt: skip
        assert job.method.type == "reinforcement"  # type: ignore[union-attr]
        job = wait(client, job.id)
        events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
        steps = [
            e.data for e in events if e.type == "metrics" and e.data and "reward_mean" in e.data
        ]
        assert sorted(s["step"] for s in steps) == [1, 2]
        devs = sorted((e.data for e in events if e.data and "best_step" in e.data),
                      key=lambda d: d["step"])  # fmt: skip
        assert [d["step"] for d in devs] == [0, 2]  # the starting adapter is a candidate
        best = max(devs, key=lambda d: d["mean_reward"])  # the first of the best is kept
        assert devs[-1]["best_step"] == best["step"]
        for step in steps:
            assert 0.0 <= step["zero_advantage_fraction"] <= 1.0
            assert step["rollout_s"] > 0 and step["format_rate"] is not None
            assert 0 <= step["informative_groups"] <= 2 and step["tis_cap"] == 2.0
        evaluated = sorted((e.data for e in events if e.data and "evaluation" in e.data),
                           key=lambda d: d["step"])  # events come newest first  # fmt: skip
        evaluations = [d["evaluation"] for d in evaluated]
        assert len(evaluations) == 2  # before the first step and after the last
        for evaluation in evaluations:
            assert evaluation["overall"]["samples"] == 5
            assert evaluation["overall"]["sampled"]["per_prompt"] == 2  # beside the greedy one
            assert set(evaluation["languages"]) <= set(mathgen.LANGUAGES)
        change = evaluations[-1]["change"]["sampled_mean_reward"]  # paired, with its interval
        assert change["prompts"] == 5 and change["low"] <= change["delta"] <= change["high"]
        assert {k: v["samples"] for k, v in evaluations[0]["templates"].items()} == {
            "trained": 3, "unseen": 2}  # fmt: skip
        unseen = evaluations[-1]["change_by_templates"]["unseen"]["sampled_mean_reward"]
        assert unseen["prompts"] == 2 and unseen["low"] <= unseen["delta"] <= unseen["high"]
        words = ("apples", "pommes", "books", "livres")
        assert not any(w in e.message for e in events for w in words)

        # the model: a reasoning model of this organisation, its card says how it was made
        tuned = job.fine_tuned_model
        row = _model(up, key, tuned)  # registered at once; served once its replica is ready
        assert "reasoning" in row["capabilities"]
        model_id = row["id"]
        with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}) as http:
            card = http.get(f"/api/models/{model_id}/card").json()
        lineage = card["2_development"]["design"]
        assert lineage["method"] == "reinforcement"
        assert lineage["grader"] == {"type": "magistral"}
        assert lineage["started_from"]["model"] == cold.fine_tuned_model
        assert card["3_evaluation"]["training"]["before"]["overall"]["samples"] == 5
        assert card["3_evaluation"]["training"]["after"] == evaluations[-1]
        assert card["3_evaluation"]["training"]["change"] == evaluations[-1]["change"]
        assert card["3_evaluation"]["training"]["change_by_templates"]["unseen"] == (
            evaluations[-1]["change_by_templates"]["unseen"])  # fmt: skip

        # an evaluation job of the trained model on the held-out file
        with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as http:  # fmt: skip
            created = http.post(f"/api/models/{tuned}/evaluations",
                                json={"file_id": heldout, "max_tokens": 64})  # fmt: skip
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 600
            while (listed := http.get(f"/api/models/{tuned}/evaluations").json()["data"])[0][
                "status"
            ] != "succeeded":
                assert listed[0]["status"] not in ("failed", "cancelled"), listed[0]
                assert time.monotonic() < deadline, "the evaluation did not finish in time"
                time.sleep(2.0)
            card = http.get(f"/api/models/{model_id}/card").json()
        [evaluation] = listed
        assert evaluation["id"] == created.json()["id"]
        assert evaluation["result"]["overall"]["samples"] == 5
        assert 0.0 <= evaluation["result"]["overall"]["format_rate"] <= 1.0
        assert card["3_evaluation"]["evaluations"][0]["result"] == evaluation["result"]
        assert all(j.id != evaluation["id"] for j in client.fine_tuning.jobs.list().data)

        # another organisation can neither see nor train from these models
        stranger = openai.OpenAI(base_url=f"{up.url}/v1", api_key=tenant(up, "onlookers"),
                                 max_retries=0)  # fmt: skip
        theirs = upload(stranger, "rl.jsonl", lines("train", 4, worked=False))
        for model in (cold.fine_tuned_model, tuned):
            with pytest.raises(openai.NotFoundError):
                stranger.fine_tuning.jobs.create(
                    model=model, training_file=theirs,
                    method={"type": "reinforcement",
                            "reinforcement": {"grader": {"type": "magistral"}}},
                )  # fmt: skip
        with httpx.Client(base_url=up.url,
                          headers={"Authorization": f"Bearer {stranger.api_key}"}) as http:  # fmt: skip
            assert http.post(f"/api/models/{tuned}/evaluations",
                             json={"file_id": theirs}).status_code == 404  # fmt: skip
            assert http.get(f"/api/models/{tuned}/evaluations").status_code == 404

        # served: the thinking apart from the answer, in both SDKs
        answer = reasoning_answer(client, tuned, "Calcula cuánto es 12 + 30 y da el resultado.")
        message = answer.choices[0].message
        assert message.reasoning_content, message  # type: ignore[attr-defined]
        assert "<think>" not in (message.content or "")
        mistral = Mistral(api_key=key, server_url=up.url)
        said = mistral.chat.complete(
            model=tuned, prompt_mode="reasoning", max_tokens=96, temperature=0,
            messages=[{"role": "user", "content": "Combien font 7 × 6 ? Donnez le résultat."}],
        )  # fmt: skip
        content = said.choices[0].message.content
        assert isinstance(content, list) and content[0].type == "thinking", content

    def test_graders_that_would_run_code_or_do_not_exist_are_refused(self, up: Up) -> None:
        key = tenant(up, "graders")
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0)
        problems = upload(client, "rl.jsonl", lines("train", 4, worked=False))
        for grader, status in (
            ({"type": "python", "source": "import os\ndef grade(s, i): os.system('id')"}, 400),
            (
                {
                    "type": "multi",
                    "graders": {
                        "a": {
                            "type": "string_check",
                            "operation": "eq",
                            "input": "{{sample.output_text}}",
                            "reference": "{{item.answer}}",
                        }
                    },
                    "calculate_output": "__import__('os').system('id')",
                },
                400,
            ),
            ({"type": "magistral"}, 400),  # group_size out of bounds: cannot learn
        ):
            with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}) as http:
                refused = http.post("/v1/fine_tuning/jobs", json={
                    "model": MODEL, "training_file": problems,
                    "method": {"type": "reinforcement", "reinforcement": {
                        "grader": grader, "hyperparameters": {"group_size": 1000}}}})  # fmt: skip
            assert refused.status_code == status, refused.text
            assert refused.json()["error"]["message"]
        assert client.fine_tuning.jobs.list().data == []  # nothing was created


def _model(up: Up, key: str, model: str | None) -> dict[str, Any]:
    with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}) as http:
        listed = http.get("/api/models").json()
    rows = listed["data"] if isinstance(listed, dict) else listed
    [row] = [m for m in rows if m["name"] == model]
    return dict(row)
