"""policies and reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table

from souverain.cli.context import client, console, err
from souverain.core.schemas.policies import PolicyDocument
from souverain.core.signing import key_id, load_public_key, verify

policies = typer.Typer(
    help="Sovereignty policies: where data may be processed.", no_args_is_help=True
)
reports = typer.Typer(
    help="Residency reports: signed evidence of where data was processed.", no_args_is_help=True
)


def _show(document: PolicyDocument, title: str) -> None:
    table = Table("constraint", "value", title=title)
    table.add_row(
        "jurisdictions",
        ", ".join(document.jurisdictions) if document.jurisdictions is not None else "any",
    )
    table.add_row(
        "datacenters",
        ", ".join(document.datacenters) if document.datacenters is not None else "any",
    )
    table.add_row("certifications", ", ".join(document.certifications) or "none required")
    operators = document.operator_jurisdictions
    table.add_row(
        "operator jurisdictions", ", ".join(operators) if operators is not None else "any"
    )
    table.add_row(
        "retention", f"{document.retention_days} days" if document.retention_days else "none"
    )
    table.add_row("content logging", "on" if document.content_logging else "off")
    table.add_row("zero retention", "on" if document.zero_retention else "off")
    console.print(table)


@policies.command("show")
def policies_show(
    org: str = typer.Option(..., "--org"),
    project: str = typer.Option(None, "--project", help="Without: the organisation's ceiling."),
    effective: bool = typer.Option(False, "--effective", help="Ceiling ∩ project."),
) -> None:
    with client() as c:
        view = c.get_policy(org, project, effective=effective)
    _show(view.policy, f"{view.scope} policy of {org}{'/' + project if project else ''}")


def _codes(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [] if values == ["none"] else [v for value in values for v in value.split(",") if v]


@policies.command("set")
def policies_set(
    org: str = typer.Option(..., "--org"),
    project: str = typer.Option(None, "--project", help="Without: set the ceiling (operators)."),
    jurisdiction: list[str] = typer.Option(
        None, help="FR, DE, EU, EEA… (repeatable; omit for any)."
    ),
    datacenter: list[str] = typer.Option(None, help="Allowed datacenter ids (repeatable)."),
    certification: list[str] = typer.Option(None, help="Required certification (repeatable)."),
    operator_jurisdiction: list[str] = typer.Option(
        None, "--operator-jurisdiction", help="E.g. EU."
    ),
    retention_days: int = typer.Option(
        0, "--retention-days", help="0: prompts and completions are not kept."
    ),
    content_logging: bool = typer.Option(False, "--content-logging/--no-content-logging"),
    zero_retention: bool = typer.Option(
        False, "--zero-retention/--no-zero-retention", help="Keep no content beyond requests."
    ),
) -> None:
    """Replace a policy. A project policy may only narrow its organisation's ceiling."""
    document = PolicyDocument(
        jurisdictions=_codes(jurisdiction),
        datacenters=_codes(datacenter),
        certifications=[c for value in certification or [] for c in value.split(",") if c],
        operator_jurisdictions=_codes(operator_jurisdiction),
        retention_days=retention_days,
        content_logging=content_logging,
        zero_retention=zero_retention,
    )
    with client() as c:
        view = c.set_policy(org, document, project)
    _show(
        view.policy,
        f"{view.scope} policy of {org}{'/' + project if project else ''} (version {view.version_id})",
    )


@reports.command("residency")
def reports_residency(
    org: str = typer.Option(..., "--org"),
    since: datetime = typer.Option(None, "--from", help="Default: 30 days ago (UTC)."),
    until: datetime = typer.Option(None, "--to", help="Default: now."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the signed report here."),
) -> None:
    """Where the organisation's requests were processed, checked against its policies; signed."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=30)
    with client() as c:
        signed = c.residency_report(org, since=since, until=until)
    report = signed["document"]
    table = Table(
        "datacenter",
        "country",
        "requests",
        "prompt tokens",
        "completion tokens",
        title=f"residency of {org}, {report['period']['from']} → {report['period']['to']}",
    )
    for row in report["by_datacenter"]:
        table.add_row(
            row["datacenter"],
            row["country"],
            str(row["requests"]),
            f"{row['prompt_tokens']:,}",
            f"{row['completion_tokens']:,}",
        )
    console.print(table)
    records = report["records"]
    console.print(
        f"{records['count']} records ({records['not_processed']} never reached an engine)"
    )
    if report["violations"]:
        console.print(f"[red]{len(report['violations'])} violation(s)[/red]")
        for violation in report["violations"]:
            console.print(
                f"  {violation['record_id']} {violation['at']} {violation['datacenter']}: {violation['reason']}"
            )
    else:
        console.print("[green]no violation[/green]")
    if output:
        output.write_text(json.dumps(signed, indent=2, ensure_ascii=False))
        console.print(f"signed report written to {output} (key {signed['signature']['key_id']})")


@reports.command("public-key")
def reports_public_key(output: Path = typer.Option(None, "--output", "-o")) -> None:
    """Download the platform's public signing key (PEM)."""
    with client() as c:
        key = c.signing_key()
    if output:
        output.write_text(key["public_key_pem"])
        console.print(f"key {key['key_id']} written to {output}")
    else:
        console.print(key["public_key_pem"], end="", highlight=False)


@reports.command("verify")
def reports_verify(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    public_key: Path = typer.Option(
        None, "--public-key", help="PEM from `reports public-key` (trusted copy)."
    ),
) -> None:
    """Check a signed report offline. Exit 0 when the signature is valid."""
    signed = json.loads(file.read_text())
    if public_key is not None:
        key = load_public_key(public_key.read_text())
    else:
        key = load_public_key(signed.get("signature", {}).get("public_key", ""))
        err.print(
            "[yellow]no --public-key given: checked against the key embedded in the report; "
            f"compare its id {key_id(key)} with the platform's[/yellow]"
        )
    if not verify(signed, key):
        err.print("[red]INVALID[/red]: the report was altered or not signed by this key")
        raise typer.Exit(1)
    console.print(f"[green]valid[/green]: signed by key {key_id(key)}")
