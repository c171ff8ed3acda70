"""llama.cpp through llama-cpp-python's OpenAI server (CPU, or GPU with offload)."""

from __future__ import annotations

import sys
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.engines.base import (
    Probe,
    TlsFiles,
    one_token_completion,
    sampling_limit_ms,
    tls_options,
)


class LlamaCppLauncher:
    name = "llamacpp"
    runtime = "llama-cpp-python"
    measures_chat_template = True
    build_hint = "llama-cpp-python"

    def slots(self, spec: ReplicaSpec) -> int | None:
        return None  # the gateway's default for the engine (catalog/routes.py)

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        argv = [
            sys.executable,
            "-m",
            "souverain.node.engines.llamacpp_main",
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
            "--ctx",
            str(int(spec.engine_args.get("n_ctx", spec.context_length))),
            "--sampling-limit-ms",
            str(sampling_limit_ms(spec)),
        ]
        if spec.gpus:
            argv += ["--gpu-layers", str(int(spec.engine_args.get("n_gpu_layers", -1)))]
        if spec.engine_args.get("embedding"):
            argv.append("--embedding")
        if spec.adapter_path:
            argv += ["--lora", spec.adapter_path]
        return argv + tls_options(tls, certificate="--ssl-cert-file", key="--ssl-key-file")

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        return {}  # the secret travels through a pipe (node/secret.py)

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        return one_token_completion(spec.model_name)
