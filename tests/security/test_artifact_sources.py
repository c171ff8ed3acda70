"""Where model weights may come from, attacked: tenants cannot point a model at a path on
the platform's nodes; operators only inside the model roots, after symlinks are resolved;
hub references cannot climb out of their repository; and no error reveals a file's hash or
whether a path exists."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from souverain.core.roles import Role
from souverain.node.artifacts import ArtifactError, resolve
from souverain.testing.factories import unique
from tests.conftest import Platform
from tests.security.helpers import assert_openai_error

NODE_PATHS = [
    "file:///etc/passwd",
    "file:///root/.local/share/souverain/secret.key",
    "file:///proc/self/environ",
    "file:///models/../etc/shadow",
    "file:///tmp/souverain-verified.json",
]
BAD_HUB_REFS = [
    "hf://../../etc/passwd",
    "hf://owner/repo/../../../etc/passwd",
    "hf://owner/repo/./x.gguf",
    "hf://owner",
    "hf://owner/repo",
    "hf://own er/repo/x.gguf",
    "hf://owner/repo/%2e%2e/x.gguf",
    "hf://owner/repo//x.gguf",
    "hf://-owner/repo/x.gguf",
    "hf://owner/repo/x.gguf\x00.txt",
]


async def _register(platform: Platform, key: str, uri: str, org: str | None) -> object:
    body: dict[str, object] = {"name": unique("m"), "uri": uri}
    if org is not None:
        body["org"] = org
    async with platform.client(key) as client:
        return await client.post("/api/models", json=body)


class TestTenantsCannotServeNodeFiles:
    @pytest.mark.parametrize("uri", NODE_PATHS)
    @pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
    async def test_file_uris_are_refused_for_tenants(
        self, platform: Platform, uri: str, role: Role
    ) -> None:
        tenant = await platform.factory.tenant(roles={"t": role})
        key = (await platform.factory.member_key(tenant, "t", role)).key
        refused = await _register(platform, key, uri, tenant.org_name)
        status = 400 if ".." in uri else 403  # malformed first, then not allowed
        error = assert_openai_error(refused, status)  # type: ignore[arg-type]
        assert "hf://" in error["message"] or ".." in error["message"]

    @pytest.mark.parametrize("uri", ["FILE:///etc/passwd", "file:etc/passwd", "/etc/passwd",
                                     "s3://bucket/x", "builtin://../secret"])  # fmt: skip
    async def test_other_spellings_are_not_a_way_round(self, platform: Platform, uri: str) -> None:
        tenant = await platform.factory.tenant(roles={"t": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "t", Role.OWNER)).key
        refused = await _register(platform, key, uri, tenant.org_name)
        assert_openai_error(refused, 400)  # type: ignore[arg-type]

    async def test_a_hub_model_is_fine(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"t": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "t", Role.OWNER)).key
        ok = await _register(platform, key, "hf://acme/tiny-llm/model.Q4_K.gguf", tenant.org_name)
        assert ok.status_code == 201  # type: ignore[attr-defined]


class TestHubReferences:
    @pytest.mark.parametrize("uri", BAD_HUB_REFS)
    async def test_hub_references_stay_inside_their_repository(
        self, platform: Platform, uri: str
    ) -> None:
        tenant = await platform.factory.tenant(roles={"t": Role.OWNER})
        key = (await platform.factory.member_key(tenant, "t", Role.OWNER)).key
        refused = await _register(platform, key, uri, tenant.org_name)
        assert refused.status_code in (400, 422)  # type: ignore[attr-defined]


class TestOperatorsAndModelRoots:
    async def test_operator_file_uris_must_lie_inside_the_model_roots(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        operator = await platform.operator_key()
        roots = platform.settings.model_roots_or_default
        inside = roots[0] / "good.gguf"
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.write_bytes(b"GGUF")
        escape = roots[0] / "escape.gguf"
        escape.unlink(missing_ok=True)
        escape.symlink_to("/etc/passwd")
        assert (await _register(platform, operator, f"file://{inside}", None)).status_code == 201  # type: ignore[attr-defined]
        for uri in (f"file://{tmp_path}/x.gguf", "file:///etc/passwd", f"file://{escape}"):
            refused = await _register(platform, operator, uri, None)
            error = assert_openai_error(refused, 400)  # type: ignore[arg-type]
            assert "model roots" in error["message"]


class TestNoOracles:
    def test_a_symlink_swapped_in_after_registration_is_refused_on_the_node(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "models"
        root.mkdir()
        model = root / "model.gguf"
        model.write_bytes(b"weights")
        checksum = hashlib.sha256(b"weights").hexdigest()
        assert resolve(f"file://{model}", sha256=checksum, roots=[str(root)]) == model
        secret = tmp_path / "secret.key"
        secret.write_text("top secret")
        model.unlink()
        model.symlink_to(secret)
        with pytest.raises(ArtifactError) as refused:
            resolve(f"file://{model}", sha256=checksum, roots=[str(root)])
        assert str(secret) not in str(refused.value)

    def test_a_checksum_mismatch_does_not_say_what_the_file_hashes_to(self, tmp_path: Path) -> None:
        model = tmp_path / "model.gguf"
        model.write_bytes(b"the real contents")
        actual = hashlib.sha256(b"the real contents").hexdigest()
        with pytest.raises(ArtifactError) as refused:
            resolve(f"file://{model}", sha256="0" * 64, roots=[str(tmp_path)])
        assert actual not in str(refused.value)

    def test_outside_the_roots_existing_and_missing_paths_read_the_same(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "models"
        root.mkdir()
        existing, missing = tmp_path / "exists.gguf", tmp_path / "missing.gguf"
        existing.write_bytes(b"x")
        messages = set()
        for path in (existing, missing):
            with pytest.raises(ArtifactError) as refused:
                resolve(f"file://{path}", sha256=None, roots=[str(root)])
            messages.add(str(refused.value))
        assert len(messages) == 1
        assert not any(os.fspath(tmp_path) in m for m in messages)
