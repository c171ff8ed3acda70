"""A tenant's work beyond chat on the README's fleet (tests/fleet/conftest.py): an embedding,
a batch line, and a fine-tuning job restricted to DE, with files kept in the README's S3
stores. As a user would notice: each is served in Frankfurt; the job trains on the Frankfurt
host (its worker process runs there and nowhere else) and its model answers from there; the
residency report says so; and nothing of the tenant crosses any host's link in clear.

Each link is captured with tcpdump while the work runs, every packet of the control plane,
both workers and the store host, except those to and from the bridge's own address: the
public edge (the tests' clients calling the server, which production puts behind a
TLS-terminating load balancer) and the database relay, both the operator's to secure.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import openai
import psutil
import pytest

from souverain.core.ids import replica_secret
from souverain.core.roles import Role
from souverain.core.schemas.policies import PolicyDocument
from souverain.core.schemas.tenancy import KeyCreateRequest, ProjectCreateRequest
from tests.fleet.conftest import BUCKETS, STORE_KEY, Fleet, diagnosis, rejoin, run, wait_for
from tests.security.test_link_capture import LinkCapture, packets

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow, pytest.mark.postgres]

CANARY = f"CANARY-{secrets.token_hex(8)}"  # in every prompt and training line of the tenant
ORG = "acme-eu"
TRAINING = "acme-eu/training"  # its project whose policy keeps its data in Germany


@dataclass
class Captured:
    link: str
    pcap: bytes

    @property
    def packets(self) -> int:
        return len(packets(self.pcap))


@contextlib.contextmanager
def every_link(fleet: Fleet, directory: Path, what: str) -> Iterator[list[Captured]]:
    """tcpdump on every host's link while the block runs; the captures once it ends."""
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump (make tcpdump, as root)")
    expression = f"tcp and not host {fleet.net.bridge_address}"
    running = {
        name: LinkCapture(0, directory / f"{what}-{name}.pcap", interface=host.link,
                          expression=expression)
        for name, host in fleet.net.hosts.items()
    }  # fmt: skip
    found: list[Captured] = []
    try:
        yield found
    finally:
        found += [Captured(name, capture.stop()) for name, capture in running.items()]


def check_nothing_in_clear(fleet: Fleet, captured: list[Captured], what: str) -> None:
    """No canary, no `Bearer`, no replica's secret and no cluster token in any capture; the
    figures printed per link."""
    token = (fleet.control.home / ".souverain-node" / "node" / "ray" / "auth_token").read_text()
    with fleet.api() as api:
        replicas = [r.id for d in api.list_deployments() for r in d.replica_details]
    secret_key = fleet.secret_key.encode()
    forbidden = {"canary": CANARY, "Bearer": "Bearer", "the cluster's token": token.strip(),
                 **{f"replica {r}'s secret": replica_secret(secret_key, r) for r in replicas}}  # fmt: skip
    for capture in captured:
        found = {name: capture.pcap.count(value.encode()) for name, value in forbidden.items()}
        print(f"[hosts] {what}, {capture.link}'s link: {capture.packets} packets, "
              f"{len(capture.pcap)} bytes, canaries {found['canary']}")  # fmt: skip
        assert not any(found.values()), f"{what}: in clear on {capture.link}'s link: {found}"
    [de] = [c for c in captured if c.link == "de"]
    assert de.packets >= 4  # the work crossed it: a request and its answer, each acknowledged


@pytest.fixture(scope="module")
def training_project(fleet: Fleet) -> str:
    """The EU tenant's `training` project, whose policy narrows the ceiling to DE: its
    files are kept in Frankfurt, where a job restricted to DE may read them (a file kept
    in Paris is refused to such a job with 451). Its member's key."""
    with fleet.api() as api:
        api.create_project(ORG, ProjectCreateRequest(name="training"))
        api.set_policy(ORG, PolicyDocument(jurisdictions=["DE"]), "training")
        created = api.create_key(
            KeyCreateRequest(org=ORG, user=f"{ORG}-owner", project="training", role=Role.MEMBER)
        )
    fleet.keys[TRAINING] = created.key
    return TRAINING


def tenant_client(fleet: Fleet, who: str = ORG) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.keys[who], max_retries=0)


def as_tenant(fleet: Fleet, script: str, who: str) -> str:
    """A command of the README's, run by the tenant on the control-plane host."""
    return run(fleet.control, script, env={"SOUVERAIN_URL": fleet.url,
                                           "SOUVERAIN_API_KEY": fleet.keys[who]})  # fmt: skip


def stored_objects(fleet: Fleet) -> dict[str, bytes]:
    """Every object of the store's buckets, read straight from the S3 server."""
    s3 = boto3.client("s3", endpoint_url=fleet.store, region_name="eu-west-3",
                      verify=str(fleet.net["s3"].root / "store-tls" / "ca.crt"),
                      aws_access_key_id=STORE_KEY[0], aws_secret_access_key=STORE_KEY[1])  # fmt: skip
    found = {}
    for bucket in BUCKETS:
        for entry in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            found[f"{bucket}/{entry['Key']}"] = body
    return found


def training_lines() -> bytes:
    """A tiny chat set whose every answer carries the canary."""
    questions = ["what is the sea", "tell me a joke", "how are you", "name a color"]
    return b"".join(
        json.dumps({"messages": [{"role": "user", "content": f"{q} ({CANARY})"},
                                 {"role": "assistant", "content": f"ARRR {CANARY}"}]}).encode()
        + b"\n"
        for q in questions
    )  # fmt: skip


def hosts_running(fleet: Fleet, needle: str) -> set[str]:
    """The hosts on which a process whose command line holds `needle` runs now."""
    found = set()
    for name, host in fleet.net.hosts.items():
        for pid in host.pids():
            with contextlib.suppress(psutil.Error):
                if needle in " ".join(psutil.Process(pid).cmdline()):
                    found.add(name)
    return found


class TestServedWork:
    def test_an_embedding_is_served_in_frankfurt_and_crosses_no_link_in_clear(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        run(fleet.control, "souverain deployments create eu-embed --model all-minilm-l6-v2 "
            "--jurisdiction EU", env={"SOUVERAIN_URL": fleet.url,
                                      "SOUVERAIN_API_KEY": fleet.operator})  # fmt: skip
        with fleet.api() as api:
            wait_for(lambda: api.get_deployment("eu-embed").ready_replicas == 1, 180,
                     diagnosis(fleet))  # fmt: skip
        with every_link(fleet, tmp_path, "embedding") as captured:
            answer = tenant_client(fleet).embeddings.with_raw_response.create(
                model="all-minilm-l6-v2", input=f"Remember {CANARY}"
            )
        assert answer.headers["x-souverain-datacenter"] == "fra1"
        assert len(answer.parse().data[0].embedding) == 384
        check_nothing_in_clear(fleet, captured, "an embedding")
        with fleet.api() as api:  # room on the Frankfurt node for the fine-tuning job
            api.delete_deployment("eu-embed")

    def test_a_batch_line_is_served_in_frankfurt_and_crosses_no_link_in_clear(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        client = tenant_client(fleet)
        line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "chat", "max_tokens": 8,
                         "messages": [{"role": "user", "content": f"Repeat {CANARY}"}]}}  # fmt: skip
        with every_link(fleet, tmp_path, "batch") as captured:
            uploaded = client.files.create(
                file=("lines.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")),
                purpose="batch",
            )
            batch = client.batches.create(input_file_id=uploaded.id, completion_window="24h",
                                          endpoint="/v1/chat/completions")  # fmt: skip
            deadline = time.monotonic() + 180
            while (batch := client.batches.retrieve(batch.id)).status != "completed":
                assert batch.status not in ("failed", "expired", "cancelled"), batch
                assert time.monotonic() < deadline, f"the batch did not end: {batch.status}"
                time.sleep(1.0)
        assert batch.request_counts is not None and batch.request_counts.completed == 1
        assert batch.output_file_id is not None
        [output] = client.files.content(batch.output_file_id).text.splitlines()
        assert json.loads(output)["response"]["status_code"] == 200
        check_nothing_in_clear(fleet, captured, "a batch line")


class TestFineTuningInGermany:
    def test_a_job_restricted_to_de_trains_and_is_served_on_the_de_host(
        self, fleet: Fleet, training_project: str, tmp_path: Path
    ) -> None:
        """The README's commands, with `--jurisdiction DE`; every link captured from the
        upload to the fine-tuned model's first answer."""
        since = datetime.now(UTC) - timedelta(minutes=1)
        trained_on: set[str] = set()
        with every_link(fleet, tmp_path, "fine-tuning") as captured:
            job_id = start_job(fleet, "--epochs 1 --batch-size 4 --suffix de")
            client = tenant_client(fleet, TRAINING)
            deadline = time.monotonic() + 480
            while (job := client.fine_tuning.jobs.retrieve(job_id)).status != "succeeded":
                assert job.status not in ("failed", "cancelled"), job.error
                assert time.monotonic() < deadline, f"the job did not end: {job.status}"
                trained_on |= hosts_running(fleet, "souverain.training.sft")
                time.sleep(1.0)
            assert job.fine_tuned_model
            answer = asked(client, job.fine_tuned_model)
        assert trained_on == {"de"}  # the worker ran on the Frankfurt host, and only there
        assert (job.model_extra or {})["souverain"]["datacenter"] == "fra1"
        assert answer.headers["x-souverain-datacenter"] == "fra1"
        check_nothing_in_clear(fleet, captured, "a fine-tuning job")
        objects = stored_objects(fleet)  # the README's stores: the data, checkpoints, adapter
        assert any(job.id in key for key in objects), sorted(objects)
        assert not [key for key, body in objects.items() if CANARY.encode() in body]
        with fleet.api() as api:
            report = api.residency_report(ORG, since=since, until=datetime.now(UTC))["document"]
        assert {row["datacenter"] for row in report["by_datacenter"]} == {"fra1"}
        assert report["compliant"] and not report["violations"], report
        with fleet.api() as api:  # room on the Frankfurt node for the next job
            [served] = [d for d in api.list_deployments() if d.name == f"ft-{job.id[-12:]}"]
            api.delete_deployment(served.id)


class TestHostKilledMidJob:
    def test_nothing_of_the_tenant_stays_on_its_disk_and_the_job_carries_on(
        self, fleet: Fleet, training_project: str
    ) -> None:
        """The Frankfurt host SIGKILLed while the job trains there, then joined again with
        the README's command: the training data decrypted on it is gone, none of it is in
        its HOME (node directory included) or its temp directory (Ray's session files),
        and the job says it lost its worker, is queued again and trains there again."""
        de, client = fleet.net["de"], tenant_client(fleet, TRAINING)
        job = start_job(fleet, "--epochs 2 --batch-size 1")

        def training() -> bool:  # its data decrypted on the host, its worker running there
            running = hosts_running(fleet, "souverain.training.sft")
            return "de" in running and bool(in_clear(de.scratch))

        wait_for(training, 300, diagnosis(fleet))
        decrypted = in_clear(de.scratch)  # the job's data, in clear while it trains
        de.kill()
        rejoin(fleet, de, "fra1")
        assert not [path for path in decrypted if path.exists()], decrypted
        assert not in_clear(de.home) and not in_clear(de.tmp)
        said: list[str] = []

        def carried_on() -> bool:
            """It said why it stopped, was queued again, and trains (or trained) again."""
            found = client.fine_tuning.jobs.retrieve(job)
            assert found.status not in ("failed", "cancelled"), found.error
            said[:] = [e.message for e in client.fine_tuning.jobs.list_events(job, limit=200)]
            lost = any("training worker was lost" in message for message in said)
            return lost and found.status in ("running", "succeeded")

        wait_for(carried_on, 420, lambda: f"{said[:5]}\n{diagnosis(fleet)()}")


def start_job(fleet: Fleet, options: str) -> str:
    """The README's upload and `finetune create`, restricted to DE; the job's id."""
    (fleet.control.home / "chats.jsonl").write_bytes(training_lines())
    uploaded = as_tenant(fleet, "souverain files upload chats.jsonl --purpose fine-tune", TRAINING)
    file_id = re.search(r"uploaded (\S+):", uploaded)
    assert file_id, uploaded
    created = as_tenant(fleet, f"souverain finetune create {file_id[1]} --jurisdiction DE "
                        f"{options}", TRAINING)  # fmt: skip
    job_id = re.search(r"created (\S+) ", created)
    assert job_id, created
    return job_id[1]


def in_clear(directory: Path) -> list[Path]:
    """The files below `directory` that hold the canary."""
    found = []
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and CANARY.encode() in path.read_bytes():
                found.append(path)
    return found


def asked(client: openai.OpenAI, model: str) -> openai.APIResponse:  # type: ignore[type-arg]
    """The fine-tuned model's first answer, once its deployment is ready (404/503 before)."""
    deadline = time.monotonic() + 240
    while True:
        try:
            answer = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=8,
                messages=[{"role": "user", "content": f"what is a cat ({CANARY})"}],
            )  # fmt: skip
            answer.parse()
            return answer
        except (openai.NotFoundError, openai.APIStatusError) as error:
            if time.monotonic() > deadline or error.status_code not in (404, 503):
                raise
            time.sleep(1.0)
