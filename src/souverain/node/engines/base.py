"""The engine protocol: what souverain needs to start an OpenAI-compatible engine and to
know that it really answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from souverain.core.fleet import ReplicaSpec

# A request whose sampler (a grammar, most of all) has taken longer than this in all, at
# more than a tenth of it per token, is stopped: the engine samples every request's tokens
# in one loop, so it would hold every other tenant's requests too. Legitimate steps take a
# few milliseconds.
SAMPLING_LIMIT_MS = 1000
SAMPLING_LIMIT = "sampling limit:"  # how a llama.cpp engine's error says it stopped one


def sampling_limit_ms(spec: ReplicaSpec) -> int:
    return int(spec.engine_args.get("sampling_limit_ms", SAMPLING_LIMIT_MS))


@dataclass(frozen=True)
class TlsFiles:
    """Where the replica's certificate and key are, for the engine to load at start: 0600
    files in the replica's memory-backed scratch directory (node/scratch.py), removed once
    the engine answers. Paths are not secret; the key is never in argv or the environment."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Probe:
    """A tiny real request sent with the replica secret. An engine is ready only once it
    has answered one: an HTTP route that answers proves nothing about the first decode,
    which is where a build with instructions the CPU lacks dies."""

    path: str
    body: dict[str, Any]
    answered: Callable[[Any], bool]  # the decoded JSON answer -> whether it produced output


def one_token_completion(model: str) -> Probe:
    return Probe(
        path="/v1/completions",
        body={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
        answered=lambda answer: isinstance(answer, dict) and bool(answer.get("choices")),
    )


def one_embedding(model: str) -> Probe:
    return Probe(
        path="/v1/embeddings",
        body={"model": model, "input": "ready?"},
        answered=lambda answer: bool(
            isinstance(answer, dict) and answer.get("data") and answer["data"][0]["embedding"]
        ),
    )


def chat_overhead_probes(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two chats whose prompt token counts tell what the chat template adds: one empty
    user message, then three empty messages (user, assistant, user)."""
    one = [{"role": "user", "content": ""}]
    three = [*one, {"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    return tuple(  # type: ignore[return-value]
        {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
        for messages in (one, three)
    )


class EngineLauncher(Protocol):
    name: str  # the engine a deployment names
    runtime: str  # what serves it on the node (llamacpp: llama-server or llama-cpp-python)
    build_hint: str  # what to rebuild when the engine dies of an illegal instruction

    def slots(self, spec: ReplicaSpec) -> int | None:
        """Requests the engine decodes at once, when it knows (else the gateway's default)."""
        ...

    def command(
        self, *, spec: ReplicaSpec, model_path: Path, host: str, port: int, secret_fd: int,
        tls: TlsFiles | None = None,
    ) -> list[str]:  # fmt: skip
        """The argv of the engine process. Never carries the secret (argv is world-readable);
        `secret_fd` is the inherited pipe holding it (node/secret.py); with `tls` the
        engine serves HTTPS with that certificate, and nothing in clear."""
        ...

    def environment(self, *, spec: ReplicaSpec) -> dict[str, str]:
        """Extra environment variables; this is where the replica secret travels."""
        ...

    def probe(self, *, spec: ReplicaSpec) -> Probe:
        """The request that proves the engine generates."""
        ...

    measures_chat_template: bool  # whether to measure the template's overhead once ready


def tls_options(tls: TlsFiles | None, *, certificate: str, key: str) -> list[str]:
    """The engine's own options naming its certificate and key files (none without TLS)."""
    return [] if tls is None else [certificate, str(tls.certificate), key, str(tls.key)]
