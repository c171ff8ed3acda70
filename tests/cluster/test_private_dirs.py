"""A node's private directory (Ray's 0777 temp directory lives inside it) is made 0700
with its missing parent, and refused inside a parent other users may change."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from souverain.cluster import ray_node


class TestPrivateNodeDir:
    def test_a_missing_parent_is_made_private_too(self, tmp_path: Path) -> None:
        base = tmp_path / "souverain-ray-0" / "node"
        ray_node.check_private_dir(base)
        for directory in (base.parent, base):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory

    def test_a_parent_others_may_change_is_refused_unless_sticky(self, tmp_path: Path) -> None:
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        with pytest.raises(ray_node.NodeError, match="may be changed by other users"):
            ray_node.check_private_dir(shared / "node")
        assert not (shared / "node").exists()  # nothing made
        shared.chmod(0o1777)  # as /tmp: others cannot rename what is ours
        ray_node.check_private_dir(shared / "node")
