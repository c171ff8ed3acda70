"""files and batches: upload, list, download; run, follow, cancel."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from souverain.cli.context import client, console

files = typer.Typer(help="Your organisation's files (stored encrypted).", no_args_is_help=True)
batches = typer.Typer(help="Batch jobs: many requests, no client waiting.", no_args_is_help=True)

ENDED = {"completed", "failed", "expired", "cancelled"}


def _when(stamp: int | None) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M") if stamp else "-"


@files.command("upload")
def files_upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False),
    purpose: str = typer.Option("batch", help="batch | fine-tune | user_data | evals"),
) -> None:
    with client() as c:
        found = c.jobs.upload(str(path), purpose)
    console.print(f"uploaded [bold]{found['id']}[/bold]: {found['bytes']} bytes, "
                  f"{found.get('num_lines') or 0} lines, kept in {found['datacenter']}")  # fmt: skip


@files.command("list")
def files_list() -> None:
    with client() as c:
        found = c.jobs.list_files()
    table = Table("id", "filename", "purpose", "bytes", "lines", "datacenter", "created")
    for f in found:
        table.add_row(f["id"], f["filename"], f["purpose"], str(f["bytes"]),
                      str(f.get("num_lines") or "-"), f["datacenter"], _when(f["created_at"]))  # fmt: skip
    console.print(table)


@files.command("download")
def files_download(
    file_id: str, output: Path = typer.Option(None, "-o", help="Default: standard output.")
) -> None:
    with client() as c:
        if output is None:
            c.jobs.download(file_id, sys.stdout.buffer)
        else:
            with output.open("wb") as handle:
                size = c.jobs.download(file_id, handle)
            console.print(f"{size} bytes written to {output}")


@files.command("delete")
def files_delete(file_id: str) -> None:
    with client() as c:
        c.jobs.delete_file(file_id)
    console.print(f"deleted {file_id}")


@batches.command("create")
def batches_create(
    file_id: str,
    endpoint: str = typer.Option("/v1/chat/completions"),
    wait: bool = typer.Option(False, "--wait", help="Follow it until it ends."),
) -> None:
    with client() as c:
        found = c.jobs.create_batch(file_id, endpoint)
    console.print(f"batch [bold]{found['id']}[/bold]: {found['status']}")
    if wait:
        batches_show(found["id"], wait=True)


@batches.command("list")
def batches_list() -> None:
    with client() as c:
        found = c.jobs.batches()
    table = Table("id", "status", "done", "failed", "total", "created", "not before")
    for b in found:
        counts = b["request_counts"]
        table.add_row(b["id"], b["status"], str(counts["completed"]), str(counts["failed"]),
                      str(counts["total"]), _when(b["created_at"]),
                      _when(b["souverain"]["not_before"]))  # fmt: skip
    console.print(table)


@batches.command("show")
def batches_show(
    batch_id: str, wait: bool = typer.Option(False, "--wait", help="Follow it until it ends.")
) -> None:
    with client() as c:
        found = c.jobs.batch(batch_id)
        if wait and found["status"] not in ENDED:
            columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task(found["status"], total=None)
                while found["status"] not in ENDED:
                    counts = found["request_counts"]
                    progress.update(task, total=counts["total"] or None,
                                    completed=counts["completed"] + counts["failed"],
                                    description=found["status"])  # fmt: skip
                    time.sleep(1.0)
                    found = c.jobs.batch(batch_id)
    counts = found["request_counts"]
    console.print(f"[bold]{found['id']}[/bold] {found['status']}: {counts['completed']} answered, "
                  f"{counts['failed']} failed of {counts['total']}")  # fmt: skip
    for label, name in (("output", "output_file_id"), ("errors", "error_file_id")):
        if found.get(name):
            console.print(f"  {label}: {found[name]}")
    extras = found.get("souverain") or {}
    if extras.get("not_before"):
        console.print(f"  deferred to {_when(extras['not_before'])} for a cleaner grid "
                      f"({extras['co2e_saved_g']:.3g} gCO2e saved)")  # fmt: skip


@batches.command("cancel")
def batches_cancel(batch_id: str) -> None:
    with client() as c:
        found = c.jobs.cancel_batch(batch_id)
    console.print(f"{batch_id}: {found['status']}")
