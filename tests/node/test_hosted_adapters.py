"""A shared replica's adapters are checked on the node before the engine sees them
(node/hosted_adapters.py): a sealed adapter that matches its sha256 and fits the base is
loaded; a tampered, truncated or foreign one is refused with its reason, and the others
still load. Real sealed objects in a real local store, the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from souverain.core.fleet import HostedAdapter, ObjectGrant
from souverain.node import artifacts, hosted_adapters
from souverain.storage.stores import LocalStore
from tests.lora_files import adapter_file
from tests.lora_files import sealed_adapter as sealed

BASE = "builtin://smollm2-135m-instruct"


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
        numbers = {s.model_id: s.lora_id for s in states}  # what the node reports
        assert numbers.pop("good") == 0 and set(numbers.values()) == {None}
        # the owner is told a fixed category: no object id, store error or node path
        assert reasons["tampered"] == hosted_adapters.UNREADABLE
        assert reasons["truncated"] == hosted_adapters.UNREADABLE  # it never decrypts
        assert reasons["unchecked"] == hosted_adapters.UNREADABLE  # never loaded unchecked
        assert reasons["foreign"] == hosted_adapters.NOT_FOR_BASE
        assert Path(loaded[0].path or "").read_bytes() == good

    @staticmethod
    async def _grants(store: LocalStore, good: bytes, foreign: bytes) -> dict[str, ObjectGrant]:
        grants = {
            "good": await sealed(store, good, "good"),
            "tampered": await sealed(store, good, "tampered", sha256="0" * 64),
            "truncated": await sealed(store, good, "truncated"),
            "unchecked": await sealed(store, good, "unchecked", sha256=""),
            "foreign": await sealed(store, foreign, "foreign"),
        }
        path = store.root / "truncated"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return grants

    def test_a_runtime_that_cannot_pick_per_request_holds_none(self, tmp_path: Path) -> None:
        plain = adapter_file(tmp_path, seed=1).read_bytes()
        grant = asyncio.run(sealed(LocalStore(tmp_path / "store"), plain, "a"))
        adapters = (HostedAdapter("a", grant),)
        loaded, states = prepare(adapters, tmp_path, runtime="llama-cpp-python")
        assert loaded == () and states[0].error == hosted_adapters.NO_RUNTIME


def gguf(body: bytes, *, tensors: int = 0, count: int = 1) -> bytes:
    return struct.pack("<4sIQQ", b"GGUF", 3, tensors, count) + body


def key(name: bytes, kind: int) -> bytes:
    return struct.pack("<Q", len(name)) + name + struct.pack("<I", kind)


class TestUntrustedHeader:
    """A header crafted to exhaust the node (memory, recursion, a silent short read) is
    refused as not a GGUF file, quickly."""

    def test_counts_larger_than_the_file_are_refused(self, tmp_path: Path) -> None:
        huge = tmp_path / "huge.gguf"
        huge.write_bytes(gguf(b"", tensors=2**40, count=0))
        nested = tmp_path / "array.gguf"  # an array of 2**60 strings in a 60-byte file
        nested.write_bytes(gguf(key(b"k", 9) + struct.pack("<IQ", 8, 2**60)))
        for path in (huge, nested):
            with pytest.raises(ValueError, match="do not fit"):
                hosted_adapters.read_header(path)

    def test_a_short_read_is_an_error_not_a_truncated_string(self, tmp_path: Path) -> None:
        path = tmp_path / "short.gguf"
        path.write_bytes(gguf(key(b"general.type", 8) + struct.pack("<Q", 50) + b"adapter"))
        with pytest.raises(ValueError):
            hosted_adapters.read_header(path)

    def test_arrays_nest_a_few_levels_at_most(self, tmp_path: Path) -> None:
        path = tmp_path / "deep.gguf"
        path.write_bytes(gguf(key(b"k", 9) + struct.pack("<IQ", 9, 1) * 5000))
        with pytest.raises(ValueError, match="nested too deep"):
            hosted_adapters.read_header(path)
