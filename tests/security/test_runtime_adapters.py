"""Adapters loaded into and unloaded from a real running llama-server (souverain's build),
through the replica's supervisor as the controller asks it: a new adapter answers as
itself while the adapter already there answers the same throughout and no engine
restarts; an unloaded adapter's id is refused, never served by the base model nor given
to another adapter; an adapter a running request applies is not freed under it; a file
the node or the engine refuses changes nothing for the others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from souverain.core.fleet import HostedAdapter
from souverain.core.ids import new_id, replica_secret
from souverain.node import hosted_adapters
from souverain.node.supervisor import EngineSupervisor
from souverain.storage.stores import LocalStore
from tests.conftest import MASTER_KEY
from tests.llamacpp_target import supervised_llamacpp
from tests.lora_files import adapter_file, sealed_adapter

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@dataclass
class Engine:
    supervisor: EngineSupervisor
    secret: str
    adapters: dict[str, HostedAdapter]  # a, b: of this base; other: of another base
    files: dict[str, Path]  # their clear files

    @property
    def url(self) -> str:
        url = self.supervisor.status().url
        assert url is not None
        return url

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secret}"}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=120)

    def ask(self, lora_id: int | None = None) -> httpx.Response:
        """One greedy answer, with adapter `lora_id` applied (as the gateway writes it)."""
        body: dict[str, object] = {"model": "smollm2", "messages": ASK, "max_tokens": 8,
                                   "temperature": 0, "cache_scope": f"scope-{lora_id}"}  # fmt: skip
        if lora_id is not None:
            body["lora"] = [{"id": lora_id, "scale": 1.0}]
        return self.post("/v1/chat/completions", body)

    def answer(self, lora_id: int | None = None) -> str:
        done = self.ask(lora_id)
        assert done.status_code == 200, done.text
        return str(done.json()["choices"][0]["message"]["content"])

    def ids(self) -> dict[str, int | None]:
        return {s.model_id: s.lora_id for s in self.supervisor.status().adapters if not s.error}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    directory = tmp_path_factory.mktemp("runtime-lora")
    store = LocalStore(directory / "store")
    files = {"a": adapter_file(directory, seed=1), "b": adapter_file(directory, seed=3),
             "other": adapter_file(directory, seed=2, hidden=512)}  # fmt: skip
    adapters = {
        key: HostedAdapter(f"mdl_{key}", asyncio.run(sealed_adapter(store, path.read_bytes(), key)))
        for key, path in files.items()
    }
    replica_id = new_id("rep")
    supervisor = supervised_llamacpp(replica_id, directory, "llama-server",
                                     {"parallel": 2}, adapters=(adapters["a"],))  # fmt: skip
    try:
        yield Engine(supervisor, replica_secret(MASTER_KEY.encode(), replica_id), adapters, files)
    finally:
        supervisor.stop()


class TestLoadedWhileServing:
    def test_a_new_adapter_answers_as_itself_and_the_others_do_not_change(
        self, engine: Engine
    ) -> None:
        a, b = engine.adapters["a"], engine.adapters["b"]
        base, with_a = engine.answer(), engine.answer(0)
        assert with_a != base
        pid = engine.supervisor.pid

        change = engine.supervisor.change_adapters((a, b))
        assert change.runtime_load and change.kept == ()
        assert engine.ids() == {a.model_id: 0, b.model_id: 1}
        with_b = engine.answer(1)
        assert with_b not in (base, with_a)
        assert engine.answer(0) == with_a and engine.answer() == base
        assert engine.supervisor.pid == pid, "the engine was restarted"

        # unloaded: its id is refused (not served by the base model), its clear file gone
        engine.supervisor.change_adapters((a,))
        assert engine.ids() == {a.model_id: 0}
        refused = engine.ask(1)
        assert refused.status_code == 400 and "not loaded" in refused.text
        assert engine.answer(0) == with_a
        assert sorted(p.name for p in engine.supervisor._scratch.glob("adapter-*")) == [
            "adapter-0.gguf"
        ]

        # loaded again: a new id, never the freed one, and the same answers
        engine.supervisor.change_adapters((a, b))
        assert engine.ids() == {a.model_id: 0, b.model_id: 2}
        assert engine.answer(2) == with_b
        assert engine.ask(1).status_code == 400
        assert engine.supervisor.pid == pid

    def test_an_adapter_in_use_is_not_unloaded_under_its_request(self, engine: Engine) -> None:
        a, b = engine.adapters["a"], engine.adapters["b"]
        engine.supervisor.change_adapters((a, b))
        lora_b = engine.ids()[b.model_id]
        assert lora_b is not None
        body = {"model": "smollm2", "messages": ASK, "max_tokens": 2000, "stream": True,
                "ignore_eos": True, "lora": [{"id": lora_b, "scale": 1.0}]}  # fmt: skip
        headers = {"Authorization": f"Bearer {engine.secret}"}
        with httpx.stream("POST", engine.url + "/v1/chat/completions", json=body,
                          headers=headers, timeout=120) as stream:  # fmt: skip
            lines = stream.iter_lines()
            while '"content":"' not in next(lines):  # the role comes first, then tokens
                pass  # once a token came, a slot decodes with adapter b
            busy = engine.post("/lora-adapters/unload", {"id": lora_b})
            assert busy.status_code == 503, busy.text
        assert engine.ids()[b.model_id] == lora_b  # still held, and still answering
        assert engine.ask(lora_b).status_code == 200


class TestRefusedWhileServing:
    def test_a_corrupt_or_foreign_adapter_is_refused_and_the_others_serve(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        a = engine.adapters["a"]
        engine.supervisor.change_adapters((a,))
        lora_a = engine.ids()[a.model_id]
        with_a = engine.answer(lora_a)
        # a file that does not match its checksum, and an adapter of another base
        corrupt = HostedAdapter("mdl_corrupt", replace(engine.adapters["b"].grant, sha256="0" * 64))
        change = engine.supervisor.change_adapters((a, engine.adapters["other"], corrupt))
        errors = {s.model_id: s.error for s in change.adapters}
        assert errors[a.model_id] == ""
        assert errors["mdl_other"] == hosted_adapters.NOT_FOR_BASE
        assert errors["mdl_corrupt"] == hosted_adapters.UNREADABLE
        # the engine's own refusal, past the node's checks: llama.cpp returns no adapter
        junk = tmp_path / "junk.gguf"
        junk.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        for path in (engine.files["other"], junk):
            loaded = engine.post("/lora-adapters/load", {"path": str(path)})
            assert loaded.status_code == 400, loaded.text
        assert engine.answer(lora_a) == with_a
        assert engine.supervisor.status().state == "ready"

    def test_the_routes_need_the_replica_secret(self, engine: Engine) -> None:
        for path, body in (("/lora-adapters/load", {"path": str(engine.files["a"])}),
                           ("/lora-adapters/unload", {"id": 0})):  # fmt: skip
            refused = httpx.post(engine.url + path, json=body, timeout=30)
            assert refused.status_code == 401
            wrong = httpx.post(engine.url + path, json=body, timeout=30,
                               headers={"Authorization": "Bearer sk-not-it"})  # fmt: skip
            assert wrong.status_code == 401


class TestBaseModel:
    def test_a_request_naming_no_adapter_gets_none_of_them(self, engine: Engine) -> None:
        """Adapters loaded at start "without applying" stay unapplied for a request that
        names none (llama-server took their scale from the command line: 1)."""
        engine.supervisor.change_adapters((engine.adapters["a"], engine.adapters["b"]))
        shared = engine.answer()
        engine.supervisor.change_adapters(())
        assert engine.ids() == {}
        assert engine.answer() == shared
