"""How a replica secret reaches its engine process: through a pipe, never argv or the
environment (both readable in /proc by other processes of the same user, and the
environment block stays there even after the process pops the variable).

The supervisor writes the secret into a pipe and passes the read end as an inherited file
descriptor named by SOUVERAIN_ENGINE_SECRET_FD; the engine reads it once and closes it.
For an engine started by hand (benchmarks), SOUVERAIN_ENGINE_SECRET still works.

The replica's TLS certificate and key are files the engine names in its options and loads
once at start (node/engines/base.py `TlsFiles`); our own engine processes hand them to
uvicorn.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

SECRET_FD_ENV = "SOUVERAIN_ENGINE_SECRET_FD"  # noqa: S105 (a variable name)
SECRET_ENV = "SOUVERAIN_ENGINE_SECRET"  # noqa: S105 (a variable name, not a secret)


def secret_pipe(secret: str) -> int:
    """A readable descriptor holding `secret`, for the child to inherit."""
    read, write = os.pipe()
    os.write(write, secret.encode())
    os.close(write)
    return read


def read_secret() -> str:
    """The replica secret this engine must demand; exits if there is none."""
    fd = os.environ.pop(SECRET_FD_ENV, "")
    if fd.isdigit():
        with os.fdopen(int(fd), "rb") as pipe:
            secret = pipe.read().decode()
    else:
        secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        sys.exit("no replica secret was given: refusing to serve without one")
    return secret


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming the replica's certificate and key files (node/engines/base.py)."""
    parser.add_argument("--ssl-cert-file", default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--ssl-key-file", default=None, help="the certificate's key (0600 file)")


def uvicorn_tls(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's options for HTTPS with the given files; none when there are none."""
    if not args.ssl_cert_file:
        return {}
    return {"ssl_certfile": args.ssl_cert_file, "ssl_keyfile": args.ssl_key_file}


def write_secret_file(path: Path, data: bytes) -> None:
    """A fresh 0600 file (never through a symlink, never one someone else made)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
