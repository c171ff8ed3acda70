"""The HTTP client to engines: aiohttp, pooled, behind the few operations the pipeline uses.

aiohttp parses HTTP in C; in front of a local engine it costs about a third of what httpx
does per request (bench/gateway_overhead.py). Transport failures become three exceptions:

    Refused    the connection could not be made: nothing was sent, another compliant
               replica may be tried
    Untrusted  a Refused whose engine is not the replica it should be: its certificate
               was refused (foreign, expired, another replica's) or its address is plain
               HTTP. The TLS handshake comes before a byte of the request is written, so
               neither the replica secret nor the prompt reached it
    Broken     the engine had the request and dropped the connection (it may have
               processed it): never sent again, answered 502
    TimedOut   a Broken whose engine said nothing for the read timeout: 504
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp

from souverain.core.tls import PlainEngineURL, check_https, client_context

KEEPALIVE_S = 3.0
CONTEXTS_KEPT = 4096  # TLS contexts, one per replica name (its pooled connections' key)


class Refused(Exception):
    pass


class Untrusted(Refused):
    pass


class Broken(Exception):
    pass


class TimedOut(Broken):
    pass


def _broken(error: BaseException) -> Broken:
    if isinstance(error, TimeoutError):
        return TimedOut(f"no answer within the read timeout ({type(error).__name__})")
    return Broken(type(error).__name__)


class Upstream:
    """Engines are reached over TLS only, trusting the installation's authority alone and
    demanding each replica's own name (core/tls.py). Each name has its own TLS context,
    which aiohttp's pool counts in a connection's key: a connection checked for one
    replica is never reused for another."""

    def __init__(self, *, timeout_s: float, authority: bytes, connections: int = 1024) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._authority = authority
        self._contexts: dict[str, ssl.SSLContext] = {}

    def _context(self, server_name: str) -> ssl.SSLContext:
        context = self._contexts.get(server_name)
        if context is None:
            if len(self._contexts) >= CONTEXTS_KEPT:
                self._contexts.clear()
            context = self._contexts[server_name] = client_context(self._authority)
        return context

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created in the running loop, on first use
            # An idle pooled connection is dropped after 3 s: engines close theirs after
            # 5 s (llama-server's cpp-httplib, uvicorn), and a request sent on one that the
            # engine is closing fails as if the engine had dropped it (a 502, not resent).
            connector = aiohttp.TCPConnector(
                limit=self._connections, limit_per_host=256, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def post(
        self, url: str, content: bytes, headers: dict[str, str], *, server_name: str
    ) -> Response:
        """POST to the replica named `server_name`, which must prove it over TLS."""
        try:
            response = await self._client().post(
                check_https(url), data=content, headers=headers,
                ssl=self._context(server_name), server_hostname=server_name,
            )  # fmt: skip
        except PlainEngineURL as error:
            raise Untrusted(str(error)) from error
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as error:
            raise Untrusted(_why_untrusted(error)) from error
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            ConnectionRefusedError,
        ) as error:
            raise Refused(str(error)) from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _broken(error) from error
        return Response(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _why_untrusted(error: aiohttp.ClientError) -> str:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        cause = error.certificate_error
        message = getattr(cause, "verify_message", "") or str(cause)
        return f"the engine's certificate was refused: {message}"
    return f"the engine's TLS handshake failed: {error}"


class Response:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _broken(error) from error

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.content:
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _broken(error) from error

    def close(self) -> None:
        """Release the connection when the answer was read whole; drop it otherwise (which
        also tells the engine that nobody is listening any more)."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
