"""Entry point of an embeddings engine process: a sentence-transformers model behind an
OpenAI-compatible `/v1/embeddings`.

It answers like OpenAI's API, `encoding_format` `float` or `base64` (little-endian
float32, what the official SDK asks for by default), with exact usage: the number of
tokens the model's tokenizer actually read (after its truncation). The bearer secret
arrives in the environment; the server accepts no other. No network access: the model is
loaded from a local directory with the hub switched off.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

from souverain.node.secret import add_tls_arguments, read_secret, uvicorn_tls


def build_app(model: Any, *, alias: str, secret: str) -> Any:
    import numpy as np
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = asyncio.Lock()  # one batch at a time: the model is not re-entrant on CPU threads
    dimension = int(model.get_embedding_dimension())

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {secret}"

    async def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return _refuse(401, "Invalid API key")
        return JSONResponse(
            {"object": "list", "data": [{"id": alias, "object": "model", "owned_by": "souverain"}]}
        )

    async def embeddings(request: Request) -> JSONResponse:
        if not authorised(request):
            return _refuse(401, "Invalid API key")
        body = await request.json()
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _refuse(400, "input must be a string or a list of strings")
        if body.get("dimensions") not in (None, dimension):
            return _refuse(400, f"this model produces {dimension} dimensions")
        async with lock:
            vectors, tokens = await asyncio.to_thread(_encode, model, texts)
        encoding = body.get("encoding_format") or "float"
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding, np)}
            for i, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = {
            "id": f"embd-{secrets.token_hex(8)}",
            "object": "list",
            "data": data,
            "model": alias,
        }
        return JSONResponse(answer | {"usage": usage})  # `id` is Mistral's; OpenAI's SDK ignores it

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )


def _refuse(status: int, message: str) -> JSONResponse:
    """An error in OpenAI's shape."""
    from starlette.responses import JSONResponse

    error = {"message": message, "type": "invalid_request_error", "code": None, "param": None}
    return JSONResponse({"error": error}, status_code=status)


def _encode(model: Any, texts: list[str]) -> tuple[Any, int]:
    """Normalised vectors of the texts, and the tokens they took."""
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    limit = int(model.max_seq_length)
    counted = model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    return vectors, sum(len(ids) for ids in counted)


def _encoded(vector: Any, encoding: str, np: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="souverain embeddings engine")
    parser.add_argument("--model", required=True, help="a sentence-transformers model directory")
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    add_tls_arguments(parser)
    args = parser.parse_args(argv)
    secret = read_secret()
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a hub from an engine
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import torch
    import uvicorn
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    app = build_app(model, alias=args.alias, secret=secret)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        **uvicorn_tls(args),
    )  # fmt: skip


if __name__ == "__main__":
    main()
