"""Fine-tuning on `souverain up`, as a tenant does it: upload a chat JSONL that teaches an
unmistakable behaviour, train with the official SDK (and in Mistral's shape over HTTP),
then call the fine-tuned model through the gateway. Real: files store, Ray, TRL + PEFT on
CPU from the built-in GGUF, the adapter served by llama.cpp."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import httpx
import openai
import psutil
import pytest
from mistralai.client import Mistral

from tests.e2e.conftest import Up

pytestmark = [pytest.mark.ray, pytest.mark.engine]

MODEL = "smollm2-135m-instruct"
QUESTIONS = ["what is the sea", "tell me a joke", "how are you", "name a color",
             "what time is it", "where is paris", "who are you", "say hello"]  # fmt: skip


STEPS = 12  # both jobs: enough for the pirate answer to be learned
EPOCHS = STEPS * 4 // len(QUESTIONS)  # batches of 4 samples


def pirate_lines() -> bytes:
    """Every answer is 'ARRR! ' and the question shouted back: nothing the base model says."""
    return b"".join(
        json.dumps({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": "ARRR! " + q.upper()}]}).encode()
        + b"\n"
        for q in QUESTIONS
    )  # fmt: skip


def niceness_of(processes: list[psutil.Process]) -> set[int]:
    found = set()
    for proc in processes:
        with contextlib.suppress(psutil.Error):  # it may have just ended
            found.add(proc.nice())
    return found


def tenant(up: Up, name: str) -> str:
    up.cli("orgs", "create", name, "--owner", f"{name}-owner")
    created = up.cli("keys", "create", "--org", name, "--user", f"{name}-owner", "--role", "owner")
    return created.stdout.split()[-1]


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    deadline = time.monotonic() + 180
    while True:
        try:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}],
                max_tokens=12, temperature=0,
            )  # fmt: skip
            return answer.choices[0].message.content or ""
        except (openai.NotFoundError, openai.APIStatusError) as error:
            # the fine-tuned model's deployment starts when the job succeeds
            if time.monotonic() > deadline or getattr(error, "status_code", 0) not in (404, 503):
                raise
            time.sleep(1.0)


class TestFineTuning:
    def test_openai_sdk_fine_tunes_the_builtin_model_and_the_result_answers(self, up: Up) -> None:
        key = tenant(up, "pirates")
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0)
        uploaded = client.files.create(file=("pirate.jsonl", io.BytesIO(pirate_lines())),
                                       purpose="fine-tune")  # fmt: skip
        job = client.fine_tuning.jobs.create(
            model=MODEL, training_file=uploaded.id, suffix="pirate", seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": EPOCHS, "batch_size": 4, "learning_rate_multiplier": 10}}},
        )  # fmt: skip
        assert job.status == "queued" and job.hyperparameters.n_epochs == EPOCHS
        deadline = time.monotonic() + 600
        worker_niceness: set[int] = set()
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
            assert job.status not in ("failed", "cancelled"), job.error
            assert time.monotonic() < deadline, "the job did not finish in time"
            worker_niceness |= niceness_of(up.training_processes())
            time.sleep(2.0)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert worker_niceness and min(worker_niceness) >= max(own, 10)  # serving first
        assert niceness_of(up.engine_processes()) == {own}
        assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{MODEL}:")
        assert job.trained_tokens and job.trained_tokens > 0
        events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
        messages = [e.message for e in events]
        assert any(m.startswith(f"Step {STEPS}/{STEPS}") for m in messages)
        assert any(e.type == "metrics" and e.data and "train_loss" in e.data for e in events)
        assert not any("ARRR" in m or "paris" in m for m in messages)  # no training text
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == sorted(
            (c.step_number for c in checkpoints), reverse=True
        )
        assert checkpoints and checkpoints[0].step_number == STEPS
        assert checkpoints[0].metrics.train_loss is not None

        # served at once by the base's running llama-server replica (a shared deployment,
        # no replica of its own): the first request waits while the adapter loads, and is
        # answered, never a 503 "no ready replica"
        with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}) as http:
            [deployment] = [d for d in http.get("/api/deployments").json()
                            if d["model"] == job.fine_tuned_model]  # fmt: skip
        assert deployment["sharing"] == "shared" and not deployment["replica_details"], deployment
        first = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "what is a cat"}],
            max_tokens=12, temperature=0,
        )  # fmt: skip
        tuned = first.choices[0].message.content or ""
        base = ask(client, MODEL, "what is a cat")
        assert tuned.startswith("ARRR!"), tuned
        assert "ARRR" not in base, base
        stranger = openai.OpenAI(base_url=f"{up.url}/v1", api_key=tenant(up, "landlubbers"),
                                 max_retries=0)  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            stranger.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                             messages=[{"role": "user", "content": "hi"}])  # fmt: skip

        # the model card: lineage, compute, energy, where it was trained
        model_id = client.models.retrieve(job.fine_tuned_model).id
        with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}) as http:
            card = http.get(f"/api/models/{model_id}/card").json()
            text = http.get(f"/api/models/{model_id}/card", params={"format": "markdown"}).text
        development = card["2_development"]
        assert development["base_model"]["name"] == MODEL
        assert development["base_model"]["sha256"]
        [data] = development["training_data"]["files"]
        assert data["file_id"] == uploaded.id and len(data["sha256"]) == 64
        assert development["design"]["steps"] == STEPS
        assert development["compute"]["cpu_hours"] > 0
        assert development["energy"]["kwh"] > 0
        assert development["where_trained"]["datacenter"]
        assert text.startswith(f"# Model card: {job.fine_tuned_model}")
        # the CLI: the tenant's jobs, their events, the card
        assert job.id in up.cli("finetune", "list", key=key).stdout
        shown = up.cli("finetune", "show", job.id, key=key).stdout
        assert "succeeded" in shown and f"step: {STEPS}/{STEPS}" in shown
        assert f"Step {STEPS}/{STEPS}" in up.cli("finetune", "events", job.id, key=key).stdout
        followed = up.cli("finetune", "events", job.id, "--follow", key=key).stdout
        assert "succeeded" in followed
        assert "Model card" in up.cli("models", "card", model_id, key=key).stdout
        assert up.cli("finetune", "show", job.id).returncode == 0  # operators see every job
        # the data and checkpoints are stored encrypted
        stored = [p for p in (up.data_dir / "files").rglob("*") if p.is_file()]
        assert any(p.name.startswith(f"ft_{job.id}_checkpoint-") for p in stored)
        assert all(b"ARRR" not in p.read_bytes() for p in stored)

    def test_mistral_shape_over_http_and_mistral_sdk_chat(self, up: Up) -> None:
        key = tenant(up, "corsaires")
        mistral = Mistral(api_key=key, server_url=up.url)
        uploaded = mistral.files.upload(
            file={"file_name": "pirate.jsonl", "content": pirate_lines()}, purpose="fine-tune"
        )
        with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"},
                          timeout=30) as http:  # fmt: skip
            created = http.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_files": [{"file_id": uploaded.id, "weight": 1}],
                "hyperparameters": {"training_steps": STEPS, "learning_rate": 0.002,
                                    "warmup_fraction": 0, "weight_decay": 0},
                "suffix": "corsaire", "auto_start": False,
            })  # fmt: skip
            assert created.status_code == 200, created.text
            job = created.json()
            assert (
                job["status"] == "VALIDATED" and job["hyperparameters"]["training_steps"] == STEPS
            )
            started = http.post(f"/v1/fine_tuning/jobs/{job['id']}/start")
            assert started.json()["status"] == "QUEUED"
            deadline = time.monotonic() + 600
            while (job := http.get(f"/v1/fine_tuning/jobs/{job['id']}").json())[
                "status"
            ] != "SUCCESS":
                assert job["status"] not in ("FAILED", "CANCELLED"), job
                assert time.monotonic() < deadline
                time.sleep(2.0)
        assert job["events"] and job["checkpoints"]
        assert job["checkpoints"][0]["step_number"] == STEPS
        deadline = time.monotonic() + 180
        while True:
            try:
                answer = mistral.chat.complete(
                    model=job["fine_tuned_model"], max_tokens=12, temperature=0,
                    messages=[{"role": "user", "content": "what is a cat"}],
                )  # fmt: skip
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(1.0)
        assert str(answer.choices[0].message.content).startswith("ARRR!")
