"""souverain's llama-server reads a `prefill_first` request's prompt before the running
slots' next step (scripts/patches/llama-server-scheduling.patch; the gateway asks it for
an organisation that another one outnumbers on the replica, gateway/shares.py): on the
real engine, the request and the stream it was read before both answer exactly what each
answers alone, to the last token, also when the stream applies an adapter the request
does not (a shared replica), and the engine never stalls on them. A request that arrives
while the stream decodes a step stops that step, and the stream decodes it again after
the request's prompt, to the same answer."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from souverain.core.fleet import HostedAdapter
from souverain.core.ids import new_id, replica_secret
from souverain.node.supervisor import EngineSupervisor
from souverain.storage.stores import LocalStore
from tests.conftest import MASTER_KEY
from tests.llamacpp_target import supervised_llamacpp
from tests.lora_files import adapter_file, sealed_adapter

pytestmark = [pytest.mark.engine, pytest.mark.slow]

LONG = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
SHORT = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Engine:
    supervisor: EngineSupervisor
    secret: str
    log: Path

    def steps_stopped(self) -> int:
        """The steps the engine says it stopped for a prefill_first prompt."""
        return self.log.read_text(errors="replace").count("stopped the step of")

    def errors(self) -> list[str]:
        """The lines of the engine's log at level E (an operator's alarm)."""
        return re.findall(r"(?m)^\S+ E .*$", self.log.read_text(errors="replace"))

    def chat(
        self, messages: list[dict[str, str]], max_tokens: int, **extra: object
    ) -> dict[str, Any]:
        url = self.supervisor.status().url
        assert url is not None
        body = {"model": "smollm2", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0, **extra}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.secret}"}
        # an engine that stalls on the request (it once could: the stream's adapter kept
        # the request's prompt out of every step) times out here
        done = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert done.status_code == 200, done.text
        return dict(done.json())

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int, pieces: list[str],
        extra: dict[str, object],
    ) -> None:  # fmt: skip
        url = self.supervisor.status().url
        assert url is not None
        body = {"model": "smollm2", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0, "stream": True, **extra}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.secret}"}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers,
                          timeout=120) as answer:  # fmt: skip
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        pieces.append(delta)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    directory = tmp_path_factory.mktemp("prefill-first")
    sealed = asyncio.run(sealed_adapter(LocalStore(directory / "store"),
                                        adapter_file(directory, seed=1).read_bytes(), "a"))  # fmt: skip
    replica_id = new_id("rep")
    supervisor = supervised_llamacpp(replica_id, directory, "llama-server", {"parallel": 2},
                                     adapters=(HostedAdapter("mdl_a", sealed),))  # fmt: skip
    try:
        yield Engine(supervisor, replica_secret(MASTER_KEY.encode(), replica_id),
                     directory / f"{replica_id}.log")  # fmt: skip
    finally:
        supervisor.stop()


@pytest.mark.parametrize(
    "stream_extra",
    [{}, {"lora": [{"id": 0, "scale": 1.0}]}],
    ids=["same-model", "stream-on-an-adapter"],
)
def test_a_prompt_read_first_leaves_both_answers_as_they_are_alone(
    engine: Engine, stream_extra: dict[str, object]
) -> None:
    long_extra = {"id_slot": 0, **stream_extra}  # the stream in the lower slot
    alone_long = engine.chat(LONG, 64, **long_extra)
    alone_short = engine.chat(SHORT, 12, id_slot=1)["choices"][0]["message"]["content"]
    assert alone_long["usage"]["completion_tokens"] == 64  # long enough to be running

    pieces: list[str] = []
    running = threading.Thread(target=engine.stream, args=(LONG, 64, pieces, long_extra))
    running.start()
    try:
        while len(pieces) < 4 and running.is_alive():  # the long stream is generating
            threading.Event().wait(0.01)
        sent_at = len(pieces)
        first = engine.chat(SHORT, 12, id_slot=1, prefill_first=True)
    finally:
        running.join(120)
    assert 4 <= sent_at < 60, sent_at  # it was read while the long one was generating
    assert first["choices"][0]["message"]["content"] == alone_short
    assert "".join(pieces) == alone_long["choices"][0]["message"]["content"]
    assert engine.supervisor.status().restarts == 0


def test_prompts_arriving_mid_step_stop_it_and_the_stream_decodes_it_again(
    engine: Engine,
) -> None:
    long_extra = {"id_slot": 0}
    alone_long = engine.chat(LONG, 96, **long_extra)["choices"][0]["message"]["content"]
    alone_short = engine.chat(SHORT, 12, id_slot=1)["choices"][0]["message"]["content"]
    stopped_before = engine.steps_stopped()

    pieces: list[str] = []
    running = threading.Thread(target=engine.stream, args=(LONG, 96, pieces, long_extra))
    running.start()
    answers: list[str] = []
    try:
        while len(pieces) < 4 and running.is_alive():
            threading.Event().wait(0.01)
        # one after another while the stream runs: each arrives during one of its steps
        # (the stream's steps are most of the engine's time), or between two
        while running.is_alive() and len(pieces) < 72 and len(answers) < 4:
            answer = engine.chat(SHORT, 12, id_slot=1, prefill_first=True)
            answers.append(answer["choices"][0]["message"]["content"])
    finally:
        running.join(120)
    assert len(answers) >= 3, len(answers)
    assert engine.steps_stopped() > stopped_before  # steps of the stream were stopped
    assert engine.errors() == []  # a step stopped on purpose is no engine error
    assert answers == [alone_short] * len(answers)
    # every stopped step was taken back and decoded again: the same stream, token for token
    assert "".join(pieces) == alone_long
    assert engine.supervisor.status().restarts == 0
