"""Host headers, proxy headers and path tricks never turn into data without a credential.

Requests are written byte for byte on a socket, so the exact request target and headers
reach the server (an HTTP client would normalise `..`, `//` and percent-encoding first).
Every probe must answer 401, or 400/404/405, or a redirect without a body; never a 200
carrying a user, a key, an organisation or a list.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.conftest import Platform

# What a response carrying someone's data looks like (from /api/me, /api/keys, /v1/models).
DATA_MARKERS = ('"user_id"', '"key_id"', '"scopes"', '"org_id"', '"data"', '"user"', '"id"')
FULL_KEY = re.compile(r"sk-souv-[0-9a-f]{16}_")
REFUSALS = {400, 401, 404, 405}
REDIRECTS = {301, 302, 307, 308}


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def send_raw(platform: Platform, request: bytes, timeout_s: float = 10.0) -> Raw:
    parts = urlsplit(platform.url)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Raw(status, headers, body)


def build(
    target: str,
    *,
    host: str | None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def host_of(platform: Platform) -> str:
    return urlsplit(platform.url).netloc


def assert_no_data(response: Raw, probe: str) -> None:
    status = response.status
    assert status != 200, (probe, status, response.text[:300])
    assert status < 500, (probe, status, response.text[:300])
    assert status in REFUSALS | REDIRECTS, (probe, status, response.text[:300])
    if status in REDIRECTS:
        assert response.body == b"", (probe, response.text[:300])
    leaked = [marker for marker in DATA_MARKERS if marker in response.text]
    leaked += FULL_KEY.findall(response.text)
    assert not leaked, (probe, status, leaked, response.text[:300])
    if status == 401:
        error = json.loads(response.body)["error"]
        assert error["code"] == "invalid_api_key"


PATHS = [
    "/api//me",
    "//api/me",
    "/api/me/",
    "/api/me//",
    "/API/me",
    "/api/ME",
    "/Api/Me",
    "/api/./me",
    "/./api/me",
    "/api/me/.",
    "/api/%6de",
    "/api/%6De",
    "/%61pi/me",
    "/api%2fme",
    "/api%2Fme",
    "/api/%256de",
    "/api/%25%36%64e",
    "/healthz/../api/me",
    "/readyz/../api/me",
    "/v1/../api/me",
    "/docs/../api/me",
    "/openapi.json/../api/me",
    "/healthz/%2e%2e/api/me",
    "/healthz/%2e%2e%2fapi%2fme",
    "/healthz%2f..%2fapi%2fme",
    "/healthz/..%2fapi/me",
    "/healthz/%252e%252e/api/me",
    "/%2e%2e/api/me",
    "/api/me%00",
    "/api/me%00.json",
    "/api/me;.css",
    "/api/me;/healthz",
    "/api/me/..;/me",
    "/api/me?/healthz",
    "/api/me%23/healthz",
    "/api/me%20",
    "/api/me\t",
    "/api/orgs/..%2f..%2fme",
    "/api/models/../../api/me",
    "/api/models/..%2f..%2fapi%2fme",
    "/api/keys/",
    "/api/keys/.",
    "/v1//models",
    "/v1/models/",
    "/V1/models",
    "/v1/./models",
    "/healthz/../v1/models",
    "/healthz/../api/keys",
    "/docs/../api/orgs",
    "http://evil.example/api/me",
    "http://localhost/api/keys",
    "*",
]


class TestPathConfusion:
    @pytest.mark.parametrize("target", PATHS)
    async def test_path_variants_give_no_data_without_a_credential(
        self, platform: Platform, target: str
    ) -> None:
        response = await send_raw(platform, build(target, host=host_of(platform)))
        assert_no_data(response, target)

    @pytest.mark.parametrize("target", ["/api/me/", "/api/keys/", "/v1/models/"])
    async def test_redirects_carry_nothing_and_stay_on_the_path(
        self, platform: Platform, target: str
    ) -> None:
        response = await send_raw(platform, build(target, host=host_of(platform)))
        assert_no_data(response, target)
        if response.status in REDIRECTS:
            assert urlsplit(response.headers["location"]).path == target.rstrip("/")

    async def test_the_raw_client_does_see_data_with_a_key(self, platform: Platform) -> None:
        """Control: the same probe with a valid key gets 200 and data, so the markers work."""
        key = await platform.operator_key()
        response = await send_raw(
            platform,
            build("/api/me", host=host_of(platform), headers={"Authorization": f"Bearer {key}"}),
        )
        assert response.status == 200
        assert '"user_id"' in response.text and '"scopes"' in response.text


HEADER_VARIANTS: list[tuple[str, str | None, dict[str, str]]] = [
    ("host-localhost", "localhost", {}),
    ("host-evil", "evil.example", {}),
    ("host-evil-port", "evil.example:443", {}),
    ("host-empty", "", {}),
    ("host-userinfo", "127.0.0.1@evil.example", {}),
    ("host-missing", None, {}),
    ("x-forwarded-host", "{host}", {"X-Forwarded-Host": "evil.example"}),
    ("x-forwarded-for", "{host}", {"X-Forwarded-For": "127.0.0.1"}),
    ("x-forwarded-proto", "{host}", {"X-Forwarded-Proto": "https"}),
    ("x-forwarded-prefix", "{host}", {"X-Forwarded-Prefix": "/healthz"}),
    ("forwarded", "{host}", {"Forwarded": "for=127.0.0.1;host=localhost;proto=https"}),
    ("x-real-ip", "{host}", {"X-Real-IP": "127.0.0.1"}),
    ("x-client-ip", "{host}", {"X-Client-IP": "127.0.0.1"}),
    ("x-original-url", "{host}", {"X-Original-URL": "/healthz"}),
    ("x-rewrite-url", "{host}", {"X-Rewrite-URL": "/healthz"}),
    ("x-original-uri", "{host}", {"X-Original-URI": "/healthz"}),
    ("x-http-method-override", "{host}", {"X-HTTP-Method-Override": "OPTIONS"}),
    ("x-forwarded-user", "{host}", {"X-Forwarded-User": "operator"}),
    ("x-remote-user", "{host}", {"X-Remote-User": "operator", "Remote-User": "operator"}),
    ("x-api-key", "{host}", {"X-Api-Key": "sk-souv-0123456789abcdef_" + "A" * 43}),
    ("cookie", "{host}", {"Cookie": "session=operator; api_key=operator"}),
    ("authorization-empty", "{host}", {"Authorization": ""}),
    ("authorization-bearer-space", "{host}", {"Authorization": "Bearer  "}),
    (
        "all-at-once",
        "evil.example",
        {
            "X-Forwarded-Host": "localhost",
            "X-Forwarded-For": "127.0.0.1",
            "X-Real-IP": "127.0.0.1",
            "X-Original-URL": "/healthz",
            "X-Rewrite-URL": "/healthz",
        },
    ),
]


class TestHostAndProxyHeaders:
    @pytest.mark.parametrize("target", ["/api/me", "/api/keys", "/api/orgs", "/v1/models"])
    @pytest.mark.parametrize(
        ("host", "headers"),
        [(h, x) for _, h, x in HEADER_VARIANTS],
        ids=[name for name, _, _ in HEADER_VARIANTS],
    )
    async def test_headers_never_stand_in_for_a_credential(
        self, platform: Platform, target: str, host: str | None, headers: dict[str, str]
    ) -> None:
        host = None if host is None else host.format(host=host_of(platform))
        response = await send_raw(platform, build(target, host=host, headers=headers))
        assert_no_data(response, f"{target} {host} {headers}")

    @pytest.mark.parametrize("header", ["X-Original-URL", "X-Rewrite-URL"])
    async def test_a_rewrite_header_on_a_public_path_does_not_reach_the_api(
        self, platform: Platform, header: str
    ) -> None:
        response = await send_raw(
            platform, build("/healthz", host=host_of(platform), headers={header: "/api/me"})
        )
        assert response.status == 200
        assert json.loads(response.body) == {"status": "ok"}

    @pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
    async def test_old_protocol_versions_need_a_key_too(
        self, platform: Platform, version: str
    ) -> None:
        response = await send_raw(platform, build("/api/me", host=None, version=version))
        assert_no_data(response, version)
