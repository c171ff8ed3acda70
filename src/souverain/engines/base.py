"""The engine protocol: what souverain needs to start and probe an OpenAI-compatible engine."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from souverain.core.fleet import ReplicaSpec


class EngineLauncher(Protocol):
    name: str
    health_path: str
    health_needs_secret: bool

    def command(self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int) -> list[str]:
        """The argv of the engine process. Never carries the secret (argv is world-readable)."""
        ...

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        """Extra environment variables; this is where the replica secret travels."""
        ...
