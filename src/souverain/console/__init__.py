"""The web console's browser side: static files only, served by `server/routers/console.py`.

The console is a handful of hand-written ES modules, one stylesheet and one HTML shell,
with no framework, no build step and no third-party asset: nothing to download at set-up
or at run time, every byte served by souverain under a strict Content-Security-Policy.
The pages call `/api` and `/v1` like any client; there is no business logic here.
"""

from __future__ import annotations

from importlib import resources

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def assets() -> dict[str, tuple[bytes, str]]:
    """Every file the console serves, by name, with its media type. Read once at start:
    a request can only name a file in this table, never a path."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            found[entry.name] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    return found
