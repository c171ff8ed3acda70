"""Shared CLI plumbing: the client from global options, and errors printed, not raised."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import typer
from rich.console import Console

from souverain.cli import config
from souverain.client import ApiError, SouverainClient

console = Console()
err = Console(stderr=True)


class Options:
    url: str | None = None
    api_key: str | None = None


options = Options()


@contextlib.contextmanager
def client() -> Iterator[SouverainClient]:
    url, key = config.resolve(options.url, options.api_key)
    try:
        with SouverainClient(url, key) as c:
            yield c
    except ApiError as error:
        err.print(f"[red]error[/red] ({error.status} {error.code}): {error.message}")
        raise typer.Exit(1) from None
    except httpx.ConnectError:
        err.print(f"[red]error[/red]: cannot reach souverain at {url} (is `souverain up` running?)")
        raise typer.Exit(1) from None
