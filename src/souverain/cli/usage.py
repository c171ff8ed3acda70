"""usage: a table and a small terminal chart."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from souverain.cli.context import client, console


def usage(
    org: str = typer.Option(None, "--org"),
    since: datetime = typer.Option(None, "--from", help="ISO date or time (UTC)."),
    until: datetime = typer.Option(None, "--to"),
    group_by: str = typer.Option(
        "model", "--by", help="day, model, project, key, datacenter or status"
    ),
) -> None:
    """Requests and tokens, grouped."""
    with client() as c:
        report = c.usage(org=org, since=since, until=until, group_by=group_by, limit=0)
    table = Table(group_by, "requests", "prompt tokens", "completion tokens", "")
    peak = max((g.prompt_tokens + g.completion_tokens for g in report.groups), default=0) or 1
    for group in report.groups:
        total = group.prompt_tokens + group.completion_tokens
        bar = "█" * max(1 if total else 0, round(30 * total / peak))
        table.add_row(
            group.key,
            str(group.requests),
            f"{group.prompt_tokens:,}",
            f"{group.completion_tokens:,}",
            f"[cyan]{bar}[/cyan]",
        )
    console.print(table)
