"""Hostile bodies are refused with a 4xx before any engine sees them, quickly, never a 5xx.

For /v1 the proof that no engine was reached is twofold: the stand-in engine's request log
did not grow, and no usage record was opened for the caller's key (one is opened just
before an engine is called). Each request is bounded in time, so a parser that hangs on
deep nesting fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from souverain.core.roles import Role
from souverain.testing.factories import unique
from tests.conftest import Platform, wait_until
from tests.security.helpers import (
    after_server_error,
    assert_openai_error,
    serve,
    usage_count,
)

TIME_LIMIT_S = 20.0
DEPTH = 100_000
JSON = "application/json"
PLACEHOLDER = '"@placeholder@"'


@dataclass
class Target:
    platform: Platform
    org: str
    member: str
    member_key_id: str
    admin: str
    chat_model: str
    embeddings_model: str


@pytest.fixture(scope="module")
async def target(platform: Platform) -> Target:
    tenant = await platform.factory.tenant(roles={"mem": Role.MEMBER, "adm": Role.ADMIN})
    member = await platform.factory.member_key(tenant, "mem", Role.MEMBER)
    admin = await platform.factory.member_key(tenant, "adm", Role.ADMIN)
    chat = await serve(platform)
    embeddings = await serve(platform, capabilities=("embeddings",))
    return Target(
        platform,
        tenant.org_name,
        member.key,
        member.id,
        admin.key,
        chat.name,
        embeddings.name,
    )


# --------------------------------------------------------------------------- /v1


def base(endpoint: str, target: Target) -> dict[str, Any]:
    if endpoint == "chat":
        return {"model": target.chat_model, "messages": [{"role": "user", "content": "hi"}]}
    if endpoint == "completions":
        return {"model": target.chat_model, "prompt": "hi"}
    return {"model": target.embeddings_model, "input": "hi"}


PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
TEXT_SLOT = {
    "chat": '"content": "hi"',
    "completions": '"prompt": "hi"',
    "embeddings": '"input": "hi"',
}


def with_text(endpoint: str, body: dict[str, Any], raw_text: str) -> bytes:
    """The body, with the text slot (message content, prompt, input) replaced by raw JSON."""
    encoded = json.dumps(body)
    slot = TEXT_SLOT[endpoint]
    assert slot in encoded
    return encoded.replace(slot, slot.split(":")[0] + ": " + raw_text).encode()


def with_raw_field(body: dict[str, Any], name: str, raw_value: str) -> bytes:
    """The body plus one field whose value is written as raw JSON text (NaN, 1e309…)."""
    encoded = json.dumps(body)
    return (encoded[:-1] + f', "{name}": {raw_value}}}').encode()


def with_fields(body: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps(body | fields).encode()


Builder = Callable[[str, dict[str, Any], int], bytes]


@dataclass(frozen=True)
class V1Case:
    id: str
    build: Builder
    status: int = 400
    content_type: str | None = JSON
    chunked: bool = False
    endpoints: tuple[str, ...] = ("chat", "completions", "embeddings")
    param: str | None = None


def _big(endpoint: str, body: dict[str, Any], limit: int) -> bytes:
    return with_text(endpoint, body, json.dumps("x" * (limit + 10)))


def _nested_objects(_: str, body: dict[str, Any], __: int) -> bytes:
    encoded = json.dumps(body)
    return (encoded[:-1] + ', "metadata": ' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "}").encode()


V1_CASES = [
    V1Case("oversized-declared", _big, status=413),
    V1Case("oversized-chunked", _big, status=413, chunked=True),
    V1Case(
        "text-over-a-million-characters",
        lambda e, b, _: with_text(e, b, json.dumps("x" * 1_000_001)),
    ),
    V1Case("huge-max-tokens", lambda e, b, _: with_fields(b, max_tokens=10**9), param="max_tokens"),
    V1Case("bignum-max-tokens", lambda e, b, _: with_raw_field(b, "max_tokens", "1" + "0" * 400)),
    V1Case("n-two", lambda e, b, _: with_fields(b, n=2), param="n"),
    V1Case("n-huge", lambda e, b, _: with_fields(b, n=10**12), param="n"),
    V1Case("nested-arrays-in-text", lambda e, b, _: with_text(e, b, "[" * DEPTH + "]" * DEPTH)),
    V1Case("nested-objects", _nested_objects),
    V1Case("nested-arrays-as-body", lambda e, b, _: b"[" * DEPTH + b"]" * DEPTH),
    V1Case(
        "invalid-utf8",
        lambda e, b, _: with_text(e, b, PLACEHOLDER).replace(PLACEHOLDER.encode(), b'"hi\xff\xfe"'),
    ),
    V1Case(
        "overlong-utf8",
        lambda e, b, _: with_text(e, b, PLACEHOLDER).replace(PLACEHOLDER.encode(), b'"\xc0\xaf"'),
    ),
    V1Case("lone-surrogate", lambda e, b, _: with_text(e, b, '"\\ud800"')),
    V1Case("utf8-bom", lambda e, b, _: b"\xef\xbb\xbf" + json.dumps(b).encode()),
    V1Case("raw-control-character", lambda e, b, _: with_text(e, b, '"a\x01b"')),
    V1Case("raw-newline-in-string", lambda e, b, _: with_text(e, b, '"a\nb"')),
    V1Case(
        "absurd-logprobs",
        lambda e, b, _: with_fields(b, logprobs=10**9),
        param="logprobs",
    ),
    V1Case(
        "absurd-top-logprobs",
        lambda e, b, _: with_fields(b, top_logprobs=10**9),
        param="top_logprobs",
    ),
    V1Case(
        "logit-bias-301-entries",
        lambda e, b, _: with_fields(b, logit_bias={str(i): 1 for i in range(301)}),
    ),
    V1Case("unknown-field", lambda e, b, _: with_fields(b, surprise=True), param="surprise"),
    V1Case("model-is-a-number", lambda e, b, _: with_fields(b, model=3), param="model"),
    V1Case("model-too-long", lambda e, b, _: with_fields(b, model="m" * 100_000), param="model"),
    V1Case("text-is-an-object", lambda e, b, _: with_text(e, b, '{"a": 1}')),
    V1Case("stream-is-a-word", lambda e, b, _: with_fields(b, stream="maybe"), param="stream"),
    V1Case(
        "temperature-1e309",
        lambda e, b, _: with_raw_field(b, "temperature", "1e309"),
        param="temperature",
    ),
    V1Case(
        "temperature-nan",
        lambda e, b, _: with_raw_field(b, "temperature", "NaN"),
        param="temperature",
    ),
    V1Case(
        "top-p-minus-infinity",
        lambda e, b, _: with_raw_field(b, "top_p", "-Infinity"),
        param="top_p",
    ),
    V1Case(
        "max-tokens-1e309",
        lambda e, b, _: with_raw_field(b, "max_tokens", "1e309"),
        param="max_tokens",
    ),
    V1Case(
        "max-tokens-nan", lambda e, b, _: with_raw_field(b, "max_tokens", "NaN"), param="max_tokens"
    ),
    V1Case("seed-infinity", lambda e, b, _: with_raw_field(b, "seed", "Infinity"), param="seed"),
    V1Case(
        "dimensions-nan",
        lambda e, b, _: with_raw_field(b, "dimensions", "NaN"),
        endpoints=("embeddings",),
        param="dimensions",
    ),
    V1Case(
        "dimensions-1e309",
        lambda e, b, _: with_raw_field(b, "dimensions", "1e309"),
        endpoints=("embeddings",),
        param="dimensions",
    ),
    V1Case("body-is-a-string", lambda e, b, _: b'"hello"'),
    V1Case("body-is-a-number", lambda e, b, _: b"42"),
    V1Case("body-is-an-array", lambda e, b, _: json.dumps([b]).encode()),
    V1Case("body-is-null", lambda e, b, _: b"null"),
    V1Case("body-is-true", lambda e, b, _: b"true"),
    V1Case("body-is-empty", lambda e, b, _: b""),
    V1Case("body-is-whitespace", lambda e, b, _: b"  \r\n "),
    V1Case("body-is-truncated", lambda e, b, _: json.dumps(b).encode()[:-3]),
    V1Case("two-json-documents", lambda e, b, _: json.dumps(b).encode() * 2),
    V1Case(
        "form-urlencoded",
        lambda e, b, _: b"model=x&prompt=hi",
        content_type="application/x-www-form-urlencoded",
    ),
    V1Case(
        "multipart",
        lambda e, b, _: (
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n--x--\r\n'
        ),
        content_type="multipart/form-data; boundary=x",
    ),
]

NOT_JSON = (
    "server/routers/inference.py parse_body never looks at Content-Type: a valid JSON body sent as "
    "text/plain, form-urlencoded or multipart is accepted and forwarded to the engine (200)"
)
NAN_FORWARDED = (
    "gateway/schemas.py: response_format, tool_choice and tools[].function.parameters are "
    "dict[str, Any], so NaN / Infinity / 1e309 inside them pass validation and "
    "pipeline._send forwards them with json.dumps as the non-JSON tokens NaN / Infinity"
)

V1_FIXED_NOT_JSON = [  # once accepted and forwarded (see NOT_JSON)
    V1Case(
        "json-sent-as-text-plain",
        lambda e, b, _: json.dumps(b).encode(),
        content_type="text/plain",
    ),
    V1Case(
        "json-sent-as-form-urlencoded",
        lambda e, b, _: json.dumps(b).encode(),
        content_type="application/x-www-form-urlencoded",
    ),
    V1Case(
        "json-sent-as-multipart",
        lambda e, b, _: json.dumps(b).encode(),
        content_type="multipart/form-data; boundary=x",
    ),
]
V1_FIXED_NON_FINITE = [  # once forwarded as NaN tokens (see NAN_FORWARDED)
    V1Case(
        "nan-in-response-format",
        lambda e, b, _: with_raw_field(b, "response_format", '{"type": "json_object", "x": NaN}'),
        endpoints=("chat",),
    ),
    V1Case(
        "1e309-in-tool-choice",
        lambda e, b, _: with_raw_field(b, "tool_choice", '{"type": "function", "x": 1e309}'),
        endpoints=("chat",),
    ),
    V1Case(
        "minus-infinity-in-tool-parameters",
        lambda e, b, _: with_raw_field(
            b,
            "tools",
            '[{"type": "function", "function": {"name": "f", "parameters": {"x": -Infinity}}}]',
        ),
        endpoints=("chat",),
    ),
]


def v1_params() -> list[Any]:
    params = []
    for case in [*V1_CASES, *V1_FIXED_NOT_JSON, *V1_FIXED_NON_FINITE]:
        if case.content_type and not case.content_type.startswith("application/json"):
            case = dataclasses.replace(case, status=415)  # the body is not JSON at all
        params += [pytest.param(case, e, id=f"{e}-{case.id}") for e in case.endpoints]
    return params


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def post_raw(
    client: httpx.AsyncClient,
    path: str,
    raw: bytes,
    *,
    content_type: str | None,
    chunked: bool = False,
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    async with asyncio.timeout(TIME_LIMIT_S):
        content = _chunks(raw) if chunked else raw
        return await after_server_error(await client.post(path, content=content, headers=headers))


class TestInferenceBodies:
    @pytest.mark.parametrize(("case", "endpoint"), v1_params())
    async def test_refused_with_4xx_before_any_engine(
        self, target: Target, case: V1Case, endpoint: str
    ) -> None:
        platform = target.platform
        raw = case.build(endpoint, base(endpoint, target), platform.settings.max_request_bytes)
        engine_before = len(platform.stand_in.requests)
        usage_before = await usage_count(platform, target.member_key_id)
        async with platform.client(target.member) as client:
            response = await post_raw(
                client,
                PATHS[endpoint],
                raw,
                content_type=case.content_type,
                chunked=case.chunked,
            )
        assert len(platform.stand_in.requests) == engine_before, "the engine was reached"
        await asyncio.sleep(0.1)  # a usage record would have reached the database by now
        assert await usage_count(platform, target.member_key_id) == usage_before
        error = assert_openai_error(response, case.status)
        assert error["type"] == "invalid_request_error"
        if case.param is not None:
            assert error["param"] is not None and error["param"].startswith(case.param), error

    async def test_a_valid_body_does_reach_the_engine(self, target: Target) -> None:
        """Control: the checks above can fail, because a good body does reach the engine."""
        platform = target.platform
        usage_before = await usage_count(platform, target.member_key_id)
        async with platform.client(target.member) as client:
            for endpoint, path in PATHS.items():
                response = await post_raw(
                    client, path, json.dumps(base(endpoint, target)).encode(), content_type=JSON
                )
                assert response.status_code == 200, (endpoint, response.text)

        async def metered() -> bool:  # usage reaches the database a few milliseconds later
            return await usage_count(platform, target.member_key_id) == usage_before + 3

        await wait_until(metered, timeout_s=5)


# -------------------------------------------------------------------------- /api


@dataclass(frozen=True)
class ApiCase:
    id: str
    body: Callable[[dict[str, Any], int], bytes]
    status: int = 422
    content_type: str | None = JSON
    param: str | None = None


API_ROUTES: dict[str, tuple[str, Callable[[Target], dict[str, Any]]]] = {
    "create-project": ("/api/orgs/{org}/projects", lambda t: {"name": unique("p")}),
    "add-member": ("/api/orgs/{org}/members", lambda t: {"user": unique("u"), "role": "viewer"}),
    "create-key": ("/api/keys", lambda t: {"name": "k", "role": "viewer", "expires_in_days": 1}),
    "create-deployment": (
        "/api/deployments",
        lambda t: {"name": unique("d"), "model": t.chat_model, "org": t.org, "replicas": 0},
    ),
}


def _first_string_field(body: dict[str, Any]) -> str:
    return next(name for name, value in body.items() if isinstance(value, str))


def _replace_first_string(body: dict[str, Any], raw_value: str) -> bytes:
    name = _first_string_field(body)
    encoded = json.dumps({k: v for k, v in body.items() if k != name})
    return ("{" + f'"{name}": {raw_value}, ' + encoded[1:]).encode()


API_CASES = [
    ApiCase("nested-arrays-as-body", lambda b, _: b"[" * DEPTH + b"]" * DEPTH, status=400),
    ApiCase(
        "nested-objects-as-body", lambda b, _: b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, status=400
    ),
    ApiCase(
        "nested-arrays-in-a-field",
        lambda b, _: _replace_first_string(b, "[" * DEPTH + "]" * DEPTH),
        status=400,
    ),
    ApiCase(
        "invalid-utf8",
        lambda b, _: _replace_first_string(b, PLACEHOLDER).replace(
            PLACEHOLDER.encode(), b'"x\xff"'
        ),
        status=400,
    ),
    ApiCase("raw-control-character", lambda b, _: _replace_first_string(b, '"a\x01b"')),
    ApiCase(
        "unknown-field", lambda b, _: json.dumps(b | {"surprise": 1}).encode(), param="surprise"
    ),
    ApiCase("wrong-type", lambda b, _: _replace_first_string(b, "[1, 2]")),
    ApiCase("string-field-nan", lambda b, _: _replace_first_string(b, "NaN")),
    ApiCase("string-field-1e309", lambda b, _: _replace_first_string(b, "1e309")),
    ApiCase("string-field-minus-infinity", lambda b, _: _replace_first_string(b, "-Infinity")),
    ApiCase("body-is-a-string", lambda b, _: b'"hello"'),
    ApiCase("body-is-a-number", lambda b, _: b"42"),
    ApiCase("body-is-an-array", lambda b, _: json.dumps([b]).encode()),
    ApiCase("body-is-null", lambda b, _: b"null"),
    ApiCase("body-is-empty", lambda b, _: b""),
    ApiCase("body-is-truncated", lambda b, _: json.dumps(b).encode()[:-2]),
    ApiCase("text-plain", lambda b, _: json.dumps(b).encode(), content_type="text/plain"),
    ApiCase(
        "form-urlencoded",
        lambda b, _: json.dumps(b).encode(),
        content_type="application/x-www-form-urlencoded",
    ),
    ApiCase("no-content-type", lambda b, _: json.dumps(b).encode(), content_type=None),
]

API_OVERSIZED = ApiCase(
    "oversized",
    lambda b, limit: json.dumps(b | {"name": "x" * (limit + 10)}).encode(),
    status=413,
)


def api_params() -> list[Any]:
    params = [
        pytest.param(route, case, id=f"{route}-{case.id}")
        for route in API_ROUTES
        for case in API_CASES
    ]
    params += [
        pytest.param(route, API_OVERSIZED, id=f"{route}-oversized")
        for route in ("create-project", "create-key")
    ]
    return params


class TestControlPlaneBodies:
    @pytest.mark.parametrize(("route", "case"), api_params())
    async def test_refused_with_4xx_never_5xx(
        self, target: Target, route: str, case: ApiCase
    ) -> None:
        platform = target.platform
        path, good = API_ROUTES[route]
        raw = case.body(good(target), platform.settings.max_request_bytes)
        async with platform.client(target.admin) as client:
            response = await post_raw(
                client, path.format(org=target.org), raw, content_type=case.content_type
            )
        error = assert_openai_error(response, case.status)
        assert error["type"] == "invalid_request_error"
        if case.param is not None:
            assert error["param"] == case.param, error

    @pytest.mark.parametrize("route", list(API_ROUTES))
    async def test_the_good_body_is_accepted(self, target: Target, route: str) -> None:
        """Control: each route accepts its good body, so the refusals above are about the input."""
        path, good = API_ROUTES[route]
        async with target.platform.client(target.admin) as client:
            response = await client.post(path.format(org=target.org), json=good(target))
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e309"])
    async def test_non_finite_engine_args_are_422(self, target: Target, token: str) -> None:
        body = json.dumps(API_ROUTES["create-deployment"][1](target))
        raw = (body[:-1] + f', "engine_args": {{"threads": {token}}}}}').encode()
        async with target.platform.client(target.admin) as client:
            response = await post_raw(client, "/api/deployments", raw, content_type=JSON)
        assert_openai_error(response, 422)

    @pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e309"])
    async def test_non_finite_numbers_are_422(self, target: Target, token: str) -> None:
        async with target.platform.client(target.admin) as client:
            for path, field in (("/api/keys", "expires_in_days"), ("/api/deployments", "cpus")):
                body = (
                    {"role": "viewer"}
                    if path == "/api/keys"
                    else API_ROUTES["create-deployment"][1](target)
                )
                raw = (json.dumps(body)[:-1] + f', "{field}": {token}}}').encode()
                response = await post_raw(client, path, raw, content_type=JSON)
                error = assert_openai_error(response, 422)
                assert error["param"] == field

    @pytest.mark.parametrize(
        "character",
        ["\\u0000", "\\u001b[31m", "\\u0007"],
        ids=["nul", "terminal-escape", "bell"],
    )
    async def test_control_characters_in_free_text_are_422(
        self, target: Target, character: str
    ) -> None:
        raw = ('{"name": "a' + character + 'b", "role": "viewer"}').encode()
        async with target.platform.client(target.admin) as client:
            response = await post_raw(client, "/api/keys", raw, content_type=JSON)
        assert_openai_error(response, 422)


class TestNulInIdentifiers:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/orgs/a%00b"),
            ("GET", "/api/deployments/a%00b"),
            ("PATCH", "/api/deployments/a%00b"),
            ("GET", "/api/models/a%00b"),
            ("GET", "/api/datacenters/a%00b"),
            ("DELETE", "/api/keys/a%00b"),
            ("DELETE", "/api/orgs/{org}/members/a%00b"),
            ("GET", "/api/usage?org=a%00b"),
            ("GET", "/api/keys?org=a%00b"),
            ("GET", "/v1/models/a%00b"),
        ],
    )
    async def test_a_nul_byte_in_a_name_is_a_4xx(
        self, target: Target, request: pytest.FixtureRequest, method: str, path: str
    ) -> None:
        kwargs = {"json": {"replicas": 0}} if method == "PATCH" else {}
        async with target.platform.client(target.admin) as client:
            response = await after_server_error(
                await client.request(method, path.format(org=target.org), **kwargs)
            )
        assert 400 <= response.status_code < 500, response.text
        assert_openai_error(response, response.status_code)


class TestEngineWordsStayInside:
    """An engine's internal errors reach clients as plain words, never Python's internals."""

    @pytest.mark.parametrize(
        ("said", "shown"),
        [
            ("invalid literal for int() with base 10: 'abc'", ""),
            ('Traceback (most recent call last):\n  File "/x/llama.py", line 3', ""),
            ("'NoneType' object has no attribute 'tokenize'", ""),
            ("KeyError: 'messages'", ""),
            (
                "Requested tokens (5000) exceed context window of 4096",
                "Requested tokens (5000) exceed context window of 4096",
            ),
        ],
    )
    def test_engine_messages_are_filtered(self, said: str, shown: str) -> None:
        from souverain.gateway.pipeline import plain_engine_message

        assert plain_engine_message(said) == shown
