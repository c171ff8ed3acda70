"""usage: a table, a small terminal chart, or a CSV export."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from souverain.cli.context import client, console, write_raw
from souverain.core.schemas.usage import UsageReport


def usage(
    org: str = typer.Option(None, "--org"),
    since: datetime = typer.Option(None, "--from", help="ISO date or time (UTC)."),
    until: datetime = typer.Option(None, "--to"),
    group_by: str = typer.Option(
        "model",
        "--by",
        help="day, model, project, key, datacenter, status or language (reasoning requests "
        "per model and prompt language, with their language consistency)",
    ),
    model: str = typer.Option(None, "--model"),
    project: str = typer.Option(None, "--project", help="Project id."),
    key: str = typer.Option(None, "--key", help="Key id."),
    csv: bool = typer.Option(False, "--csv", help="Export the records as CSV instead."),
    limit: int = typer.Option(10_000, "--limit", help="Records in the CSV export."),
) -> None:
    """Requests, tokens, cost, energy and CO2e, grouped."""
    filters = {"org": org, "model": model, "project": project, "key": key}
    with client() as c:
        if csv:
            dates = {
                "from": since.isoformat() if since else None,
                "to": until.isoformat() if until else None,
            }
            write_raw(c.usage_csv(**filters, **dates, limit=limit))
            return
        report = c.usage(since=since, until=until, group_by=group_by, limit=0, **filters)
    if group_by == "language":
        _languages(report)
        return
    table = Table(
        group_by, "requests", "prompt tok", "completion tok", "cost", "energy Wh", "CO2e g", ""
    )
    peak = max((g.prompt_tokens + g.completion_tokens for g in report.groups), default=0) or 1
    for group in report.groups:
        total = group.prompt_tokens + group.completion_tokens
        bar = "█" * max(1 if total else 0, round(24 * total / peak))
        table.add_row(
            group.key,
            str(group.requests),
            f"{group.prompt_tokens:,}",
            f"{group.completion_tokens:,}",
            f"{group.cost:.4f}",
            f"{group.energy_j / 3600:.3f}",
            f"{group.co2e_g:.4f}",
            f"[cyan]{bar}[/cyan]",
        )
    console.print(table)
    if report.startup is not None:
        start = report.startup
        console.print(
            f"Starts of your own deployments' replicas (not in the requests' energy): "
            f"{start.starts}, {start.energy_wh:.4g} Wh, {start.co2e_g:.4g} g CO2e, "
            f"{start.cpu_s:.1f} CPU s"
        )


def _languages(report: UsageReport) -> None:
    table = Table("model · prompt language", "requests", "consistent", "consistency", "")
    for group in report.groups:
        share = group.language_consistency
        bar = "█" * round(24 * share) if share is not None else ""
        table.add_row(
            group.key,
            str(group.requests),
            str(group.language_consistent),
            f"{share:.0%}" if share is not None else "-",
            f"[green]{bar}[/green]",
        )
    console.print(table)
