"""A zero-retention tenant's canary, looked for everywhere `souverain up` keeps anything.

A unique string goes through chat, a stream and embeddings (llama.cpp serving SmolLM2 and
the built-in embeddings model, the official SDK as client) and is refused for a file, a
batch and a fine-tuning job. Then every byte the installation wrote is searched: the
database file with its WAL and shared memory, the file stores and the usage journal (the
data directory), the node directory (engine logs, checksum cache, job directories), Ray's
session directories written since the start (every worker's and engine's logs), and the
process's own output — while it runs, and again after it stopped. A control string the
installation does keep (an organisation's name) is found, so the search can find.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from souverain.testing.live import free_port
from tests.e2e.conftest import Up

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
EMBEDDINGS = "all-minilm-l6-v2"


@dataclass
class ScopedUp(Up):
    """`souverain up` whose node directory lies in the test's own directory."""

    node_dir: Path = Path()
    began: float = 0.0

    def env(self) -> dict[str, str]:
        return super().env() | {"SOUVERAIN_NODE_DIR": str(self.node_dir)}


@dataclass
class Scope:
    files: int = 0
    bytes: int = 0


def search(roots: list[Path], needle: bytes, *, since: float = 0.0) -> tuple[list[str], Scope]:
    """Every file under `roots` (modified after `since`) holding `needle`; what was read."""
    found, scope = [], Scope()
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime < since:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue  # a socket or a file gone meanwhile
            scope.files, scope.bytes = scope.files + 1, scope.bytes + len(data)
            if needle in data:
                found.append(str(path))
    return found, scope


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedUp]:
    base = tmp_path_factory.mktemp("zero-retention")
    instance = ScopedUp(
        data_dir=base / "data", port=free_port(), config=base / "cli.json", node_dir=base / "node"
    )
    instance.began = time.time()
    instance.start()
    yield instance
    instance.stop()


def _tenant(up: ScopedUp, control: str) -> str:
    """An organisation (named `control`) with zero retention on, and its owner's key."""
    up.cli("orgs", "create", control, "--owner", "alice", key=up.first_key)
    up.cli("data-controls", "set", "--org", control, "--zero-retention", key=up.first_key)
    with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {up.first_key}"}) as c:
        minted = c.post("/api/keys", json={"org": control, "user": "alice", "role": "owner"})
        assert minted.status_code == 201, minted.text
        return str(minted.json()["key"])


def _use(client: openai.OpenAI, canary: str) -> None:
    prompt = [{"role": "user", "content": f"Repeat exactly: {canary}"}]
    answer = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24)  # type: ignore[arg-type]
    assert answer.choices[0].message.content is not None
    chunks = list(client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24,
                                                 stream=True))  # type: ignore[arg-type]  # fmt: skip
    assert chunks
    vectors = client.embeddings.create(model=EMBEDDINGS, input=[canary, f"{canary} again"])
    assert len(vectors.data) == 2
    line = f'{{"custom_id": "1", "body": {{"messages": [{{"role": "user", "content": "{canary}"}}]}}}}\n'
    for refused in (
        lambda: client.files.create(file=("c.jsonl", io.BytesIO(line.encode())), purpose="batch"),
        lambda: client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"note": canary}),
        lambda: client.fine_tuning.jobs.create(model=MODEL, training_file="file-x", suffix="c"),
    ):  # fmt: skip
        with pytest.raises(openai.PermissionDeniedError) as error:
            refused()
        assert error.value.code == "zero_data_retention"


class TestZeroRetention:
    def test_the_canary_is_found_nowhere(self, up: ScopedUp) -> None:
        canary = f"canary-{uuid.uuid4().hex}"
        control = f"control-{uuid.uuid4().hex[:12]}"
        key = _tenant(up, control)
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key=key, max_retries=0)
        _wait_in_force(client)
        _use(client, canary)
        time.sleep(2)  # the usage journal's writer and the engines' logs catch up
        # Ray's sessions of this machine: only those written since this installation began.
        ray_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"souverain-ray-{os.getuid()}"
        for moment in ("running", "stopped"):
            if moment == "stopped":
                up.stop()
            output = "".join(up.output).encode()
            found, scope = search([up.data_dir, up.node_dir, up.config], canary.encode())
            in_ray, ray_scope = search([ray_dir], canary.encode(), since=up.began)
            control_found, _ = search([up.data_dir], control.encode())
            print(f"canary search ({moment}): {scope.files + ray_scope.files} files, "
                  f"{scope.bytes + ray_scope.bytes} bytes, and {len(output)} bytes of output; "
                  f"found in {found + in_ray or 'nothing'}")  # fmt: skip
            assert canary.encode() not in output
            assert found + in_ray == [], f"the canary was kept in {found + in_ray}"
            assert any(p.endswith(("souverain.db", "souverain.db-wal")) for p in control_found)


def _wait_in_force(client: openai.OpenAI) -> None:
    """Servers learn the switch within their refresh; until then this upload is refused for
    its bad line, so it stores nothing either way."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.files.create(file=("probe.jsonl", io.BytesIO(b"not json\n")), purpose="batch")
        except openai.PermissionDeniedError:
            return
        except openai.BadRequestError:
            time.sleep(0.2)
    raise AssertionError("zero retention did not come into force")
