"""The gateway's choice of a llama-server slot: an organisation gets back the slot it was the
last to use (warm), another organisation the slot used longest ago. Which slot may reuse
what is the engine's rule (tests/security/test_cache_scope.py); this is an optimisation."""

from __future__ import annotations

from souverain.catalog.routes import ReplicaRoute
from souverain.gateway.routing import RouteTable
from souverain.gateway.slots import Slot, SlotBook
from souverain.node.engines.llama_server import LlamaServerLauncher
from souverain.node.engines.registry import launcher_for


def test_a_first_request_finds_no_warm_slot() -> None:
    book = SlotBook()
    assert book.take("r", 4, "org-a") == Slot(0, warm=False)


def test_the_same_organisation_gets_its_warm_slot_back() -> None:
    book = SlotBook()
    slot = book.take("r", 4, "org-a")
    book.give_back("r", slot)
    assert book.take("r", 4, "org-a") == Slot(slot.index, warm=True)


def test_another_organisation_takes_the_slot_used_longest_ago() -> None:
    book = SlotBook()
    a = book.take("r", 2, "org-a")
    b = book.take("r", 2, "org-b")
    book.give_back("r", a)
    book.give_back("r", b)
    c = book.take("r", 2, "org-c")
    assert c == Slot(a.index, warm=False)  # slot 0 was used longest ago
    book.give_back("r", c)
    assert book.take("r", 2, "org-a") == Slot(b.index, warm=False)  # its slot went to org-c


def test_a_busy_slot_is_not_given_twice_while_others_are_free() -> None:
    book = SlotBook()
    taken = [book.take("r", 3, "org-a") for _ in range(3)]
    assert sorted(s.index for s in taken) == [0, 1, 2]
    assert [s.warm for s in taken] == [False, False, False]


def test_more_requests_than_slots_share_the_least_loaded_without_crossing_scopes() -> None:
    book = SlotBook()
    book.take("r", 1, "org-a")
    extra = book.take("r", 1, "org-b")  # another server process counted a slot free
    assert extra == Slot(0, warm=False)


def test_the_route_table_names_a_slot_only_on_slotted_replicas() -> None:
    table = RouteTable()
    common = {"deployment_id": "d", "deployment_org_id": None, "model_id": "m",
              "model_name": "m", "url": "http://x", "node_id": None, "datacenter_id": "dc",
              "country": "FR", "operator_country": "FR", "certifications": frozenset()}  # fmt: skip
    slotted = ReplicaRoute(replica_id="s", runtime="llama-server", engine_slots=4, **common)
    single = ReplicaRoute(replica_id="p", runtime="llama-cpp-python", **common)
    assert (slotted.slots, single.slots) == (4, 1)
    with table.track(slotted, "org-a") as slot, table.track(single, "org-a") as none:
        assert slot == Slot(0, warm=False) and none is None
        assert table.outstanding["s"] == 1
    with table.track(slotted, "org-a") as again:
        assert again == Slot(0, warm=True)
    assert table.outstanding["s"] == 0


def test_a_deployment_may_ask_for_either_runtime(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOUVERAIN_LLAMACPP_RUNTIME", raising=False)
    python = launcher_for("llamacpp", {"runtime": "llama-cpp-python"})
    server = launcher_for("llamacpp", {"runtime": "llama-server"})
    assert python.runtime == "llama-cpp-python"
    assert isinstance(server, LlamaServerLauncher)


def test_by_default_llama_server_serves_where_the_node_has_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOUVERAIN_LLAMACPP_RUNTIME", raising=False)
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("SOUVERAIN_LLAMA_SERVER", str(binary))
    assert launcher_for("llamacpp", {}).runtime == "llama-server"
    monkeypatch.setenv("SOUVERAIN_LLAMA_SERVER", str(tmp_path / "missing"))
    assert launcher_for("llamacpp", {}).runtime == "llama-cpp-python"
    monkeypatch.setenv("SOUVERAIN_LLAMACPP_RUNTIME", "llama-cpp-python")  # a node's choice
    monkeypatch.setenv("SOUVERAIN_LLAMA_SERVER", str(binary))
    assert launcher_for("llamacpp", {}).runtime == "llama-cpp-python"


def test_a_node_without_llama_server_says_so_when_it_is_asked_for(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SOUVERAIN_LLAMA_SERVER", str(tmp_path / "missing"))
    assert launcher_for("llamacpp", {"runtime": "auto"}).runtime == "llama-cpp-python"
    server = launcher_for("llamacpp", {"runtime": "llama-server"})
    assert isinstance(server, LlamaServerLauncher) and server.path is None


def test_llama_server_is_started_privately_with_its_secret_from_a_pipe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from souverain.core.fleet import ReplicaSpec

    spec = ReplicaSpec(
        replica_id="rep_1", deployment_id="dep_1", model_name="smol", engine="llamacpp",
        artifact_uri="builtin://x", artifact_sha256=None, secret="s3cr3t-value",
        datacenter_id="dc", cpus=2, gpus=0, threads=2, context_length=2048,
        engine_args={"parallel": 3},
    )  # fmt: skip
    argv = LlamaServerLauncher(tmp_path / "llama-server").command(
        spec=spec, model_path=tmp_path / "m.gguf", host="10.0.0.5", port=9000, secret_fd=7
    )
    assert "s3cr3t-value" not in " ".join(argv)
    flag = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1)}
    assert flag["--api-key-file"] == "/dev/fd/7"
    assert flag["--host"] == "10.0.0.5"
    assert (flag["--parallel"], flag["--ctx-size"]) == ("3", str(3 * 2048))  # a context each
    assert flag["--cache-ram"] == "0"  # no prompt cache shared across slots
    assert "--cache-scopes" in argv  # an unpatched llama-server refuses it: no silent leak
    assert "--no-slots" in argv and "--no-webui" in argv and "--slots" not in argv


def test_beside_a_neighbour_one_organisation_does_not_take_every_slot() -> None:
    import contextlib

    table = RouteTable()
    common = {"deployment_id": "d", "deployment_org_id": None, "model_id": "m",
              "model_name": "m", "url": "http://x", "node_id": None, "datacenter_id": "dc",
              "country": "FR", "operator_country": "FR", "certifications": frozenset()}  # fmt: skip
    route = ReplicaRoute(replica_id="s", runtime="llama-server", engine_slots=8, **common)
    with contextlib.ExitStack() as held:  # alone: every slot
        for _ in range(8):
            assert table.pick_free([route], org="alone") is route
            held.enter_context(table.track(route, "scope-a", "alone"))
        assert table.pick_free([route], org="alone") is None
    with table.track(route, "scope-y", "other"):
        pass  # another organisation was here a moment ago
    with contextlib.ExitStack() as held:
        for _ in range(7):
            assert table.pick_free([route], org="burst") is route
            held.enter_context(table.track(route, "scope-x", "burst"))
        assert table.pick_free([route], org="burst") is None  # the eighth slot is kept
        assert table.pick_free([route], org="other") is route
        held.enter_context(table.track(route, "scope-y", "other"))
        assert table.pick_free([route], org="third") is None  # every slot busy
    assert not table.shares.holding()
