"""A stand-in engine: an OpenAI-compatible server that streams canned tokens.

For gateway tests and benchmarks only; never the only test of a feature. It behaves like
souverain's llama.cpp engine where the gateway can tell: it requires its bearer secret,
streams server-sent events ending in a usage chunk with `choices: []` and `[DONE]`, and
reports exact usage. Faults can be injected per request through the prompt text:

    "#fail-500"        answer HTTP 500
    "#break-stream"    stream two tokens, then drop the connection
    "#slow"            wait 0.2 s between tokens (for disconnect tests)
    "#stall"           say nothing for an hour (before the headers)
    "#stall-stream"    stream two tokens, then say nothing for an hour
    "#think"           answer like a reasoning model: `<think>…</think>` then the answer,
                       with both tags cut across two tokens
    "#think-as: T || A"  the same, thinking T and answering A (one word a token)

and, only when it runs as a process of its own (`main`), by killing itself:

    "#die-mid-json"    send half of a JSON answer, then SIGKILL itself
    "#die-mid-stream"  stream two tokens, then SIGKILL itself

Run as a process, `--fault sigill` makes it die of SIGILL on every generation (while the
`--fault-while` path exists, if given), as a llama.cpp build with instructions the CPU
lacks does on its first decode.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

THINKING = [
    "<th",
    "ink>",
    "the ",
    "tenant ",
    "asks",
    "</th",
    "ink>",
    "\n\n",
    "It ",
    "stays ",
    "here.",
]
WORDS = [
    "souverain",
    "keeps",
    "every",
    "token",
    "where",
    "the",
    "tenant",
    "allows",
    "it",
    "to",
    "be",
    "processed",
]


class StandInEngine:
    def __init__(
        self,
        *,
        secret_for: Callable[[str], str],
        model: str = "stand-in",
        tokens: int = 16,
        token_delay_s: float = 0.0,
        own_process: bool = False,
        fault: str = "",
        fault_while: str = "",
    ) -> None:
        """`secret_for(replica_id)` gives the secret a replica accepts. Paths may be prefixed
        with /r/<replica_id> so one stand-in can play many replicas."""
        self.secret_for = secret_for
        self.model = model
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.own_process = own_process  # faults that kill the process are allowed
        self.fault = fault
        self.fault_while = fault_while  # the fault applies only while this path exists
        self.requests: list[dict[str, Any]] = []
        self.cancelled = 0
        self.in_flight = 0
        self.peak_in_flight = 0

        routes = []
        for prefix in ("", "/r/{replica}"):
            routes += [
                Route(prefix + "/v1/models", self.models, methods=["GET"]),
                Route(prefix + "/v1/chat/completions", self.chat, methods=["POST"]),
                Route(prefix + "/v1/completions", self.completions, methods=["POST"]),
                Route(prefix + "/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        self.app = Starlette(routes=routes)

    def _faulty(self) -> bool:
        return not self.fault_while or os.path.exists(self.fault_while)

    def _authorised(self, request: Request) -> bool:
        replica = request.path_params.get("replica", "default")
        return request.headers.get("authorization") == f"Bearer {self.secret_for(replica)}"

    async def models(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "Invalid API key"}, status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "text")

    async def embeddings(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "Invalid API key"}, status_code=401)
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i in range(len(inputs))
        ]
        tokens = sum(len(str(text).split()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def _generate(self, request: Request, kind: str) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "Invalid API key"}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        prompt = _prompt_text(body)
        if self.fault == "sigill" and self.own_process and self._faulty():
            print("stand-in: executing an instruction this CPU does not have", flush=True)
            os.kill(os.getpid(), signal.SIGILL)
        if "#adapter-gone" in prompt:  # souverain's llama-server, the adapter just unloaded
            message = {"code": 400, "message": "lora adapter 0 is not loaded",
                       "type": "invalid_request_error"}  # fmt: skip
            return JSONResponse({"error": message}, status_code=400)
        if "#fail-500" in prompt:
            return JSONResponse({"error": {"message": "engine exploded"}}, status_code=500)
        if "#stall" in prompt and "#stall-stream" not in prompt:
            await asyncio.sleep(3600)
        if "#die-mid-json" in prompt and self.own_process:
            return StreamingResponse(_half_then_die(), media_type="application/json")
        pieces = _thinking_pieces(prompt)
        count = min(int(body.get("max_tokens") or self.tokens), self.tokens)
        if pieces is not None:
            count = min(int(body.get("max_tokens") or len(pieces)), len(pieces))
        prompt_tokens = max(1, len(prompt.split()))
        if body.get("stream"):
            return StreamingResponse(
                self._stream(body, kind, prompt, count, prompt_tokens),
                media_type="text/event-stream",
            )
        if self.token_delay_s:  # generating takes time, streamed or not
            await asyncio.sleep(self.token_delay_s * count)
        text = (
            "".join(pieces[:count])
            if pieces is not None
            else " ".join(WORDS[i % len(WORDS)] for i in range(count))
        )
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count,
            "total_tokens": prompt_tokens + count,
        }
        return JSONResponse(
            {
                "id": "cmpl-stand-in",
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [choice],
                "usage": usage,
            }
        )

    async def _stream(
        self, body: dict[str, Any], kind: str, prompt: str, count: int, prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        delay = 0.2 if "#slow" in prompt else self.token_delay_s
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        base = {
            "id": "cmpl-stand-in",
            "object": obj,
            "created": int(time.time()),
            "model": body.get("model"),
        }
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            # Like souverain's llama.cpp engine: the prompt's length before the first token.
            early: dict[str, Any] = {
                **base,
                "choices": [],
                "souverain_prompt_tokens": prompt_tokens,
            }
            yield f"data: {json.dumps(early)}\n\n".encode()
            for i in range(count):
                if "#break-stream" in prompt and i == 2:
                    await asyncio.sleep(0.05)  # the two tokens reach the gateway first
                    raise ConnectionError("stand-in engine broke the stream")
                if "#stall-stream" in prompt and i == 2:
                    await asyncio.sleep(3600)
                if "#die-mid-stream" in prompt and i == 2 and self.own_process:
                    await asyncio.sleep(0.05)  # the two tokens reach the gateway first
                    _die()
                thinking = _thinking_pieces(prompt)
                piece = thinking[i] if thinking else WORDS[i % len(WORDS)] + " "
                choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                if kind == "chat":
                    choice["delta"] = (
                        {"content": piece} if i else {"role": "assistant", "content": piece}
                    )
                else:
                    choice["text"] = piece
                yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()
                if delay:
                    await asyncio.sleep(delay)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": count,
                "total_tokens": prompt_tokens + count,
            }
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


async def _half_then_die() -> AsyncIterator[bytes]:
    yield b'{"id": "cmpl-stand-in", "object": "chat.completion", "choices": [{"ind'
    await asyncio.sleep(0.05)  # the half reaches the client before the process dies
    _die()


def _thinking_pieces(prompt: str) -> list[str] | None:
    if "#think-as:" in prompt:
        thought, _, said = prompt.split("#think-as:", 1)[1].partition("||")
        return [
            "<think>",
            *(w + " " for w in thought.split()),
            "</think>",
            "\n\n",
            *(w + " " for w in said.split()),
        ]
    return THINKING if "#think" in prompt else None


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        parts = []
        for message in body["messages"]:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return " ".join(parts)
    prompt = body.get("prompt", "")
    return " ".join(prompt) if isinstance(prompt, list) else str(prompt)


def main() -> None:
    """Run a stand-in engine in its own process:

    python -m souverain.testing.stand_in --port 9000 --master-key …   (benchmarks: one
        process plays every replica at /r/<replica>/v1/…, with the secret souverain
        derives for it)
    python -m souverain.testing.stand_in --host H --port P [--fault sigill]
        (a replica's engine, started by souverain: it accepts only the secret in
        SOUVERAIN_ENGINE_SECRET)
    """
    import argparse

    import uvicorn

    from souverain.core.ids import replica_secret
    from souverain.node.secret import add_tls_arguments, uvicorn_tls

    parser = argparse.ArgumentParser(description="canned-token OpenAI-compatible engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--master-key", default="")
    parser.add_argument("--alias", default="stand-in")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--fault", default="", choices=["", "sigill"])
    parser.add_argument("--fault-while", default="", help="only while this path exists")
    add_tls_arguments(parser)
    args = parser.parse_args()
    if args.master_key:
        key = args.master_key.encode()

        def secret_for(replica: str) -> str:
            return replica_secret(key, replica)
    else:
        from souverain.node.secret import read_secret

        secret = read_secret()

        def secret_for(replica: str) -> str:
            return secret

    engine = StandInEngine(
        secret_for=secret_for,
        model=args.alias,
        tokens=args.tokens,
        token_delay_s=args.token_delay,
        own_process=True,
        fault=args.fault,
        fault_while=args.fault_while,
    )
    uvicorn.run(
        engine.app, host=args.host, port=args.port, log_level="warning", access_log=False,
        **uvicorn_tls(args),
    )  # fmt: skip


if __name__ == "__main__":
    main()
