"""`souverain up` end to end: the official SDKs, the CLI, the engine's own door, a killed
engine coming back, Ctrl-C leaving nothing behind, and a second start reusing everything.

Real parts only: a `souverain up` process with its embedded Ray head, and llama.cpp
serving SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from mistralai.client import Mistral

from tests.e2e.conftest import Up

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
EMBEDDINGS = "all-minilm-l6-v2"
QUESTION = [{"role": "user", "content": "Name three colours."}]


def sdk(up: Up) -> openai.OpenAI:
    assert up.first_key
    return openai.OpenAI(base_url=f"{up.url}/v1", api_key=up.first_key, max_retries=0)


class TestFirstStart:
    def test_banner_gives_url_docs_and_a_key_once(self, up: Up) -> None:
        text = "".join(up.output)
        assert f"{up.url}/v1" in text and f"{up.url}/docs" in text
        assert up.first_key is not None
        assert f"{MODEL}: ready" in text
        assert up.config.stat().st_mode & 0o777 == 0o600
        assert up.first_key in up.config.read_text()

    def test_a_newcomer_gets_an_owner_key_for_files_and_fine_tuning(self, up: Up) -> None:
        """The README's next steps after `up` need an organisation's key: the banner gives
        one beside the operator's, says which does what, and keeps it in a 0600 file."""
        text = "".join(up.output)
        assert "Owner API key of the organisation 'default'" in text
        owner_file = up.config.with_name("owner.key")
        assert owner_file.stat().st_mode & 0o777 == 0o600
        owner = owner_file.read_text().strip()
        assert owner != up.first_key
        assert "sk-souv-" not in text  # its output is not a terminal: no key in a log
        assert f"read it from {owner_file}" in text.replace("\n", "")
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=owner, max_retries=0)
        line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        uploaded = client.files.create(file=("t.jsonl", io.BytesIO(line)), purpose="fine-tune")
        assert uploaded.bytes == len(line)
        client.files.delete(uploaded.id)

    def test_docs_and_health_are_public(self, up: Up) -> None:
        assert httpx.get(f"{up.url}/healthz").status_code == 200
        assert httpx.get(f"{up.url}/readyz").json()["ready_replicas"] >= 1
        assert httpx.get(f"{up.url}/openapi.json").status_code == 200


class TestOpenAISdk:
    def test_models_list(self, up: Up) -> None:
        assert MODEL in {m.id for m in sdk(up).models.list()}

    def test_chat(self, up: Up) -> None:
        answer = sdk(up).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.completion_tokens > 0

    def test_stream_with_usage_agrees_with_non_stream(self, up: Up) -> None:
        client = sdk(up)
        params = {
            "model": MODEL,
            "messages": QUESTION,
            "max_tokens": 24,
            "temperature": 0,
            "seed": 7,
        }
        whole = client.chat.completions.create(**params)  # type: ignore[call-overload]
        chunks = list(
            client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )  # type: ignore[call-overload]
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        final = chunks[-1]
        assert final.choices == [] and final.usage is not None
        assert final.usage.prompt_tokens == whole.usage.prompt_tokens
        assert final.usage.completion_tokens == whole.usage.completion_tokens

    def test_stream_without_usage_has_no_usage_chunk(self, up: Up) -> None:
        chunks = list(
            sdk(up).chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=8, stream=True
            )
        )  # type: ignore[call-overload]
        assert chunks and all(c.usage is None for c in chunks)

    def test_completions(self, up: Up) -> None:
        answer = sdk(up).completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8
        )
        assert answer.choices[0].text and answer.usage and answer.usage.completion_tokens <= 8

    def test_bad_request_is_an_sdk_error_in_openai_shape(self, up: Up) -> None:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk(up).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10**9)  # type: ignore[arg-type]
        assert raised.value.body["param"] == "max_tokens"  # type: ignore[index]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{up.url}/v1", api_key="sk-souv-wrong").models.list()
        with pytest.raises(openai.NotFoundError):
            sdk(up).chat.completions.create(model="gpt-4o", messages=QUESTION)  # type: ignore[arg-type]


class TestMistralSdk:
    def test_complete_and_stream(self, up: Up) -> None:
        client = Mistral(api_key=up.first_key, server_url=up.url)
        answer = client.chat.complete(model=MODEL, messages=QUESTION, max_tokens=12)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        assert answer.usage.completion_tokens > 0
        pieces = [
            event.data.choices[0].delta.content or ""
            for event in client.chat.stream(model=MODEL, messages=QUESTION, max_tokens=12)  # type: ignore[arg-type]
            if event.data.choices
        ]
        assert "".join(str(p) for p in pieces)


class TestEngineDoor:
    def test_engines_refuse_calls_without_their_replica_secret(self, up: Up) -> None:
        urls = up.replica_urls()
        assert urls
        # engines serve HTTPS under the installation's authority (tests/security/
        # test_engine_tls.py checks the certificates); here: the secret is still asked for
        engine = httpx.Client(verify=False)  # noqa: S501
        for url in urls:
            assert url.startswith("https://127.0.0.1")
            assert engine.get(f"{url}/v1/models").status_code == 401
            wrong = {"Authorization": f"Bearer {up.first_key}"}
            assert engine.get(f"{url}/v1/models", headers=wrong).status_code == 401
        body = {"messages": QUESTION, "max_tokens": 2}
        assert all(
            engine.post(f"{url}/v1/chat/completions", json=body).status_code in (401, 404)
            for url in urls
        )


class TestCpuPriority:
    def test_engines_run_at_the_servers_own_cpu_priority(self, up: Up) -> None:
        """Not at the niceness 15 Ray gives its workers: there, every token the gateway
        relayed preempted the engine's decoding threads."""
        engines = up.engine_processes()
        assert engines
        assert [p.nice() for p in engines] == [os.getpriority(os.PRIO_PROCESS, 0)] * len(engines)


class TestNothingListensOutside:
    def test_every_listening_socket_of_up_is_on_the_loopback_address(self, up: Up) -> None:
        """The API, Ray (GCS, raylet, workers, agents, metrics) and the engines: all of
        them, since `up` was asked for nothing else."""
        assert up.process is not None
        root = psutil.Process(up.process.pid)
        tree = {root.pid} | {child.pid for child in root.children(recursive=True)}
        listening = [
            (c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in tree
        ]
        assert len(listening) >= 4  # the API, GCS, raylet, an engine at least
        loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
        outside = [entry for entry in listening if entry[0] not in loopback]
        assert not outside, outside


class TestEmbeddings:
    def test_openai_and_mistral_sdks_get_real_embeddings(self, up: Up) -> None:
        client = sdk(up)
        deadline = time.monotonic() + 180
        while EMBEDDINGS not in {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, "the built-in embeddings model never became ready"
            time.sleep(1)
        texts = [
            "The cat sits on the mat",
            "A feline rests on a rug",
            "Quarterly revenue grew by 8 %",
        ]
        answer = client.embeddings.create(model=EMBEDDINGS, input=texts)  # the SDK asks for base64
        vectors = [item.embedding for item in answer.data]
        assert [len(v) for v in vectors] == [384, 384, 384]
        assert answer.usage.prompt_tokens > 0

        def cosine(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
        floats = client.embeddings.create(
            model=EMBEDDINGS, input="bonjour", encoding_format="float"
        )
        assert len(floats.data[0].embedding) == 384
        mistral = Mistral(api_key=up.first_key, server_url=up.url)
        same = mistral.embeddings.create(model=EMBEDDINGS, inputs=texts[:1])
        assert same.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MODEL, input="a chat model does not embed")


class TestFilesAndBatches:
    def test_both_sdks_run_a_batch_on_souverain_up(self, up: Up) -> None:
        import io
        import json

        up.cli("orgs", "create", "batchers", "--owner", "bea")
        created = up.cli("keys", "create", "--org", "batchers", "--user", "bea", "--role", "owner")
        key = created.stdout.split()[-1]
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0)
        lines = b"".join(
            json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "max_tokens": 4,
                                 "messages": [{"role": "user", "content": f"Say {i}."}]}}).encode() + b"\n"
            for i in range(4)
        )  # fmt: skip
        uploaded = client.files.create(file=("q.jsonl", io.BytesIO(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")  # fmt: skip
        mistral = Mistral(api_key=key, server_url=up.url)
        job = mistral.batch.jobs.create(
            endpoint="/v1/chat/completions", model=MODEL,
            requests=[{"custom_id": "m0", "body": {"max_tokens": 4,
                       "messages": [{"role": "user", "content": "Bonjour"}]}}],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while (batch := client.batches.retrieve(batch.id)).status != "completed":
            assert batch.status not in ("failed", "cancelled") and time.monotonic() < deadline
            time.sleep(0.5)
        while (job := mistral.batch.jobs.get(job_id=job.id)).status != "SUCCESS":
            assert job.status not in ("FAILED", "CANCELLED") and time.monotonic() < deadline
            time.sleep(0.5)
        answers = client.files.content(batch.output_file_id).read().splitlines()
        assert sorted(json.loads(a)["custom_id"] for a in answers) == ["q0", "q1", "q2", "q3"]
        [answer] = mistral.files.download(file_id=job.output_file).read().splitlines()
        assert json.loads(answer)["response"]["body"]["choices"][0]["message"]["content"]
        # stored under the data directory, encrypted
        stored = list((up.data_dir / "files").rglob("obj_*"))
        assert stored and all(b"Say 1." not in p.read_bytes() for p in stored)


class TestCli:
    def test_operator_workflow(self, up: Up) -> None:
        assert "acme" in up.cli("orgs", "create", "acme", "--owner", "alice").stdout
        created = up.cli(
            "keys", "create", "--org", "acme", "--user", "alice", "--role", "owner"
        ).stdout
        alice_key = created.split()[-1]
        assert alice_key.startswith("sk-souv-")
        assert "acme" in up.cli("orgs", "list").stdout
        up.cli(
            "datacenters",
            "add",
            "fra1",
            "--name",
            "Frankfurt 1",
            "--country",
            "DE",
            "--operator",
            "Acme DC",
            "--operator-country",
            "DE",
            "--certification",
            "C5",
            "--carbon-intensity",
            "380",
        )
        listed = up.cli("datacenters", "list").stdout
        assert "fra1" in listed and "DE" in listed
        assert "local" in up.cli("nodes", "list").stdout
        assert MODEL in up.cli("models", "list").stdout
        assert _status(up.cli("deployments", "list").stdout, MODEL) == "ready"
        # alice (owner of acme) sees her org only, and cannot add datacenters
        assert "acme" in up.cli("orgs", "list", key=alice_key).stdout
        refused = up.cli(
            "datacenters",
            "add",
            "x1",
            "--name",
            "x",
            "--country",
            "FR",
            "--operator",
            "x",
            "--operator-country",
            "FR",
            "--carbon-intensity",
            "1",
            key=alice_key,
            check=False,
        )
        assert refused.returncode == 1 and "403" in refused.stderr
        reply = up.cli("chat", "--message", "Say hello.", "--max-tokens", "8", key=alice_key)
        assert reply.stdout.strip()
        usage = up.cli("usage", "--by", "status").stdout
        assert "ok" in usage
        keys = up.cli("keys", "list").stdout
        assert "sk-souv-" not in keys
        assert "org.create" in up.cli("audit", "list", "--action", "org.create").stdout
        assert "intact" in up.cli("audit", "verify").stdout

    def test_register_deploy_scale_and_delete_a_model(self, up: Up, tmp_path) -> None:  # type: ignore[no-untyped-def]
        from souverain.node.artifacts import builtin_path

        outside = tmp_path / "my-model.gguf"
        outside.write_bytes(builtin_path(MODEL).read_bytes())
        refused = up.cli("models", "register", "my-model", str(outside), check=False)
        assert refused.returncode != 0 and "model roots" in refused.stdout + refused.stderr
        roots = up.data_dir / "models"  # the default model root of `souverain up`
        roots.mkdir(exist_ok=True)
        gguf = roots / "my-model.gguf"
        outside.rename(gguf)
        up.cli("models", "register", "my-model", str(gguf), "--license", "Apache-2.0",
               "--capability", "chat", "--capability", "reasoning", "--reasoning-tags", "[THINK]")  # fmt: skip
        assert "my-model" in up.cli("models", "list").stdout
        up.cli(
            "deployments",
            "create",
            "mine",
            "--model",
            "my-model",
            "--datacenter",
            "local",
            "--cpus",
            "0.5",
        )
        deadline = time.monotonic() + 120
        while _status(up.cli("deployments", "list").stdout, "mine") != "ready":
            assert time.monotonic() < deadline, up.cli("deployments", "list").stdout
            time.sleep(1)
        answer = sdk(up).chat.completions.create(model="my-model", messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
        assert answer.choices[0].message.content is not None
        _thinks_apart_in_both_sdks(up, "my-model")
        up.cli("deployments", "scale", "mine", "0")
        while _status(up.cli("deployments", "list").stdout, "mine") != "stopped":
            assert time.monotonic() < deadline
            time.sleep(1)
        up.cli("deployments", "delete", "mine")
        while "mine" in up.cli("deployments", "list").stdout:
            assert time.monotonic() < deadline
            time.sleep(1)


# Examples the built-in model copies, greedily, in Magistral's tag format: a reasoning model
# souverain did not train, registered by the operator with its tags.
THINKING = [
    {"role": "system", "content": "Think inside [THINK] and [/THINK], then answer."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "[THINK]2 plus 2 is 4.[/THINK]The answer is 4."},
    {"role": "user", "content": "What is 3 + 3?"},
    {"role": "assistant", "content": "[THINK]3 plus 3 is 6.[/THINK]The answer is 6."},
    {"role": "user", "content": "What is 4 + 4?"},
]


def _thinks_apart_in_both_sdks(up: Up, model: str) -> None:
    """openai: the thinking in `reasoning_content`; mistralai: a thinking chunk first."""
    assert up.first_key
    answer = sdk(up).chat.completions.create(
        model=model,
        messages=THINKING,
        reasoning_effort="low",
        temperature=0,
        max_tokens=32,  # type: ignore[arg-type]
    )
    message = answer.choices[0].message
    thinking = getattr(message, "reasoning_content", None)
    assert thinking and "THINK]" not in thinking, message
    assert message.content is not None and "THINK]" not in message.content, message
    mistral = Mistral(api_key=up.first_key, server_url=up.url)
    said = mistral.chat.complete(model=model, messages=THINKING, prompt_mode="reasoning",  # type: ignore[arg-type]
                                 temperature=0, max_tokens=32)  # fmt: skip
    content = said.choices[0].message.content
    assert isinstance(content, list) and [c.type for c in content] == ["thinking", "text"]
    said_thinking = content[0].thinking[0].text  # type: ignore[union-attr]
    assert said_thinking and "THINK]" not in said_thinking
    assert "THINK]" not in content[1].text  # type: ignore[union-attr]


def _row(table: str, name: str) -> str:
    return next((line for line in table.splitlines() if f" {name} " in line), "")


def _status(table: str, name: str) -> str:
    """The status cell of a `deployments list` row (the column headed `status`)."""
    header = [cell.strip() for cell in _row(table, "status").split("┃")]
    column = header.index("status") if "status" in header else 5
    cells = [cell.strip() for cell in _row(table, name).split("│")]
    return cells[column] if len(cells) > column else ""


class TestExportAndErasure:
    def test_the_readme_exports_an_organisation_then_erases_it_with_proof(
        self, up: Up, tmp_path: Path
    ) -> None:
        """The README's export and erasure commands, run as written (for an organisation of
        this test's own): the archive holds the tenant's file and checks out against the
        installation's key; after the erasure, its certificate does too, and the file is
        gone."""
        up.cli("orgs", "create", "leaving", "--owner", "lea")
        owner = up.cli("keys", "create", "--org", "leaving", "--user", "lea", "--role", "owner")
        key = owner.stdout.split()[-1]
        tenant = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0)
        line = b'{"messages": [{"role": "user", "content": "CANARY-LEAVING"}]}\n'
        kept = tenant.files.create(file=("data.jsonl", io.BytesIO(line)), purpose="user_data")
        text = (Path(__file__).parents[2] / "README.md").read_text()
        section = text[text.index("## Data controls") : text.index("## Usage, quotas")]
        block = re.findall(r"```bash\n(.*?)```", section, re.S)[-1].replace("acme", "leaving")
        env = up.env() | {"SOUVERAIN_API_KEY": key, "SOUVERAIN_URL": up.url,
                          "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        archive = tmp_path / "leaving-export.tar"
        assert archive.stat().st_mode & 0o777 == 0o600
        with tarfile.open(archive) as opened:
            names = opened.getnames()
            held = [opened.extractfile(n).read() for n in names if n.endswith("data.jsonl")]  # type: ignore[union-attr]
        assert held == [line] and "manifest.json" in names
        assert json.loads((tmp_path / "leaving-erasure.json").read_text())["signature"]
        with pytest.raises((openai.NotFoundError, openai.APIStatusError)):
            tenant.files.content(kept.id).read()


class TestResilience:
    def test_killed_engine_is_restarted_and_serves_again(self, up: Up) -> None:
        [engine] = up.engine_processes()
        engine.kill()
        engine.wait(10)
        client = sdk(up)
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = client.chat.completions.create(
                    model=MODEL, messages=QUESTION, max_tokens=4
                )  # type: ignore[arg-type]
                if answer.choices:
                    break
            except (openai.APIStatusError, openai.APIConnectionError):
                pass
            assert time.monotonic() < deadline, "engine never came back"
            time.sleep(0.5)
        [replacement] = up.engine_processes()
        assert replacement.pid != engine.pid


class TestRestart:
    """Runs last in this module: it stops and restarts the installation."""

    def test_ctrl_c_stops_everything_and_second_start_reuses_state(self, up: Up) -> None:
        key = up.first_key
        up.cli("orgs", "create", "kept-across-restarts")
        engines = up.engine_processes()
        assert engines
        assert up.stop() in (0, 130, -2)  # 130: the conventional status after Ctrl-C
        assert "stopping engines and Ray" in "".join(up.output)
        time.sleep(1)
        assert not any(p.is_running() and p.status() != "zombie" for p in engines)
        up.start()
        assert up.first_key is None, "a second start must not mint a new operator key"
        up.first_key = key
        assert MODEL in {m.id for m in sdk(up).models.list()}
        assert "kept-across-restarts" in up.cli("orgs", "list").stdout
        assert _status(up.cli("deployments", "list").stdout, MODEL) == "ready"
