"""vLLM's OpenAI server, for GPU nodes. It reports usage in streams by itself."""

from __future__ import annotations

import sys
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.engines.base import Probe, TlsFiles, one_token_completion, tls_options


class VllmLauncher:
    name = "vllm"
    runtime = "vllm"
    measures_chat_template = True
    build_hint = "vLLM (install the wheel built for this node's CPU and CUDA version)"

    def slots(self, spec: ReplicaSpec) -> int | None:
        return None  # the gateway's default for the engine (catalog/routes.py)

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        argv = [
            sys.executable,
            "-m",
            "souverain.node.engines.vllm_main",
            "--model",
            str(model_path),
            "--served-model-name",
            spec.model_name,
            "--host",
            host,
            "--port",
            str(port),
            "--max-model-len",
            str(int(spec.engine_args.get("max_model_len", spec.context_length))),
            "--disable-log-requests",
            # Prefix caching would be shared by every organisation, a timing channel
            # between tenants: off.
            "--no-enable-prefix-caching",
        ]
        if spec.gpus > 1:
            argv += ["--tensor-parallel-size", str(spec.gpus)]
        if "gpu_memory_utilization" in spec.engine_args:
            argv += [
                "--gpu-memory-utilization",
                str(float(spec.engine_args["gpu_memory_utilization"])),
            ]
        return argv + tls_options(tls, certificate="--ssl-certfile", key="--ssl-keyfile")

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        return {}  # the secret travels through a pipe; vllm_main hands it to vLLM in-process

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        return one_token_completion(spec.model_name)
