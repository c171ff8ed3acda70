"""A real OpenID provider for the identity tests: `oidc-provider` (certified by the OpenID
Foundation) from the npm registry, run by Node.js with `provider/provider.mjs`.

The package is installed from `provider/package-lock.json` the first time it is needed (`make
test` does it up front); a machine without Node.js fails here with how to get it, it does not
skip. Keys are made here: `rotate_keys()` restarts the provider signing with a new key while it
still publishes the old one, as a provider does when it rotates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from souverain.testing.live import free_port

HERE = Path(__file__).parent / "provider"
NODE_MODULES = HERE / "node_modules"


def ensure_installed() -> None:
    """`npm ci` the provider once per checkout (its lockfile pins every package)."""
    stamp = NODE_MODULES / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), (
        "the identity tests run a real OpenID provider on Node.js ≥ 20: "
        "`apt-get install nodejs npm` (`make test` installs the provider's package)"
    )
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE,
        check=True,
        timeout=600,
    )


def new_signing_key(kind: str = "RSA") -> dict[str, Any]:
    key = RSAKey.generate_key(2048) if kind == "RSA" else ECKey.generate_key("P-256")
    jwk = key.as_dict(private=True)
    jwk["kid"] = secrets.token_hex(8)
    jwk["use"] = "sig"
    jwk["alg"] = "RS256" if kind == "RSA" else "ES256"
    return jwk


@dataclass
class Person:
    sub: str
    username: str
    password: str
    email: str
    groups: list[str] = field(default_factory=list)
    name: str = ""

    def claims(self) -> dict[str, Any]:
        return {
            "preferred_username": self.username,
            "password": self.password,
            "email": self.email,
            "email_verified": True,
            "name": self.name or self.username,
            "groups": self.groups,
        }


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def registration(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }


class OpenIdProvider:
    """One provider process on a loopback port; `issuer` is its URL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = [new_signing_key()]
        self.clients: list[Client] = []
        self.people: dict[str, Person] = {}
        self._process: subprocess.Popen[str] | None = None
        self._output: list[str] = []

    # the directory --------------------------------------------------------------------
    def register_client(self, redirect_uri: str) -> Client:
        client = Client(
            client_id=f"souverain-{secrets.token_hex(4)}",
            client_secret=secrets.token_urlsafe(24),
            redirect_uris=[redirect_uri],
        )
        self.clients.append(client)
        if self._process is not None:  # clients are read at start
            self.restart()
        return client

    def add_person(self, username: str, *, groups: list[str], email: str | None = None) -> Person:
        person = Person(
            sub=secrets.token_hex(8),
            username=username,
            password=secrets.token_urlsafe(12),
            email=email or f"{username}@example.org",
            groups=groups,
        )
        self.people[person.sub] = person
        self._write_accounts()
        return person

    def set_groups(self, person: Person, groups: list[str]) -> None:
        person.groups = groups
        self._write_accounts()

    def remove_person(self, person: Person) -> None:
        self.people.pop(person.sub, None)
        self._write_accounts()

    def _write_accounts(self) -> None:
        accounts = {sub: person.claims() for sub, person in self.people.items()}
        path = self.directory / "accounts.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(accounts))
        temporary.replace(path)  # the provider never reads half a file

    # the process -----------------------------------------------------------------------
    def start(self) -> None:
        ensure_installed()
        self._write_accounts()
        state = {
            "issuer": self.issuer,
            "port": self.port,
            "keys": self.keys,
            "clients": [client.registration() for client in self.clients],
            "accounts_file": str(self.directory / "accounts.json"),
            "cookie_secret": secrets.token_hex(16),
        }
        path = self.directory / "provider-state.json"
        path.write_text(json.dumps(state))
        path.chmod(0o600)
        node = shutil.which("node")
        assert node, "Node.js is needed for the OpenID provider"
        self._process = subprocess.Popen(
            [node, str(HERE / "provider.mjs"), str(path)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "NODE_ENV": "test"},
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self._process is not None and self._process.stdout is not None
        ready = threading.Event()
        stream = self._process.stdout

        def read() -> None:
            for line in stream:
                self._output.append(line.rstrip())
                if line.startswith("ready "):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OpenID provider did not start:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self._output[-40:])

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def rotate_keys(self) -> dict[str, Any]:
        """Sign with a new key from now on, still publishing the previous one."""
        fresh = new_signing_key()
        self.keys = [fresh, *self.keys[:1]]
        self.restart()
        return fresh

    def drop_old_keys(self) -> None:
        self.keys = self.keys[:1]
        self.restart()


@contextlib.contextmanager
def running_provider(directory: Path) -> Any:
    provider = OpenIdProvider(directory)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
