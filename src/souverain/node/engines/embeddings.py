"""Sentence embeddings on CPU, through souverain's own small OpenAI-compatible server."""

from __future__ import annotations

import sys
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.engines.base import Probe, TlsFiles, one_embedding, tls_options


class EmbeddingsLauncher:
    name = "embeddings"
    runtime = "embeddings"
    measures_chat_template = False
    build_hint = "PyTorch (install the CPU build made for this architecture)"

    def slots(self, spec: ReplicaSpec) -> int | None:
        return None  # the gateway's default for the engine (catalog/routes.py)

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        return [
            sys.executable,
            "-m",
            "souverain.node.engines.embeddings_main",
            "--model",
            str(model_path),
            "--alias",
            spec.model_name,
            "--host",
            host,
            "--port",
            str(port),
            "--threads",
            str(int(spec.engine_args.get("threads", spec.threads))),
            *tls_options(tls, certificate="--ssl-cert-file", key="--ssl-key-file"),
        ]

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        return {"HF_HUB_OFFLINE": "1"}  # the secret travels through a pipe

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        return one_embedding(spec.model_name)
