"""`souverain init`: make an installation once, before its servers and controllers start.

It creates the schema, the installation's signing key (sealed with the master key in the
database, so every server and controller signs with it), the first operator key and the
built-in models' registry entries. The operator key is written to a new 0600 file or shown
on a terminal, once: never to a log. Run again, it creates nothing and says what exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import typer

from souverain.cli.context import console, err
from souverain.cli.run import DataDir, builtin_embeddings, builtin_model, settings_of
from souverain.core.signing import key_id
from souverain.db.engine import create_engine, session_factory, upgrade
from souverain.installation import bootstrap, signing
from souverain.settings import Settings, ensure_data_dir, load_master_key


@dataclass(frozen=True)
class Initialised:
    signing_key_id: str
    operator_key: str | None  # None: one existed already
    models: list[str]


def init(
    data_dir: Path | None = DataDir,
    operator_key_file: Path = typer.Option(
        None,
        "--operator-key-file",
        help="Write the first operator key to this new file (mode 0600) instead of the terminal.",
    ),
) -> None:
    """Initialise the installation: schema, signing key, first operator key, built-in models."""
    settings = settings_of(data_dir, None, None)
    ensure_data_dir(settings)
    with _key_destination(operator_key_file) as destination:
        try:
            done = asyncio.run(_init(settings))
        except signing.InstallationMismatch as error:
            err.print(f"[red]error[/red]: {error}", highlight=False)
            raise typer.Exit(1) from None
        if done.operator_key is not None:
            label = "first operator API key (shown once):\n  " if destination is sys.stdout else ""
            destination.write(f"{label}{done.operator_key}\n")
    console.print(f"installation ready: database {_where(settings)}")
    console.print(
        f"  signing key   {done.signing_key_id} (the same for every server and controller)"
    )
    console.print(f"  models        {', '.join(done.models)} (registered)")
    if done.operator_key is None:
        console.print("  operator key  exists already (shown once, when it was made)")
    elif operator_key_file is not None:
        console.print(f"  operator key  written to {operator_key_file} (mode 0600)")
    else:
        console.print("  operator key  shown above, once: keep it (SOUVERAIN_API_KEY)")


@contextlib.contextmanager
def _key_destination(path: Path | None):  # type: ignore[no-untyped-def]
    """Where the first operator key goes, checked before anything is made: a new 0600
    file, or this terminal. Never a pipe or a file a shell redirected (a log)."""
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            err.print(f"[red]error[/red]: cannot create {path}: {error.strerror} (give a new file)")
            raise typer.Exit(2) from None
        handle: IO[str] = os.fdopen(fd, "w")
        try:
            with handle:
                yield handle
        finally:
            if path.stat().st_size == 0:
                path.unlink()  # nothing was made: leave no empty key file behind
        return
    if not sys.stdout.isatty():
        err.print(
            "[red]error[/red]: the first operator key is shown only on a terminal, never into "
            "a log: run `souverain init` on a terminal, or pass --operator-key-file PATH"
        )
        raise typer.Exit(2)
    yield sys.stdout


async def _init(settings: Settings) -> Initialised:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        key = await signing.installation_key(
            sessions,
            master_key=load_master_key(settings),
            key_file=settings.signing_key_file,
            adopt=settings.legacy_signing_key,
        )
        builtins = [builtin_model(settings), builtin_embeddings()]
        async with sessions.begin() as session:
            operator = await bootstrap.ensure_operator_key(session)
            for builtin in builtins:
                if builtin is not None:
                    await bootstrap.ensure_builtin_model(session, builtin=builtin, deploy=False)
    finally:
        await engine.dispose()
    return Initialised(
        signing_key_id=key_id(key.public_key()),
        operator_key=operator,
        models=[b.name for b in builtins if b is not None],
    )


def _where(settings: Settings) -> str:
    url = settings.sqlalchemy_url
    return url.split("@", 1)[-1] if "@" in url else url  # no password in the output
