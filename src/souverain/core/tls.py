"""TLS between servers and engines: how a client checks that it talks to *that* replica.

Every engine serves HTTPS with a certificate the installation's authority issued for one
replica (`replica_server_name`). A client trusts that authority alone (never the system's
roots), demands TLS 1.3, and checks the name of the replica it means to reach: a foreign
certificate, an expired one, or another replica's fails the handshake before a byte of the
request (its secret, its prompt) is sent.
"""

from __future__ import annotations

import ssl


class PlainEngineURL(ValueError):
    """An engine address without TLS: nothing is sent to it."""


def client_context(authority_pem: bytes) -> ssl.SSLContext:
    """A context that trusts only the installation's authority and checks names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=authority_pem.decode())
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def check_https(url: str) -> str:
    """The URL if it is HTTPS; a plain one is a downgrade and is refused."""
    if not url.startswith("https://"):
        raise PlainEngineURL(f"the engine's address is not HTTPS ({url.split(':', 1)[0]})")
    return url
