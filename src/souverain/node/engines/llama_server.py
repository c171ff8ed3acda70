"""llama.cpp through its own server, `llama-server`: parallel slots, continuous batching.

The binary is built on the node in the same build as llama-cpp-python's libraries, from the
llama.cpp sources of its pinned version (scripts/build-llamacpp), and linked to those
libraries: both runtimes of the `llamacpp` engine run the same compiled llama.cpp. A node
without the binary falls back to llama-cpp-python's server (node/engines/llamacpp.py),
which decodes one request at a time.

How it is started, and why:
- `--api-key-file /dev/fd/N`: the replica secret is read from the pipe the supervisor
  passes (node/secret.py), never argv or the environment.
- `--parallel N` slots with `--ctx-size N × context`: every slot holds a whole context
  (no unified KV cache that one long request could fill for the others).
- `--cache-scopes` (souverain's patch, scripts/patches/llama-server-isolation.patch):
  every request names its cache scope (organisation and model), and a slot that starts a
  task of another scope clears its KV cache first, whether that task is then refused,
  fails or is cancelled, and whichever server process sent it; nor does another scope's
  prompt steer which slot a request takes. The flag also disables the host-memory prompt
  cache, which would restore any earlier prompt into any slot. A llama-server without the
  patch refuses the flag, so the replica fails rather than serve without the rule.
- `--cache-ram 0`: that prompt cache off all the same (a slot's KV cache is its only one).
- `--sampling-limit-ms` (the same patch): a request whose sampler has taken longer in all,
  at more than a tenth of that per token, is stopped with an error that says so
  (`sampling limit:`): the serving loop samples every slot in turn, so a costly grammar
  would hold all of them.
  The gateway counts it against the key like a crash (node/engines/base.py).
- `--no-slots`: the slots endpoint shows the prompts in every slot; nobody needs it.
- `--no-webui`, no tools, no MCP, no `--props`, no slot save path: the engine serves the
  gateway's OpenAI requests and nothing else.
- `--reasoning-format none`: the gateway takes thinking out of answers itself, the same
  way for every engine (gateway/reasoning.py).
- `--lora-init-without-apply` with one `--lora` per adapter of a shared replica
  (node/hosted_adapters.py): every adapter loaded, none applied unless the request names
  it (`"lora": [{"id": i, "scale": 1}]`, which only the gateway writes); a request that
  names none is served by the base model alone. Adapters also come and go while it runs
  (souverain's second patch, scripts/patches/llama-server-runtime-lora.patch: node/
  runtime_adapters.py), behind the same replica secret as every route but `/health`.
- `--ssl-cert-file`/`--ssl-key-file`: HTTPS only, with the replica's own certificate (a
  binary built without OpenSSL stops at start, saying so: rebuild it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from souverain.core.fleet import ReplicaSpec
from souverain.node.engines.base import (
    Probe,
    TlsFiles,
    one_embedding,
    one_token_completion,
    sampling_limit_ms,
    tls_options,
)

BINARY_ENV = "SOUVERAIN_LLAMA_SERVER"  # the binary's path, if not beside the interpreter
DEFAULT_SLOTS = 8  # per replica; engine_args.parallel sets it (1..64)


def binary() -> Path | None:
    """This node's llama-server: $SOUVERAIN_LLAMA_SERVER, else the one `make setup` put
    beside the Python interpreter, else one on PATH; None when there is none."""
    named = os.environ.get(BINARY_ENV, "")
    if named:
        path = Path(named)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("llama-server")
    return Path(found) if found else None


def slots_of(spec: ReplicaSpec) -> int:
    return int(spec.engine_args.get("parallel", DEFAULT_SLOTS))


class LlamaServerLauncher:
    name = "llamacpp"
    runtime = "llama-server"
    measures_chat_template = True
    build_hint = "llama-server with OpenSSL (scripts/build-llamacpp)"

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: this node has no llama-server (the replica fails, saying so)

    def slots(self, spec: ReplicaSpec) -> int:
        return slots_of(spec)

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        if self.path is None:
            raise RuntimeError(
                "this node has no llama-server: run scripts/build-llamacpp (make setup "
                f"does), set {BINARY_ENV} to the binary, or use engine_args.runtime "
                "llama-cpp-python"
            )
        slots = slots_of(spec)
        context = int(spec.engine_args.get("n_ctx", spec.context_length))
        threads = str(int(spec.engine_args.get("threads", spec.threads)))
        argv = [
            str(self.path),
            "--model", str(model_path),
            "--alias", spec.model_name,
            "--host", host,
            "--port", str(port),
            "--api-key-file", f"/dev/fd/{secret_fd}",
            "--threads", threads,
            "--threads-batch", threads,
            # cpp-httplib holds a thread per open connection, idle keep-alive ones too:
            # fewer threads than the gateway's pooled connections and a new one is dropped.
            "--threads-http", str(2 * slots + 8),
            "--parallel", str(slots),
            "--ctx-size", str(context * slots),
            "--no-kv-unified",
            "--cache-scopes",
            "--sampling-limit-ms", str(sampling_limit_ms(spec)),
            "--cache-ram", "0",
            "--no-slots",
            "--no-webui",
            "--jinja",
            "--reasoning-format", "none",
            "--no-warmup",
        ]  # fmt: skip
        argv += ["--n-gpu-layers", str(int(spec.engine_args.get("n_gpu_layers", -1)))
                 if spec.gpus else "0"]  # fmt: skip
        if spec.engine_args.get("embedding"):
            argv.append("--embedding")
        if spec.adapter_path:
            argv += ["--lora", spec.adapter_path]
        if spec.adapters:  # a shared replica: each request names its adapter (`lora`), if any
            argv.append("--lora-init-without-apply")
            for adapter in spec.adapters:
                argv += ["--lora", adapter.path or ""]
        return argv + tls_options(tls, certificate="--ssl-cert-file", key="--ssl-key-file")

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        return {}

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        if spec.engine_args.get("embedding"):  # --embedding serves embeddings only
            return one_embedding(spec.model_name)
        return one_token_completion(spec.model_name)
