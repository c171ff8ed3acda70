"""Entry point of a llama.cpp engine process: llama-cpp-python's OpenAI server, plus usage in streams.

llama-cpp-python's server reports token usage only in non-streamed answers. For metering
to be exact, this process counts tokens where llama.cpp produces them, at `Llama.generate`:
the prompt is the token list handed to it and the completion is every non end-of-generation
token it yields, which is exactly how the non-streamed `usage` is computed. At the end of
every stream one extra chunk carries that usage, in OpenAI's shape (`choices: []`); the
gateway passes it on when the client asked for `stream_options.include_usage` and drops
it otherwise. Before the first token, one more chunk (`choices: []`,
`souverain_prompt_tokens`) says how many prompt tokens were read, so a stream cut short
is still charged for its prompt; the gateway never forwards it.

The bearer secret arrives through a pipe (node/secret.py), never argv or the
environment. The server accepts no other.

KV-cache prefix reuse never crosses an organisation: the gateway names each request's
cache scope (an opaque value per organisation) in `X-Souverain-Cache-Scope`, and a
request whose scope differs from the previous one starts from an empty cache. Otherwise
the time to first token tells a tenant whether another tenant's prompt began like its
guess. Requests of one organisation keep reusing each other's prefixes.

A request whose sampler (a grammar, built then applied to every token) has taken more than
`--sampling-limit-ms` in all, at more than a tenth of that per step, is stopped with an
error that says `sampling limit:`: llama.cpp cannot be interrupted inside a sampler, but a
request that costs that much per token would hold the engine for everyone else; the gateway
counts it against the key like a crash. Legitimate steps take a few milliseconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from souverain.node.engines.base import SAMPLING_LIMIT, SAMPLING_LIMIT_MS
from souverain.node.secret import add_tls_arguments, read_secret, uvicorn_tls

CACHE_SCOPE: ContextVar[str] = ContextVar("souverain_cache_scope", default="")
SCOPE_HEADER = b"x-souverain-cache-scope"


class CacheScope:
    """ASGI middleware: the request's cache scope, for `generate` to read."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        value = ""
        for name, raw in scope.get("headers", ()):
            if name == SCOPE_HEADER:
                value = raw.decode("latin-1")
        token = CACHE_SCOPE.set(value)
        try:
            await self.app(scope, receive, send)
        finally:
            CACHE_SCOPE.reset(token)


def install_usage_counting() -> None:
    import llama_cpp

    original_generate = llama_cpp.Llama.generate

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        scope = CACHE_SCOPE.get()
        if getattr(self, "_souverain_scope", None) != scope:
            self.reset()  # another organisation's prefix is never reused
            self._souverain_scope = scope
        counts = [len(tokens), 0]
        self._souverain_usage = counts
        self._souverain_sampling = [0.0, 0]  # seconds in the sampler, steps
        inner = original_generate(self, tokens, *args, **kwargs)
        try:
            for token in inner:
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    counts[1] += 1
                yield token
        finally:
            inner.close()

    llama = llama_cpp.Llama
    chat = _with_stream_usage(llama.create_chat_completion, "chat.completion.chunk")
    text = _with_stream_usage(llama.__call__, "text_completion")
    setattr(llama, "generate", generate)  # noqa: B010
    setattr(llama, "create_chat_completion", chat)  # noqa: B010
    setattr(llama, "__call__", text)  # noqa: B010


class SamplingLimitExceeded(RuntimeError):
    """A sampler over the engine's limit: the request is stopped."""


def install_sampling_limit(limit_ms: int) -> None:
    import llama_cpp

    llama = llama_cpp.Llama
    for name in ("_init_sampler", "sample"):  # building the sampler, then each token
        setattr(llama, name, _limited(getattr(llama, name), limit_ms / 1000))


def _limited(method: Callable[..., Any], limit_s: float) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = method(self, *args, **kwargs)
        spent = getattr(self, "_souverain_sampling", None)
        if spent is None:  # outside `generate`: not a request's
            return result
        spent[0] += time.perf_counter() - started
        spent[1] += 1
        if spent[0] > limit_s and spent[0] / spent[1] > limit_s / 10:
            raise SamplingLimitExceeded(
                f"{SAMPLING_LIMIT} its sampler held the engine more than {limit_s * 1000:.0f} "
                "ms; the request's grammar is too costly for a shared engine"
            )
        return result

    return wrapper


def _with_stream_usage(method: Callable[..., Any], object_name: str) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if not kwargs.get("stream"):
            return result
        return _append_usage(self, result, object_name)

    wrapper.__name__ = getattr(method, "__name__", "wrapper")
    wrapper.__doc__ = method.__doc__
    return wrapper


def _append_usage(
    llama: Any, chunks: Iterator[dict[str, Any]], object_name: str
) -> Iterator[dict[str, Any]]:
    last: dict[str, Any] = {}
    for chunk in chunks:
        if not last:  # the prompt has been read: say how long it was, in case the stream breaks
            prompt = getattr(llama, "_souverain_usage", (0, 0))[0]
            yield {**chunk, "choices": [], "souverain_prompt_tokens": prompt}
        last = chunk
        yield chunk
    prompt, completion = getattr(llama, "_souverain_usage", (0, 0))
    yield {
        "id": last.get("id", ""),
        "object": object_name,
        "created": last.get("created", int(time.time())),
        "model": last.get("model", ""),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="souverain llama.cpp engine")
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--embedding", action="store_true")
    parser.add_argument("--lora", default=None, help="a GGUF LoRA adapter on the base model")
    add_tls_arguments(parser)
    parser.add_argument("--sampling-limit-ms", type=int, default=SAMPLING_LIMIT_MS)
    args = parser.parse_args(argv)
    secret = read_secret()

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    install_usage_counting()
    install_sampling_limit(args.sampling_limit_ms)
    server = ServerSettings(
        host=args.host, port=args.port, api_key=secret, interrupt_requests=False
    )
    model = ModelSettings(
        model=args.model,
        model_alias=args.alias,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=args.ctx,
        n_gpu_layers=args.gpu_layers,
        embedding=args.embedding,
        lora_path=args.lora,
        verbose=False,
    )
    app = CacheScope(create_app(server_settings=server, model_settings=[model]))
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        **uvicorn_tls(args),
    )  # fmt: skip


if __name__ == "__main__":
    main()
