"""Shared CLI plumbing: the client from global options, and errors printed, not raised."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from souverain.cli import config
from souverain.client import ApiError, SouverainClient

M = TypeVar("M", bound=BaseModel)

console = Console()
err = Console(stderr=True, soft_wrap=True)  # errors stay one line each, in logs too


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


def request_of(kind: type[M], **fields: Any) -> M:
    """A request body from the command's options, or the reasons it is invalid (exit 2)."""
    try:
        return kind(**fields)
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"])
            err.print(f"[red]error[/red]: {where}: {problem['msg']}", highlight=False)
        raise typer.Exit(2) from None


def write_raw(text: str) -> None:
    """Text exactly as the server sent it (CSV, JSON): never wrapped to the terminal's width."""
    sys.stdout.write(text)
    sys.stdout.flush()
