"""datacenters and nodes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from souverain.cli.context import client, console
from souverain.cli.node import join_arguments
from souverain.core.schemas.billing import CarbonPoint, CarbonSeriesRequest
from souverain.core.schemas.fleet import DatacenterCreateRequest, DatacenterUpdateRequest
from souverain.energy.carbon import parse_series

datacenters = typer.Typer(
    help="Datacenters: where nodes live, and what sovereignty depends on.", no_args_is_help=True
)
nodes = typer.Typer(help="Nodes, as Ray sees them.", no_args_is_help=True)


@datacenters.command("list")
def datacenters_list() -> None:
    with client() as c:
        table = Table(
            "id", "name", "country", "jurisdictions", "operator", "certifications", "gCO2e/kWh"
        )
        for dc in c.list_datacenters():
            table.add_row(
                dc.id,
                dc.name,
                dc.country,
                ",".join(dc.jurisdictions),
                f"{dc.operator_name} ({dc.operator_country})",
                ",".join(dc.certifications) or "-",
                f"{dc.carbon_intensity:g}",
            )
        console.print(table)


@datacenters.command("add")
def datacenters_add(
    datacenter_id: str = typer.Argument(..., metavar="ID"),
    name: str = typer.Option(..., help="Human name, e.g. 'Paris 1'."),
    country: str = typer.Option(..., help="ISO country code, e.g. FR."),
    operator: str = typer.Option(..., help="Who operates the datacenter."),
    operator_country: str = typer.Option(..., "--operator-country", help="Operator's HQ country."),
    certification: list[str] = typer.Option(
        None, help="E.g. SecNumCloud, HDS, ISO27001 (repeatable)."
    ),
    carbon_intensity: float = typer.Option(
        None, "--carbon-intensity", help="Grid gCO2e/kWh (default: the country's annual average)."
    ),
) -> None:
    request = DatacenterCreateRequest(
        id=datacenter_id,
        name=name,
        country=country,
        operator_name=operator,
        operator_country=operator_country,
        certifications=list(certification or []),
        carbon_intensity=carbon_intensity,
    )
    with client() as c:
        dc = c.create_datacenter(request)
    console.print(
        f"added datacenter [bold]{dc.id}[/bold] in {dc.country} ({', '.join(dc.jurisdictions)})"
    )
    console.print(
        "join a server to it: on the head, souverain node certify --node-ip-address "
        f"<its-private-ip> --datacenter {dc.id} --out <dir>; copy <dir> and the token file to it; on that server:"
        "\n  souverain node join " + join_arguments("<head-private-ip>:6379", dc.id),
        highlight=False,
        soft_wrap=True,
    )


@datacenters.command("update")
def datacenters_update(
    datacenter_id: str = typer.Argument(..., metavar="ID"),
    name: str = typer.Option(None),
    country: str = typer.Option(None),
    operator: str = typer.Option(None),
    operator_country: str = typer.Option(None, "--operator-country"),
    certification: list[str] = typer.Option(None, help="Replaces the list (repeatable)."),
    carbon_intensity: float = typer.Option(None, "--carbon-intensity"),
) -> None:
    """Change a datacenter; replicas that stop complying with their constraints are re-placed."""
    request = DatacenterUpdateRequest(
        name=name,
        country=country,
        operator_name=operator,
        operator_country=operator_country,
        certifications=list(certification) if certification else None,
        carbon_intensity=carbon_intensity,
    )
    with client() as c:
        dc = c.update_datacenter(datacenter_id, request)
    console.print(
        f"{dc.id}: {dc.country} ({', '.join(dc.jurisdictions)}), operator {dc.operator_country}"
    )


@datacenters.command("carbon")
def datacenters_carbon(
    datacenter_id: str = typer.Argument(..., metavar="ID"),
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV: hour,g_per_kwh"),
) -> None:
    """Load an hourly grid carbon-intensity series (e.g. exported from RTE eCO2mix or ENTSO-E)."""
    series = parse_series(csv_file.read_text().splitlines())
    points = [CarbonPoint(hour=hour, g_per_kwh=value) for hour, value in sorted(series.items())]
    with client() as c:
        loaded = c.load_carbon(datacenter_id, CarbonSeriesRequest(points=points))
    console.print(f"{datacenter_id}: {loaded} hourly values loaded")


@nodes.command("list")
def nodes_list() -> None:
    with client() as c:
        table = Table("node", "datacenter", "address", "state", "CPU", "GPU", "last seen")
        for node in c.list_nodes():
            cpu = f"{node.available.get('CPU', 0):g}/{node.resources.get('CPU', 0):g}"
            gpu = f"{node.available.get('GPU', 0):g}/{node.resources.get('GPU', 0):g}"
            state = "[green]alive[/green]" if node.alive else "[red]dead[/red]"
            if node.alive and node.refusal:
                state = f"[red]refused[/red]: {escape(node.refusal)}"
            table.add_row(
                node.id[:12],
                node.datacenter_id or "[yellow]unlabelled[/yellow]",
                node.address,
                state,
                cpu,
                gpu,
                f"{node.last_seen:%H:%M:%S}",
            )
        console.print(table)
