"""Which TLS failures fail a replica for good: an engine that answers a TLS hello in plain
HTTP will do so again, while one that closes the connection mid-handshake (starting, or
dying) is worth another try."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from souverain.node.engine_http import tls_refusal


@contextmanager
def server(answer: bytes | None) -> Iterator[int]:
    """A TCP server that answers each connection with `answer` (or closes it at once)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if answer is not None:
                    conn.recv(4096)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()


def error_of(port: int) -> BaseException:
    try:
        httpx.get(f"https://127.0.0.1:{port}/health", verify=False, timeout=5)  # noqa: S501 (no certificate is ever reached)
    except httpx.HTTPError as error:
        return error
    raise AssertionError("the request should have failed")


def test_a_plain_http_engine_is_refused_for_good() -> None:
    plain = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with server(plain) as port:
        refused = tls_refusal(error_of(port))
    assert refused is not None and refused.startswith("the engine does not speak TLS")


def test_a_connection_closed_mid_handshake_is_tried_again() -> None:
    with server(None) as port:
        assert tls_refusal(error_of(port)) is None
