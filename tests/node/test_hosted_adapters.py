"""A shared replica's adapters are checked on the node before the engine sees them
(node/hosted_adapters.py): a sealed adapter that matches its sha256 and fits the base is
loaded; a tampered, truncated or foreign one is refused with its reason, and the others
still load. Real sealed objects in a real local store, the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from souverain.core.fleet import HostedAdapter, ObjectGrant
from souverain.node import artifacts, hosted_adapters
from souverain.storage.crypto import Sealer
from souverain.storage.stores import LocalStore
from tests.lora_files import adapter_file

BASE = "builtin://smollm2-135m-instruct"


async def sealed(
    store: LocalStore, plain: bytes, name: str, *, sha256: str | None = None
) -> ObjectGrant:
    key, object_id = os.urandom(32), f"ftjob_{name}/adapter.gguf"
    sealer = Sealer(key, object_id)

    async def chunks() -> AsyncIterator[bytes]:
        yield sealer.header
        for piece in sealer.feed(plain):
            yield piece
        yield sealer.finish()

    await store.write(name, chunks())
    digest = sha256 or hashlib.sha256(plain).hexdigest()
    return ObjectGrant(store.uri, name, object_id, key, digest)


def prepare(adapters: tuple[HostedAdapter, ...], scratch: Path, runtime: str = "llama-server"):  # type: ignore[no-untyped-def]
    base = artifacts.resolve(BASE, sha256=None, roots=())
    return hosted_adapters.prepare(adapters, scratch=scratch, base=base, runtime=runtime)


class TestChecks:
    def test_only_adapters_that_match_their_sha256_and_fit_the_base_load(
        self, tmp_path: Path
    ) -> None:
        store = LocalStore(tmp_path / "store")
        good = adapter_file(tmp_path, seed=1).read_bytes()
        foreign = adapter_file(tmp_path, seed=2, hidden=512).read_bytes()
        grants = asyncio.run(self._grants(store, good, foreign))
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        adapters = tuple(HostedAdapter(name, grant) for name, grant in grants.items())
        loaded, states = prepare(adapters, scratch)
        reasons = {s.model_id: s.error for s in states}
        assert [a.model_id for a in loaded] == ["good"] and reasons["good"] == ""
        assert "sha256" in reasons["tampered"]
        assert reasons["truncated"]  # the last segment is missing: it never decrypts
        assert "shapes" in reasons["foreign"]
        assert Path(loaded[0].path or "").read_bytes() == good

    @staticmethod
    async def _grants(store: LocalStore, good: bytes, foreign: bytes) -> dict[str, ObjectGrant]:
        grants = {
            "good": await sealed(store, good, "good"),
            "tampered": await sealed(store, good, "tampered", sha256="0" * 64),
            "truncated": await sealed(store, good, "truncated"),
            "foreign": await sealed(store, foreign, "foreign"),
        }
        path = store.root / "truncated"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return grants

    def test_a_runtime_that_cannot_pick_per_request_holds_none(self, tmp_path: Path) -> None:
        adapters = (HostedAdapter("a", path=str(adapter_file(tmp_path, seed=1))),)
        loaded, states = prepare(adapters, tmp_path, runtime="llama-cpp-python")
        assert loaded == () and "serves no shared adapters" in states[0].error
