"""The canned-token stand-in engine (`souverain.testing.stand_in`) as a replica's real
process, for fault tests: it is started, probed, supervised and killed like any engine.

No model can be registered with this engine through the API (the `engine` field accepts
llamacpp, vllm and embeddings only); test fixtures write such models to the database.
"""

from __future__ import annotations

import sys
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.engines.base import Probe, TlsFiles, one_token_completion, tls_options


class StandInLauncher:
    name = "stand-in"
    runtime = "stand-in"
    measures_chat_template = True
    build_hint = "the stand-in engine"

    def slots(self, spec: ReplicaSpec) -> int | None:
        """`parallel` when given, else the gateway's default (catalog/routes.py)."""
        parallel = spec.engine_args.get("parallel")
        return None if parallel is None else int(parallel)

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        argv = [
            sys.executable,
            "-m",
            "souverain.testing.stand_in",
            "--host",
            host,
            "--port",
            str(port),
            "--alias",
            spec.model_name,
        ]
        if spec.engine_args.get("fault"):
            argv += ["--fault", str(spec.engine_args["fault"])]
        if spec.engine_args.get("fault_while"):
            argv += ["--fault-while", str(spec.engine_args["fault_while"])]
        if spec.engine_args.get("token_delay"):
            argv += ["--token-delay", str(float(spec.engine_args["token_delay"]))]
        return argv + tls_options(tls, certificate="--ssl-cert-file", key="--ssl-key-file")

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        return {}  # the secret travels through a pipe (node/secret.py)

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        return one_token_completion(spec.model_name)
