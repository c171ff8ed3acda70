"""audit: read, export and verify the tamper-evident audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from souverain.cli.context import client, console, err
from souverain.core.audit import verify_chain
from souverain.core.signing import key_id, load_public_key

audit = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@audit.command("list")
def audit_list(
    org: str = typer.Option(None, "--org"),
    action: str = typer.Option(None, "--action"),
    limit: int = typer.Option(50, "--limit"),
    after_seq: int = typer.Option(0, "--after"),
) -> None:
    with client() as c:
        page = c.audit_events(org=org, action=action, limit=limit, after_seq=after_seq)
    table = Table("seq", "time", "actor", "action", "target", "outcome", "details")
    for event in page["events"]:
        actor = (
            (event["actor_key_id"] and f"key {event['actor_key_id']}")
            or event["actor_id"]
            or event["actor_type"]
        )
        target = f"{event['target_type'] or ''} {event['target_id'] or ''}".strip()
        table.add_row(
            str(event["seq"]),
            event["time"][:19],
            actor,
            event["action"],
            target,
            event["outcome"],
            event["details"][:80],
        )
    console.print(table)


@audit.command("export")
def audit_export(
    output: Path = typer.Option(..., "--output", "-o"),
    org: str = typer.Option(
        None, "--org", help="One organisation's events (default: all you may read)."
    ),
) -> None:
    """Every event you may read, as JSON lines with their hashes."""
    written = 0
    with client() as c, output.open("w") as handle:
        after = 0
        while True:
            page = c.audit_events(org=org, limit=10_000, after_seq=after)
            for event in page["events"]:
                handle.write(json.dumps(event, ensure_ascii=False) + "\n")
            written += len(page["events"])
            if len(page["events"]) < 10_000:
                break
            after = page["next_after_seq"]
    console.print(f"{written} events written to {output}")


@audit.command("verify")
def audit_verify(
    public_key: Path = typer.Option(
        None, "--public-key", help="Trusted PEM of the platform key (default: ask the server)."
    ),
) -> None:
    """Recompute the whole chain and check every seal (operators). Exit 1 on any problem:
    an edited, deleted, inserted or reordered event, or truncation of sealed events."""
    events: list[dict[str, Any]] = []
    with client() as c:
        after, seals, head = 0, [], 0
        while True:
            page = c.audit_chain(after_seq=after)
            events += page["events"]
            seals, head = page["seals"], page["head_seq"]
            if len(page["events"]) < 10_000:
                break
            after = page["events"][-1]["seq"]
        pem = public_key.read_text() if public_key else c.signing_key()["public_key_pem"]
    key = load_public_key(pem)
    verdict = verify_chain(events, seals, key, head_seq=head)
    summary = (
        f"{verdict.events} events (seq {verdict.first_seq}–{verdict.last_seq}), {verdict.seals} seals, "
        f"last sealed seq {verdict.last_sealed_seq}, key {key_id(key)}"
    )
    if not verdict.ok:
        err.print(f"[red]TAMPERED[/red]: {summary}")
        for problem in verdict.problems:
            err.print(f"  - {problem}")
        raise typer.Exit(1)
    console.print(f"[green]intact[/green]: {summary}")
