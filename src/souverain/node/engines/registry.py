from __future__ import annotations

import os
from collections.abc import Mapping

from souverain.core.engine_args import LLAMACPP_RUNTIMES
from souverain.node.engines import llama_server
from souverain.node.engines.base import EngineLauncher
from souverain.node.engines.embeddings import EmbeddingsLauncher
from souverain.node.engines.llamacpp import LlamaCppLauncher
from souverain.node.engines.stand_in import StandInLauncher
from souverain.node.engines.vllm import VllmLauncher

ENGINES: dict[str, EngineLauncher] = {
    "llamacpp": LlamaCppLauncher(),
    "vllm": VllmLauncher(),
    "embeddings": EmbeddingsLauncher(),
    "stand-in": StandInLauncher(),  # fault tests only; the API refuses it for models
}
# Which program serves the `llamacpp` engine: a deployment's `engine_args.runtime`, else
# the node's SOUVERAIN_LLAMACPP_RUNTIME, else DEFAULT_RUNTIME. `auto` means llama-server
# where the node has the binary, llama-cpp-python elsewhere.
RUNTIME_ENV = "SOUVERAIN_LLAMACPP_RUNTIME"
DEFAULT_RUNTIME = "auto"


def launcher_for(engine: str, engine_args: Mapping[str, object] | None = None) -> EngineLauncher:
    if engine == "llamacpp":
        return llamacpp_launcher(engine_args or {})
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; known: {sorted(ENGINES)}") from None


def llamacpp_launcher(engine_args: Mapping[str, object]) -> EngineLauncher:
    wanted = str(engine_args.get("runtime") or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME)
    if wanted not in LLAMACPP_RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={wanted!r}: not one of {', '.join(LLAMACPP_RUNTIMES)}")
    if wanted == "llama-cpp-python":
        return ENGINES["llamacpp"]
    found = llama_server.binary()
    if found is None and wanted == "auto":
        return ENGINES["llamacpp"]
    return llama_server.LlamaServerLauncher(found)  # without a binary: `failed`, saying so
