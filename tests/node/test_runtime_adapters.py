"""A shared replica's node changes its adapters while the engine serves
(node/runtime_adapters.py): each new file is checked as at start before the engine sees it,
an unloaded adapter's clear copy is deleted at once, one a request still uses is kept, and
an engine without the routes is told apart. Real sealed objects and the real SmolLM2 GGUF;
the engine's two routes answered here as souverain's llama-server answers them (the real
engine: tests/security/test_runtime_adapters.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from souverain.core.fleet import AdapterState, HostedAdapter, ReplicaSpec
from souverain.core.ids import new_id
from souverain.node import artifacts, hosted_adapters, runtime_adapters, scratch
from souverain.node.engines.stand_in import StandInLauncher
from souverain.node.supervisor import EngineSupervisor
from souverain.storage.stores import LocalStore
from tests.lora_files import adapter_file, sealed_adapter

BASE = "builtin://smollm2-135m-instruct"


class FakeEngine:
    """The patched llama-server's adapter routes: ids never reused, an adapter in use
    refused (503), a file it cannot load refused (400)."""

    def __init__(self, *, routes: bool = True) -> None:
        self.routes, self.loaded, self.next_id = routes, {}, 0  # type: ignore[var-annotated]
        self.busy: set[int] = set()
        self.refuse: set[str] = set()  # paths whose file the engine refuses

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        status, answer = self._answer(path, body)
        return httpx.Response(
            status, json=answer, request=httpx.Request("POST", "https://e" + path)
        )

    def _answer(self, path: str, body: dict[str, object]) -> tuple[int, object]:
        if not self.routes:
            return 404, {}
        if path == runtime_adapters.LOAD:
            if "path" not in body or Path(str(body["path"])).name in self.refuse:
                return 400, {"error": {"message": "no"}}
            assert Path(str(body["path"])).exists()
            self.loaded[self.next_id], self.next_id = str(body["path"]), self.next_id + 1
            return 200, {"success": True, "id": self.next_id - 1}
        lora_id = int(str(body["id"]))
        if lora_id in self.busy:
            return 503, {}
        return (200 if self.loaded.pop(lora_id, None) else 404), {}


@pytest.fixture
def grants(tmp_path: Path) -> dict[str, HostedAdapter]:
    store = LocalStore(tmp_path / "store")
    good, other = adapter_file(tmp_path, seed=1), adapter_file(tmp_path, seed=2, hidden=512)

    async def seal() -> dict[str, HostedAdapter]:
        return {
            "a": HostedAdapter("a", await sealed_adapter(store, good.read_bytes(), "a")),
            "b": HostedAdapter("b", await sealed_adapter(store, good.read_bytes(), "b")),
            "foreign": HostedAdapter(
                "foreign", await sealed_adapter(store, other.read_bytes(), "f")
            ),
            "tampered": HostedAdapter(
                "tampered", await sealed_adapter(store, good.read_bytes(), "t", sha256="0" * 64)
            ),
        }

    return asyncio.run(seal())


def change(engine: FakeEngine, held: tuple[AdapterState, ...], loaded: tuple[HostedAdapter, ...],
           wanted: tuple[HostedAdapter, ...], scratch: Path) -> runtime_adapters.Changed:  # fmt: skip
    base = artifacts.resolve(BASE, sha256=None, roots=())
    adapters = runtime_adapters.EngineAdapters(engine.post)
    return runtime_adapters.change(adapters, held, loaded, wanted, scratch=scratch, base=base)


class TestChange:
    def test_new_adapters_are_checked_then_loaded_with_the_engines_ids(
        self, grants: dict[str, HostedAdapter], tmp_path: Path
    ) -> None:
        engine, scratch = FakeEngine(), tmp_path / "scratch"
        scratch.mkdir()
        wanted = (grants["a"], grants["foreign"], grants["tampered"])
        done = change(engine, (), (), wanted, scratch)
        states = {s.model_id: s for s in done.states}
        assert states["a"] == AdapterState("a", lora_id=0)
        assert states["foreign"].error == hosted_adapters.NOT_FOR_BASE
        assert states["tampered"].error == hosted_adapters.UNREADABLE
        assert list(engine.loaded) == [0]  # the refused ones never reached the engine
        assert [p.name for p in scratch.iterdir()] == [Path(done.loaded[0].path or "").name]

        # b added, a removed: a's id is not given again; its clear copy is for the caller
        # to delete once its spec no longer names it (a restart would pass it to the engine)
        again = change(engine, done.states, done.loaded, (grants["b"],), scratch)
        assert again.states == (AdapterState("b", lora_id=1),) and again.kept == ()
        assert list(engine.loaded) == [1]
        assert again.removed == (Path(done.loaded[0].path or ""),) and again.error == ""
        assert {p.name for p in scratch.iterdir()} == {
            Path(again.loaded[0].path or "").name, again.removed[0].name,
        }  # fmt: skip

    def test_an_adapter_in_use_is_kept_and_one_the_engine_refuses_is_reported(
        self, grants: dict[str, HostedAdapter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(runtime_adapters, "UNLOAD_WAIT_S", 0.2)
        engine, scratch = FakeEngine(), tmp_path / "scratch"
        scratch.mkdir()
        done = change(engine, (), (), (grants["a"],), scratch)
        engine.busy.add(0)
        engine.refuse.add(runtime_adapters._file_name(grants["b"]))
        again = change(engine, done.states, done.loaded, (grants["b"],), scratch)
        assert again.kept == ("a",)
        assert {s.model_id: s.error for s in again.states} == {
            "a": "", "b": hosted_adapters.NOT_FOR_BASE,
        }  # fmt: skip
        assert [p.name for p in scratch.iterdir()] == [Path(done.loaded[0].path or "").name]

    def test_a_change_that_fails_part_way_says_what_the_engine_holds(
        self, grants: dict[str, HostedAdapter], tmp_path: Path
    ) -> None:
        engine, scratch = FakeEngine(), tmp_path / "scratch"
        scratch.mkdir()
        done = change(engine, (), (), (grants["a"],), scratch)
        answers = engine.post

        def times_out_on_b(path: str, body: dict[str, object]) -> httpx.Response:
            if path == runtime_adapters.LOAD and "path" in body and engine.next_id == 2:
                raise httpx.ReadTimeout("the engine did not answer")
            return answers(path, body)

        engine.post = times_out_on_b  # type: ignore[method-assign]
        wanted = (HostedAdapter("c", grants["a"].grant), grants["b"])  # a removed, c then b
        partial = change(engine, done.states, done.loaded, wanted, scratch)
        assert "ReadTimeout" in partial.error
        # a's unload and c's load happened: both recorded, so the spec can follow them
        assert partial.states == (AdapterState("c", lora_id=1),)
        assert [a.model_id for a in partial.loaded] == ["c"]
        assert partial.removed == (Path(done.loaded[0].path or ""),)
        on_disk = {p.name for p in scratch.iterdir()}  # b's clear copy did not stay behind
        assert on_disk == {Path(partial.loaded[0].path or "").name, partial.removed[0].name}

    def test_an_adapter_the_store_could_not_serve_is_tried_again(
        self, grants: dict[str, HostedAdapter], tmp_path: Path
    ) -> None:
        engine, scratch = FakeEngine(), tmp_path / "scratch"
        scratch.mkdir()
        sealed = tmp_path / "store" / "a"
        sealed.rename(tmp_path / "away")  # the store cannot answer for a moment
        wanted = (grants["a"], grants["tampered"])
        done = change(engine, (), (), wanted, scratch)
        errors = {s.model_id: s.error for s in done.states}
        assert errors == {"a": hosted_adapters.UNAVAILABLE, "tampered": hosted_adapters.UNREADABLE}
        (tmp_path / "away").rename(sealed)
        again = change(engine, done.states, done.loaded, wanted, scratch)
        states = {s.model_id: s for s in again.states}
        assert states["a"] == AdapterState("a", lora_id=0)  # served now
        assert states["tampered"].error == hosted_adapters.UNREADABLE  # the file's fault: kept
        assert list(engine.loaded) == [0]

    def test_an_engine_without_the_routes_is_told_apart(self) -> None:
        assert runtime_adapters.EngineAdapters(FakeEngine().post).supported()
        assert not runtime_adapters.EngineAdapters(FakeEngine(routes=False).post).supported()

    def test_a_restarted_engine_numbers_them_in_order(self) -> None:
        states = (AdapterState("a", lora_id=4), AdapterState("b", "refused"),
                  AdapterState("c", lora_id=2))  # fmt: skip
        loaded = (HostedAdapter("c", None), HostedAdapter("a", None))  # type: ignore[arg-type]
        assert runtime_adapters.renumbered(states, loaded) == (
            AdapterState("a", lora_id=1),
            AdapterState("b", "refused"),
            AdapterState("c", lora_id=0),
        )


class LlamaStandIn(StandInLauncher):
    runtime = "llama-server"  # a node whose engine loads adapters as it serves


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[EngineSupervisor, FakeEngine]]:
    """A supervisor whose engine serves (its routes answered by a FakeEngine), not started:
    what a change of adapters finds on a ready replica."""
    engine = FakeEngine()
    spec = ReplicaSpec(
        replica_id=new_id("rep"), deployment_id="dep_test", model_name="m", engine="llamacpp",
        artifact_uri=BASE, artifact_sha256=None, secret="s3cret", datacenter_id="local",
        cpus=0.1, gpus=0, threads=1, context_length=512,
    )  # fmt: skip
    supervisor = EngineSupervisor(
        spec, LlamaStandIn(), host="127.0.0.1", node_id="n", log_dir=tmp_path
    )
    supervisor._state, supervisor._url = "ready", "https://engine"
    supervisor._model_path = artifacts.resolve(BASE, sha256=None, roots=())
    supervisor._post = lambda client, url, **kw: engine.post(  # type: ignore[method-assign]
        url.removeprefix("https://engine"), kw["json"]
    )
    yield supervisor, engine
    scratch.release(supervisor._scratch)


class TestSupervisorChange:
    def test_a_change_that_fails_part_way_leaves_a_spec_the_engine_can_restart_with(
        self, serving: tuple[EngineSupervisor, FakeEngine], grants: dict[str, HostedAdapter]
    ) -> None:
        supervisor, engine = serving
        supervisor.change_adapters((grants["a"],))
        answers = engine.post

        def dies_on_b(path: str, body: dict[str, object]) -> httpx.Response:
            if path == runtime_adapters.LOAD and "path" in body:
                raise httpx.ReadTimeout("the engine did not answer")
            return answers(path, body)

        engine.post = dies_on_b  # type: ignore[method-assign]
        answer = supervisor.change_adapters((grants["b"],))  # a unloaded, then b fails
        assert answer.adapters == ()  # what the engine holds now: neither
        # every file the spec names (a restart's `--lora`s) is on disk; a's is gone with it
        assert supervisor._spec.adapters == ()
        assert list(supervisor._scratch.iterdir()) == []
        assert supervisor.status().adapters == ()

    def test_a_change_racing_an_engine_restart_is_not_recorded(
        self, serving: tuple[EngineSupervisor, FakeEngine], grants: dict[str, HostedAdapter]
    ) -> None:
        supervisor, engine = serving
        supervisor.change_adapters((grants["a"],))
        [held] = supervisor._spec.adapters
        answers = engine.post

        def restarts(path: str, body: dict[str, object]) -> httpx.Response:
            if path == runtime_adapters.LOAD and "path" in body:
                supervisor._runs += 1  # the engine exited; a new run took the spec as it was
            return answers(path, body)

        engine.post = restarts  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="restarted"):
            supervisor.change_adapters((grants["b"],))
        assert supervisor._spec.adapters == (held,)  # what the new run was started with
        assert [p.name for p in supervisor._scratch.iterdir()] == [Path(held.path or "").name]
        assert [s.model_id for s in supervisor.status().adapters] == ["a"]
