"""How a replica secret reaches its engine process: through a pipe, never argv or the
environment (both readable in /proc by other processes of the same user, and the
environment block stays there even after the process pops the variable).

The supervisor writes the secret into a pipe and passes the read end as an inherited file
descriptor named by SOUVERAIN_ENGINE_SECRET_FD; the engine reads it once and closes it.
For an engine started by hand (benchmarks), SOUVERAIN_ENGINE_SECRET still works.
"""

from __future__ import annotations

import os
import sys

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
