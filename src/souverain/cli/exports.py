"""exports and erasure: take everything an organisation has, check it offline; erase an
organisation and keep the signed certificate."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.table import Table

from souverain.cli.context import client, console, err
from souverain.core.exports import verify_archive
from souverain.core.schemas.exports import Export
from souverain.core.signing import key_id, load_public_key, verify

exports = typer.Typer(
    help="Export everything an organisation has, as one signed archive.", no_args_is_help=True
)
erasure = typer.Typer(
    help="Erase an organisation's data, with a signed certificate.", no_args_is_help=True
)

ENDED = frozenset({"succeeded", "failed", "erased"})


def _show(found: Export) -> None:
    console.print(f"export {found.id} is {found.status}", highlight=False, soft_wrap=True)
    table = Table("field", "value")
    if found.error:
        table.add_row("error", found.error)
    for name in ("datacenter_id", "bytes", "sha256", "objects"):
        value = getattr(found, name)
        if value is not None:
            table.add_row(name.removesuffix("_id"), str(value))
    for kind, count in sorted((found.counts or {}).items()):
        table.add_row(kind.replace("_", " "), str(count))
    console.print(table)


@exports.command("create")
def create(
    org: str = typer.Option(..., "--org"),
    wait: bool = typer.Option(False, "--wait", help="Wait until the archive is written."),
    output: Path = typer.Option(
        None, "--output", "-o", dir_okay=False, help="Wait, then download the archive here."
    ),
) -> None:
    """Ask for an export of everything the organisation has (owners, operators)."""
    with client() as c:
        found = c.create_export(org)
        while (wait or output) and found.status not in ENDED:
            time.sleep(2)
            found = c.get_export(org, found.id)
    _show(found)
    if found.status != "succeeded" and (wait or output):
        raise typer.Exit(1)
    if output is not None:
        _download(org, found.id, output)


@exports.command("show")
def show(export_id: str, org: str = typer.Option(..., "--org")) -> None:
    with client() as c:
        _show(c.get_export(org, export_id))


@exports.command("download")
def download(
    export_id: str,
    org: str = typer.Option(..., "--org"),
    output: Path = typer.Option(..., "--output", "-o", dir_okay=False),
) -> None:
    """Save the archive (a tar), decrypted by the server as it streams."""
    _download(org, export_id, output)


def _download(org: str, export_id: str, output: Path) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a tenant's content
    os.fchmod(fd, 0o600)
    with client() as c, os.fdopen(fd, "wb") as into:
        written = c.download_export(org, export_id, into)
    console.print(f"{written:,} bytes written to {output}")


PUBLIC_KEY = typer.Option(
    ..., "--public-key", exists=True, dir_okay=False,
    help="The installation's public key (PEM, from `reports public-key`), obtained apart "
    "from the file: a key carried inside the file proves nothing.",
)  # fmt: skip


@exports.command("verify")
def verify_export(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Check an archive offline: the manifest's signature, every object's SHA-256, and the
    audit events against their chain proof. Exit 0 when all hold."""
    key = load_public_key(public_key.read_text())
    verdict = verify_archive(file, key)
    summary = (
        f"{verdict.objects} objects, {verdict.audit_events} audit events "
        f"(sealed through seq {verdict.sealed_through}), key {key_id(key)}"
    )
    if not verdict.ok:
        err.print(f"[red]INVALID[/red]: {summary}")
        for problem in verdict.problems:
            err.print(f"  - {problem}")
        raise typer.Exit(1)
    console.print(f"[green]valid[/green]: {summary}")


@erasure.command("run")
def erase(
    org: str = typer.Option(..., "--org"),
    yes: bool = typer.Option(False, "--yes", help="Confirm: this cannot be undone."),
    output: Path = typer.Option(None, "--output", "-o", dir_okay=False),
) -> None:
    """Erase the organisation's data for good (owners, operators) and print the signed
    certificate; erasing again answers the same certificate."""
    if not yes:
        err.print("[red]refused[/red]: erasure cannot be undone; add --yes to confirm")
        raise typer.Exit(2)
    with client() as c:
        _certificate(c.erase_org(org)["certificate"], output)


@erasure.command("certificate")
def certificate(
    org: str = typer.Option(..., "--org"),
    output: Path = typer.Option(None, "--output", "-o", dir_okay=False),
) -> None:
    """The signed certificate of the organisation's last erasure."""
    with client() as c:
        _certificate(c.erasure_certificate(org), output)


def _certificate(signed: dict[str, object], output: Path | None) -> None:
    text = json.dumps(signed, indent=2, ensure_ascii=False)
    if output is None:
        console.print(text, highlight=False)
        return
    output.write_text(text)
    console.print(f"certificate written to {output}")


@erasure.command("verify")
def verify_certificate(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    public_key: Path = PUBLIC_KEY,
) -> None:
    """Check a certificate offline. Exit 0 when its signature is valid."""
    signed = json.loads(file.read_text())
    key = load_public_key(public_key.read_text())
    if not verify(signed, key):
        err.print("[red]INVALID[/red]: the certificate was altered or not signed by this key")
        raise typer.Exit(1)
    console.print(f"[green]valid[/green]: signed by key {key_id(key)}")
