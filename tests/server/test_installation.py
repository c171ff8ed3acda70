"""One installation, one signing key: every server signs with it whatever its data
directory; a process given another key, or another master key, refuses to start.
`souverain init` makes the installation once and shows its operator key only to a 0600 file
or a terminal; a server never prints one."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.installation import signing
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.live import LiveServer
from tests.conftest import MASTER_KEY, Platform

SOUVERAIN = str(Path(sys.executable).with_name("souverain"))


def foreign_key_file(directory: Path) -> Path:
    path = directory / "other.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


async def public_key(url: str, key: str) -> str:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        return str((await c.get("/api/signing-key")).json()["key_id"])


class TestOneSigningKey:
    async def test_a_second_server_with_its_own_data_dir_signs_with_the_same_key(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        second = platform.settings.model_copy(update={"data_dir": tmp_path, "port": 8001})
        operator = await platform.operator_key()
        with LiveServer(create_app(second)) as other:
            assert await public_key(other.url, operator) == await public_key(platform.url, operator)
        assert not (tmp_path / "signing.key").exists()  # nothing of its own

    async def test_another_key_file_or_master_key_is_refused(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        engine = create_engine_unpooled(platform.settings.sqlalchemy_url)
        sessions = session_factory(engine)
        try:
            with pytest.raises(signing.InstallationMismatch, match="not the installation's"):
                await signing.installation_key(
                    sessions, master_key=MASTER_KEY.encode(), key_file=foreign_key_file(tmp_path)
                )
            with pytest.raises(signing.InstallationMismatch, match="SOUVERAIN_SECRET_KEY"):
                await signing.installation_key(
                    sessions, master_key=b"another-master-key-" * 3, key_file=None
                )
        finally:
            await engine.dispose()

    async def test_souverain_server_refuses_to_start_with_a_foreign_key(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        env = {
            **os.environ,
            "SOUVERAIN_DATABASE_URL": platform.settings.database_url or "",
            "SOUVERAIN_SECRET_KEY": MASTER_KEY,
            "SOUVERAIN_SIGNING_KEY_FILE": str(foreign_key_file(tmp_path)),
            "SOUVERAIN_DATA_DIR": str(tmp_path),
        }
        ran = await asyncio.to_thread(
            subprocess.run,
            [SOUVERAIN, "server", "--port", "1"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 1
        assert "refused to start" in ran.stdout + ran.stderr
        assert "not the installation's signing key" in ran.stdout + ran.stderr


class TestInit:
    def run(self, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SOUVERAIN_DATA_DIR": str(tmp_path / "data"),
               "SOUVERAIN_SECRET_KEY": MASTER_KEY}  # fmt: skip
        env.pop("SOUVERAIN_DATABASE_URL", None)
        return subprocess.run(
            [SOUVERAIN, "init", *args], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def test_init_writes_the_operator_key_to_a_private_file_once(self, tmp_path: Path) -> None:
        key_file = tmp_path / "operator.key"
        first = self.run(tmp_path, "--operator-key-file", str(key_file))
        assert first.returncode == 0, first.stderr
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("sk-souv-") and key not in first.stdout + first.stderr
        assert "smollm2-135m-instruct" in first.stdout
        again = self.run(tmp_path, "--operator-key-file", str(tmp_path / "second.key"))
        assert again.returncode == 0, again.stderr
        assert "exists already" in again.stdout
        assert not (tmp_path / "second.key").exists()  # nothing new, no empty file
        settings = Settings(data_dir=tmp_path / "data", secret_key=MASTER_KEY)  # type: ignore[arg-type]
        with LiveServer(create_app(settings)) as server:
            me = httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {key}"})
            models = httpx.get(
                f"{server.url}/api/models", headers={"Authorization": f"Bearer {key}"}
            )
        assert me.json()["role"] == "operator"
        assert "smollm2-135m-instruct" in {m["name"] for m in models.json()}

    def test_init_never_writes_the_key_into_a_pipe(self, tmp_path: Path) -> None:
        refused = self.run(tmp_path)
        assert refused.returncode == 2
        assert "only on a terminal" in refused.stderr
        assert "sk-souv-" not in refused.stdout + refused.stderr
        made = self.run(tmp_path, "--operator-key-file", str(tmp_path / "k"))
        assert made.returncode == 0 and (tmp_path / "k").read_text().startswith("sk-souv-")

    def test_an_existing_file_is_never_overwritten(self, tmp_path: Path) -> None:
        (tmp_path / "k").write_text("keep me")
        refused = self.run(tmp_path, "--operator-key-file", str(tmp_path / "k"))
        assert refused.returncode == 2
        assert (tmp_path / "k").read_text() == "keep me"
