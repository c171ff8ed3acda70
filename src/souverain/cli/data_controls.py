"""data-controls: zero data retention and retention windows of an organisation."""

from __future__ import annotations

import typer
from rich.table import Table

from souverain.cli.context import client, console
from souverain.core.schemas.data_controls import (
    DataControls,
    DataControlsRequest,
    RetentionWindows,
)

data_controls = typer.Typer(
    help="What an organisation keeps, and for how long.", no_args_is_help=True
)


def _show(view: DataControls) -> None:
    table = Table("control", "value", title=f"data controls of {view.org_id}")
    effective = "on" if view.zero_retention_effective else "off"
    table.add_row(
        "zero retention", f"{'on' if view.zero_retention else 'off'} (in force: {effective})"
    )
    for name, days in view.retention.model_dump().items():
        table.add_row(
            name.removesuffix("_days").replace("_", " "), f"{days} days" if days else "kept"
        )
    console.print(table)


@data_controls.command("show")
def show(org: str = typer.Option(..., "--org")) -> None:
    with client() as c:
        _show(c.get_data_controls(org))


def _days(help_text: str) -> int | None:
    return typer.Option(None, min=1, max=3650, help=help_text)  # type: ignore[no-any-return]


@data_controls.command("set")
def set_controls(
    org: str = typer.Option(..., "--org"),
    zero_retention: bool = typer.Option(
        False, "--zero-retention/--no-zero-retention", help="Keep no content beyond requests."
    ),
    files_days: int | None = _days("Delete files this many days after upload."),
    batch_outputs_days: int | None = _days("Delete batch results this long after the batch."),
    fine_tuning_days: int | None = _days("Delete checkpoints this long after the job."),
    usage_days: int | None = _days("Delete usage records this long after the request."),
    audit_days: int | None = _days("Reduce audit events to stubs after this many days."),
) -> None:
    """Replace the organisation's data controls (owners, operators); omitted windows keep
    that kind of data until it is deleted."""
    windows = RetentionWindows(
        files_days=files_days, batch_outputs_days=batch_outputs_days,
        fine_tuning_days=fine_tuning_days, usage_days=usage_days, audit_days=audit_days,
    )  # fmt: skip
    request = DataControlsRequest(zero_retention=zero_retention, retention=windows)
    with client() as c:
        _show(c.set_data_controls(org, request))
