"""Encrypted objects in real stores (a local directory, and moto's S3-compatible server as
a separate process): round trips of any size in bounded memory, and every kind of tampering
refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from souverain.storage.crypto import (
    SEGMENT,
    DecryptionError,
    Sealer,
    new_salt,
    open_sealed,
    organisation_key,
    unwrap,
    wrap,
)
from souverain.storage.stores import LocalStore, ObjectStore, store_from_uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-3")
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="eu-west-3").create_bucket(
        Bucket="tenant-files", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"}
    )
    yield url
    process.kill()
    process.wait()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "files")
    endpoint = request.getfixturevalue("s3_endpoint")
    return store_from_uri(f"s3://tenant-files/par1?endpoint={endpoint}&region=eu-west-3")


async def _chunks(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _sealed(data: bytes, key: bytes, file_id: str) -> AsyncIterator[bytes]:
    sealer = Sealer(key, file_id)
    yield sealer.header
    async for chunk in _chunks(data):
        for piece in sealer.feed(chunk):
            yield piece
    yield sealer.finish()


async def _plain(store: ObjectStore, key: bytes, object_key: str, file_id: str) -> bytes:
    return b"".join([p async for p in open_sealed(store.read(object_key), key, file_id)])


class TestRoundTrips:
    @pytest.mark.parametrize("size", [0, 1, SEGMENT, SEGMENT + 1, 9 * 1024 * 1024 + 7])
    async def test_what_is_stored_comes_back_and_is_not_readable_in_the_store(
        self, store: ObjectStore, size: int
    ) -> None:
        data = os.urandom(size // 2) + b"souverain-canary" * (size // 32)
        data = data[:size]
        key = os.urandom(32)
        written = await store.write("obj1", _sealed(data, key, "file-1"))
        assert written > size
        assert await _plain(store, key, "obj1", "file-1") == data
        raw = b"".join([p async for p in store.read("obj1")])
        assert (b"souverain-canary" not in raw) or size < 16
        await store.delete("obj1")


class TestTampering:
    async def _stored(self, tmp_path: Path) -> tuple[LocalStore, bytes, Path]:
        store = LocalStore(tmp_path / "files")
        key = os.urandom(32)
        await store.write("obj", _sealed(os.urandom(3 * SEGMENT + 100), key, "f"))
        return store, key, tmp_path / "files" / "obj"

    @pytest.mark.parametrize(
        "attack", ["flip", "truncate-segment", "truncate-bytes", "append", "swap"]
    )
    async def test_tampered_objects_do_not_decrypt(self, tmp_path: Path, attack: str) -> None:
        store, key, path = await self._stored(tmp_path)
        raw = bytearray(path.read_bytes())
        record = 4 + SEGMENT + 16
        if attack == "flip":
            raw[100] ^= 1
        elif attack == "truncate-segment":
            raw = raw[: 8 + 3 * record]  # the last segment removed
        elif attack == "truncate-bytes":
            raw = raw[:-5]
        elif attack == "append":
            raw += raw[8 : 8 + record]
        else:  # swap the first two segments
            first, second = raw[8 : 8 + record], raw[8 + record : 8 + 2 * record]
            raw[8 : 8 + 2 * record] = second + first
        path.write_bytes(bytes(raw))
        with pytest.raises(DecryptionError):
            await _plain(store, key, "obj", "f")

    async def test_an_object_moved_to_another_files_id_does_not_decrypt(
        self, tmp_path: Path
    ) -> None:
        store, key, _ = await self._stored(tmp_path)
        with pytest.raises(DecryptionError):
            await _plain(store, key, "obj", "another-file")


class TestKeys:
    def test_the_organisation_key_needs_its_salt(self) -> None:
        master, salt = os.urandom(32), new_salt()
        kek = organisation_key(master, salt, "org_a")
        wrapped = wrap(kek, b"k" * 32, "file-1")
        assert unwrap(organisation_key(master, salt, "org_a"), wrapped, "file-1") == b"k" * 32
        for other in (
            organisation_key(master, new_salt(), "org_a"),  # the salt was erased and remade
            organisation_key(master, salt, "org_b"),  # another organisation
        ):
            with pytest.raises(DecryptionError):
                unwrap(other, wrapped, "file-1")
        with pytest.raises(DecryptionError):
            unwrap(kek, wrapped, "file-2")


class TestThroughTheApi:
    async def test_files_land_in_an_s3_compatible_store_and_come_back(
        self, s3_endpoint: str, tmp_path: Path
    ) -> None:
        import io

        import boto3
        import openai

        from souverain.core.roles import Role
        from souverain.db.engine import create_engine_unpooled, session_factory
        from souverain.server.app import create_app
        from souverain.settings import Settings
        from souverain.testing.factories import Factory
        from souverain.testing.live import LiveServer
        from tests.conftest import MASTER_KEY

        settings = Settings(
            data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 's.db'}",
            secret_key=MASTER_KEY,  # type: ignore[arg-type]
            file_stores={"s3-dc": f"s3://tenant-files/api?endpoint={s3_endpoint}&region=eu-west-3"},
            port=free_port(),
        )  # fmt: skip
        with LiveServer(create_app(settings), port=settings.port) as server:
            db = create_engine_unpooled(settings.sqlalchemy_url)
            factory = Factory(session_factory(db))
            await factory.datacenter("s3-dc", country="FR")
            tenant = await factory.tenant(roles={"o": Role.OWNER})
            key = (await factory.member_key(tenant, "o", Role.OWNER)).key
            sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            content = b"confidential " * 100_000  # 1.3 MB: several segments
            created = sdk.files.create(file=("c.txt", io.BytesIO(content)), purpose="user_data")
            assert sdk.files.content(created.id).read() == content
            s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-3")
            [obj] = s3.list_objects_v2(Bucket="tenant-files", Prefix="api/")["Contents"]
            raw = s3.get_object(Bucket="tenant-files", Key=obj["Key"])["Body"].read()
            assert b"confidential" not in raw and len(raw) > len(content)
            sdk.files.delete(created.id)
            assert "Contents" not in s3.list_objects_v2(Bucket="tenant-files", Prefix="api/")
            await db.dispose()
