"""Object stores, one per datacenter: a local directory or an S3-compatible bucket.

Both take an async stream of (already encrypted) chunks and give one back, so an upload or
download of any size holds a few MiB in memory at most. `store_from_uri` reads the
operator's configuration:

    file:///srv/souverain/files/par1                  a directory (made 0700)
    s3://bucket/prefix?endpoint=https://s3.example&region=eu-west-3
                                                      credentials from the environment
                                                      (AWS_ACCESS_KEY_ID, …) or the instance
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

READ_CHUNK = 1024 * 1024
PART = 8 * 1024 * 1024  # S3 multipart parts (at least 5 MiB except the last)


class ObjectStore(Protocol):
    uri: str

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the chunks under `key`; returns the bytes stored. All or nothing."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...


class StoreError(Exception):
    pass


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise StoreError("object keys are plain names")
        return self.root / key

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in chunks:
                    await asyncio.to_thread(handle.write, chunk)
                    written += len(chunk)
                await asyncio.to_thread(handle.flush)
                await asyncio.to_thread(os.fsync, handle.fileno())
            await asyncio.to_thread(os.replace, temporary, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return written

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(self._path(key).open, "rb")
        except FileNotFoundError:
            raise StoreError("the object is not in the store") from None
        with handle:
            while block := await asyncio.to_thread(handle.read, READ_CHUNK):
                yield block

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(key).unlink)


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
    ) -> None:
        import boto3  # only installations with S3 stores need it loaded

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}"
        self._client: Any = boto3.client("s3", endpoint_url=endpoint, region_name=region)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        upload = await asyncio.to_thread(
            self._client.create_multipart_upload, Bucket=self.bucket, Key=self._key(key)
        )
        upload_id, buffer, written = upload["UploadId"], bytearray(), 0
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                buffer += chunk
                written += len(chunk)
                if len(buffer) >= PART:
                    parts.append(await self._part(key, upload_id, len(parts) + 1, bytes(buffer)))
                    buffer.clear()
            if buffer or not parts:
                parts.append(await self._part(key, upload_id, len(parts) + 1, bytes(buffer)))
            await asyncio.to_thread(
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    self._client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self._key(key),
                    UploadId=upload_id,
                )
            raise
        return written

    async def _part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        answer = await asyncio.to_thread(
            self._client.upload_part,
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"ETag": answer["ETag"], "PartNumber": number}

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            answer = await asyncio.to_thread(
                self._client.get_object, Bucket=self.bucket, Key=self._key(key)
            )
        except Exception as error:
            raise StoreError("the object is not in the store") from error
        body = answer["Body"]
        try:
            while block := await asyncio.to_thread(body.read, READ_CHUNK):
                yield block
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=self._key(key))


def store_from_uri(uri: str) -> ObjectStore:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint=query.get("endpoint"),
            region=query.get("region"),
        )
    raise StoreError(f"file stores are file:// or s3:// URIs, not {uri!r}")
