"""Writing an export archive as a stream: tar members one after the other, each hashed as
it passes, and the signed manifest last. Nothing is written to local disk: the stream goes
straight into the sealer and the store (`jobs.exports.runner`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from souverain.core.exports import MANIFEST, TAR_END, tar_header, tar_padding
from souverain.core.signing import canonical_json


class ArchiveError(Exception):
    """An object did not have the size or content its record says (nothing is stored)."""


@dataclass(frozen=True)
class Entry:
    """One member: its path, its size (known before its bytes, as tar needs), its bytes."""

    path: str
    size: int
    chunks: AsyncIterator[bytes]
    sha256: str | None = None  # what its record says, checked as it streams


def entry_of(path: str, data: bytes) -> Entry:
    return Entry(path, len(data), _once(data))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass
class ArchiveWriter:
    """Tar bytes out of entries; `objects` lists each written member for the manifest."""

    mtime: float
    objects: list[dict[str, Any]] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)  # of the whole archive
    size: int = 0

    async def stream(
        self, entries: AsyncIterator[Entry], sign: Callable[[list[dict[str, Any]]], dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        async for entry in entries:
            async for piece in self._member(entry):
                yield self._count(piece)
        manifest = canonical_json(sign(sorted(self.objects, key=lambda o: o["path"])))
        yield self._count(tar_header(MANIFEST, len(manifest), self.mtime))
        yield self._count(manifest + tar_padding(len(manifest)))
        yield self._count(TAR_END)

    async def _member(self, entry: Entry) -> AsyncIterator[bytes]:
        yield tar_header(entry.path, entry.size, self.mtime)
        digest, size = hashlib.sha256(), 0
        async for chunk in entry.chunks:
            size += len(chunk)
            if size > entry.size:
                raise ArchiveError(f"{entry.path} is longer than its record says")
            digest.update(chunk)
            yield chunk
        if size != entry.size:
            raise ArchiveError(f"{entry.path} is shorter than its record says")
        if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
            raise ArchiveError(f"{entry.path} does not match the sha256 it was stored with")
        self.objects.append({"path": entry.path, "sha256": digest.hexdigest(), "bytes": size})
        yield tar_padding(size)

    def _count(self, piece: bytes) -> bytes:
        self.digest.update(piece)
        self.size += len(piece)
        return piece
