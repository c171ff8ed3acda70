"""The keys `souverain up` makes are printed on a terminal only: when its output goes to a
file or a service's log, the banner says where each key was saved and holds none."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from souverain.cli.run import Banner
from souverain.settings import Settings

OPERATOR = "sk-souv-0123456789abcdef_" + "o" * 43
OWNER = "sk-souv-fedcba9876543210_" + "w" * 43


def shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *, terminal: bool) -> str:  # fmt: skip
    monkeypatch.setenv("SOUVERAIN_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    banner = Banner(Settings(data_dir=tmp_path / "data"))
    banner.first_key, banner.owner_key = OPERATOR, OWNER
    banner.show(ready=True)
    assert json.loads((tmp_path / "config.json").read_text())["api_key"] == OPERATOR
    assert (tmp_path / "owner.key").read_text().strip() == OWNER
    return capsys.readouterr().out


def test_a_terminal_sees_both_keys_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = shown(tmp_path, monkeypatch, capsys, terminal=True)
    assert out.count(OPERATOR) == 1 and out.count(OWNER) == 1


def test_a_log_gets_where_the_keys_are_not_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = shown(tmp_path, monkeypatch, capsys, terminal=False)
    assert "sk-souv-" not in out
    assert out.count("not printed: this output is not a terminal") == 2
    assert str(tmp_path / "owner.key") in out.replace("\n", "")
