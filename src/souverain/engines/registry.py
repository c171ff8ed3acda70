from __future__ import annotations

from souverain.engines.base import EngineLauncher
from souverain.engines.embeddings import EmbeddingsLauncher
from souverain.engines.llamacpp import LlamaCppLauncher
from souverain.engines.stand_in import StandInLauncher
from souverain.engines.vllm import VllmLauncher

ENGINES: dict[str, EngineLauncher] = {
    "llamacpp": LlamaCppLauncher(),
    "vllm": VllmLauncher(),
    "embeddings": EmbeddingsLauncher(),
    "stand-in": StandInLauncher(),  # fault tests only; the API refuses it for models
}


def launcher_for(engine: str) -> EngineLauncher:
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; known: {sorted(ENGINES)}") from None
