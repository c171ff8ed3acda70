"""`souverain`: run the platform, or drive a running one over HTTP."""

from __future__ import annotations

import typer

from souverain import __version__
from souverain.cli import (
    audit,
    billing,
    catalog,
    chat,
    data_controls,
    exports,
    fleet,
    install,
    jobs,
    node,
    run,
    sovereignty,
    tenancy,
    usage,
)
from souverain.cli.context import console, options

app = typer.Typer(
    name="souverain",
    help="A sovereign AI cloud you run yourself.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold keys
)


@app.callback()
def main(
    url: str = typer.Option(
        None, "--url", envvar="SOUVERAIN_URL", help="Server URL (default from config)."
    ),
    api_key: str = typer.Option(
        None, "--api-key", envvar="SOUVERAIN_API_KEY", help="API key (default from config)."
    ),
) -> None:
    options.url = url
    options.api_key = api_key


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


app.command()(install.init)
app.command()(run.up)
app.command()(run.server)
app.command()(run.controller)
app.command("chat")(chat.chat)
app.command("usage")(usage.usage)
app.add_typer(tenancy.orgs, name="orgs")
app.add_typer(tenancy.projects, name="projects")
app.add_typer(tenancy.members, name="members")
app.add_typer(tenancy.keys, name="keys")
app.add_typer(data_controls.data_controls, name="data-controls")
app.add_typer(exports.exports, name="exports")
app.add_typer(exports.erasure, name="erasure")
app.add_typer(fleet.datacenters, name="datacenters")
app.add_typer(fleet.nodes, name="nodes")
app.add_typer(node.node, name="node")
app.add_typer(catalog.models, name="models")
app.add_typer(catalog.deployments, name="deployments")
app.add_typer(sovereignty.policies, name="policies")
app.add_typer(sovereignty.reports, name="reports")
app.add_typer(billing.prices, name="prices")
app.add_typer(billing.budgets, name="budgets")
app.add_typer(billing.invoices, name="invoices")
app.add_typer(billing.limits, name="limits")
app.add_typer(audit.audit, name="audit")
app.add_typer(jobs.files, name="files")
app.add_typer(jobs.batches, name="batches")
app.add_typer(jobs.fine_tuning, name="finetune")
app.add_typer(jobs.datasets, name="datasets")


if __name__ == "__main__":
    app()
