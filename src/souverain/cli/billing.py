"""prices, budgets, invoices and rate limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.table import Table

from souverain.cli.context import client, console, write_raw
from souverain.core.schemas.billing import BudgetSetRequest, PriceSetRequest, RateLimitsRequest

prices = typer.Typer(
    help="The price book: per million input and output tokens.", no_args_is_help=True
)
budgets = typer.Typer(help="Monthly budgets in tokens, cost and energy.", no_args_is_help=True)
invoices = typer.Typer(help="Monthly invoices with energy and CO2e lines.", no_args_is_help=True)
limits = typer.Typer(help="Rate limits: requests and tokens per minute.", no_args_is_help=True)


@prices.command("set")
def prices_set(
    model: str,
    input_per_million: float = typer.Option(..., "--input"),
    output_per_million: float = typer.Option(..., "--output"),
    currency: str = typer.Option("EUR"),
) -> None:
    with client() as c:
        price = c.set_price(
            model,
            PriceSetRequest(
                currency=currency,
                input_per_million=input_per_million,
                output_per_million=output_per_million,
            ),
        )
    console.print(
        f"{price.model}: {price.input_per_million:g} / {price.output_per_million:g} {price.currency} per million tokens"
    )


@prices.command("list")
def prices_list() -> None:
    with client() as c:
        table = Table("model", "input / M tokens", "output / M tokens", "currency", "since")
        for price in c.list_prices():
            table.add_row(
                price.model,
                f"{price.input_per_million:g}",
                f"{price.output_per_million:g}",
                price.currency,
                f"{price.created_at:%Y-%m-%d}",
            )
        console.print(table)


@budgets.command("set")
def budgets_set(
    org: str = typer.Option(..., "--org"),
    project: str = typer.Option(None, "--project", help="Without: the organisation's budget."),
    tokens: int = typer.Option(None),
    cost: float = typer.Option(None),
    energy_kwh: float = typer.Option(None, "--energy-kwh"),
) -> None:
    with client() as c:
        budget = c.set_budget(
            org, BudgetSetRequest(tokens=tokens, cost=cost, energy_kwh=energy_kwh), project
        )
    console.print(
        f"budget {budget.id}: tokens {budget.tokens or '∞'}, cost {budget.cost or '∞'}, energy {budget.energy_kwh or '∞'} kWh per month"
    )


@budgets.command("show")
def budgets_show(
    org: str = typer.Option(..., "--org"), period: str = typer.Option(None, help="YYYY-MM")
) -> None:
    with client() as c:
        rows = c.list_budgets(org, period)
    table = Table(
        "scope",
        "period",
        "tokens used / limit",
        "cost used / limit",
        "kWh used / limit",
        "reserved tokens",
    )
    for b in rows:
        table.add_row(
            b.project_id or "organisation",
            b.period,
            f"{b.used_tokens:,} / {b.tokens or '∞'}",
            f"{b.used_cost:.4f} / {b.cost if b.cost is not None else '∞'}",
            f"{b.used_energy_kwh:.6f} / {b.energy_kwh if b.energy_kwh is not None else '∞'}",
            f"{b.reserved_tokens:,}",
        )
    console.print(table)


@invoices.command("show")
def invoices_show(
    org: str = typer.Option(..., "--org"),
    period: str = typer.Option(None, help="YYYY-MM (default: this month)"),
    csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    month = period or datetime.now(UTC).strftime("%Y-%m")
    with client() as c:
        document = c.invoice(org, month, csv=csv)
    if isinstance(document, str):
        write_raw(document)
        return
    if json_out:
        write_raw(json.dumps(document, indent=2) + "\n")
        return
    table = Table(
        "model", "requests", "input tokens", "output tokens", "amount", title=f"{org} — {month}"
    )
    for line in document["lines"]:
        table.add_row(
            line["model"],
            str(line["requests"]),
            f"{line['input_tokens']:,}",
            f"{line['output_tokens']:,}",
            f"{line['amount']:.4f} {line['currency'] or ''}",
        )
    table.add_row("total", "", "", "", f"{document['total']:.4f} {document['currency'] or ''}")
    console.print(table)
    energy, co2e = document["energy"], document["co2e"]
    console.print(
        f"energy {energy['requests_kwh']:.6f} kWh (+ idle of own deployments {energy['idle_kwh_own_deployments']:.6f} kWh"
        f", + their starts {energy.get('startup_kwh_own_deployments', 0.0):.6f} kWh)"
    )
    console.print(
        f"CO2e   {co2e['requests_kg']:.6f} kg (+ idle {co2e['idle_kg_own_deployments']:.6f} kg"
        f", + starts {co2e.get('startup_kg_own_deployments', 0.0):.6f} kg)"
    )


@limits.command("key")
def limits_key(
    key_id: str,
    rpm: int = typer.Option(None, help="Requests/min"),
    tpm: int = typer.Option(None, help="Tokens/min"),
) -> None:
    with client() as c:
        result = c.set_key_limits(key_id, RateLimitsRequest(rpm=rpm, tpm=tpm))
    console.print(f"key {key_id}: {result.rpm or '∞'} requests/min, {result.tpm or '∞'} tokens/min")


@limits.command("project")
def limits_project(
    project: str,
    org: str = typer.Option(..., "--org"),
    rpm: int = typer.Option(None, help="Requests/min"),
    tpm: int = typer.Option(None, help="Tokens/min"),
) -> None:
    with client() as c:
        result = c.set_project_limits(org, project, RateLimitsRequest(rpm=rpm, tpm=tpm))
    console.print(
        f"project {project}: {result.rpm or '∞'} requests/min, {result.tpm or '∞'} tokens/min"
    )
