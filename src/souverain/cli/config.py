"""Where the CLI finds its server and key: flags, then environment, then the config file.

`souverain up` writes the config file (mode 0600) with the URL and, on first start, the
operator key. SOUVERAIN_CONFIG moves the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from souverain.settings import default_config_file


def config_path() -> Path:
    override = os.environ.get("SOUVERAIN_CONFIG")
    return Path(override) if override else default_config_file()


def read_config() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_config(*, url: str, api_key: str | None) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = read_config()
    data["url"] = url
    if api_key:
        data["api_key"] = api_key
    return _write_private(path, json.dumps(data, indent=2))


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    config = read_config()
    return (
        url or os.environ.get("SOUVERAIN_URL") or config.get("url") or "http://127.0.0.1:8000",
        api_key or os.environ.get("SOUVERAIN_API_KEY") or config.get("api_key"),
    )


def owner_key_path() -> Path:
    """Where `souverain up` keeps the default organisation's owner key, beside the config."""
    return config_path().with_name("owner.key")


def write_owner_key(key: str) -> Path:
    path = owner_key_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _write_private(path, key + "\n")


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path
