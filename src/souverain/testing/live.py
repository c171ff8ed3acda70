"""Run an ASGI app on a real port, in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from souverain.node.engines.base import TlsFiles


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(
        self, app: Any, *, port: int | None = None, host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.host = host
        self.port = port or free_port()
        self._scheme = "http" if tls is None else "https"
        ssl = (
            {}
            if tls is None
            else {"ssl_certfile": str(tls.certificate), "ssl_keyfile": str(tls.key)}
        )
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", lifespan="on", access_log=False,
            **ssl,  # type: ignore[arg-type]
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("live server failed to start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
