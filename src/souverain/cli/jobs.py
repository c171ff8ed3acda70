"""files, batches and fine-tuning jobs: upload, list, download; run, follow, cancel."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from souverain.cli.context import client, console
from souverain.training import configs
from souverain.training.configs import GRPOConfig, SFTConfig

files = typer.Typer(help="Your organisation's files (stored encrypted).", no_args_is_help=True)
batches = typer.Typer(help="Batch jobs: many requests, no client waiting.", no_args_is_help=True)
fine_tuning = typer.Typer(
    help="Fine-tuning jobs on your fleet, under your policy.", no_args_is_help=True
)

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


FINE_TUNING_ENDED = {"succeeded", "failed", "cancelled"}
SETTINGS_HELP = "reinforcement: a GRPO setting, NAME=VALUE (repeatable): " + "; ".join(
    configs.help_lines(GRPOConfig, tenant_only=True)
)


def _opt_help(config: type[configs.Config], name: str, prefix: str) -> str:
    low, high = configs.bounds_of(config, name)
    meta = configs.settings_of(config)[name].metadata
    return f"{prefix}{meta['help']} ({low:g} to {high:g}; default {configs.default_of(config, name):g})"


def _checked(config: type[configs.Config], name: str, value: float | None, option: str) -> None:
    """Refused here, with the config's reason, before any request is sent."""
    if value is None:
        return
    try:
        configs.check_setting(config, name, value)
    except configs.SettingError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def _settings(pairs: list[str] | None) -> dict[str, float]:
    """--set NAME=VALUE pairs as GRPO settings, each checked against `GRPOConfig`."""
    chosen: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or name not in configs.tenant_settings(GRPOConfig):
            raise typer.BadParameter(
                f"{pair!r}: NAME=VALUE with NAME one of "
                f"{', '.join(configs.tenant_settings(GRPOConfig))}",
                param_hint="--set",
            )
        integer = isinstance(configs.default_of(GRPOConfig, name), int)
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise typer.BadParameter(f"{name} takes {'an integer' if integer else 'a number'}",
                                     param_hint="--set") from None  # fmt: skip
        _checked(GRPOConfig, name, value, "--set")
        chosen[name] = value
    return chosen


def _method(
    reinforcement: bool,
    hyper: dict[str, object],
    grader: str,
    *,
    batch_size: int | None,
    lr_multiplier: float | None,
) -> dict[str, object]:
    """OpenAI's `method` object, its hyperparameters checked against the recipe's config."""
    config: type[configs.Config] = GRPOConfig if reinforcement else SFTConfig
    _checked(config, "batch_size", batch_size, "--batch-size")
    if lr_multiplier is not None:
        rate = lr_multiplier * configs.default_of(config, "learning_rate")
        _checked(config, "learning_rate", rate, "--lr-multiplier")
    given = {k: v for k, v in hyper.items() if v is not None}
    if not reinforcement:
        return {"type": "supervised", "supervised": {"hyperparameters": given}}
    spec = {"type": "magistral"} if grader == "magistral" else json.loads(grader)
    return {"type": "reinforcement",
            "reinforcement": {"grader": spec, "hyperparameters": given}}  # fmt: skip


@fine_tuning.command("create")
def fine_tuning_create(
    training_file: str = typer.Argument(..., help="A file uploaded with purpose fine-tune."),
    model: str = typer.Option("smollm2-135m-instruct", help="The base model."),
    validation_file: str = typer.Option(None),
    epochs: int = typer.Option(None, help="Default: auto."),
    batch_size: int = typer.Option(None, help="Default: auto."),
    lr_multiplier: float = typer.Option(None, help="Learning rate multiplier; default: auto."),
    suffix: str = typer.Option(None),
    method: str = typer.Option("supervised", help="supervised or reinforcement (GRPO)."),
    grader: str = typer.Option(
        "magistral",
        help="reinforcement: 'magistral' (math with reasoning), or a grader as JSON "
        '(e.g. \'{"type": "string_check", ...}\').',
    ),
    steps: int = typer.Option(None, help="Training steps (instead of epochs)."),
    group_size: int = typer.Option(
        None, help=_opt_help(GRPOConfig, "group_size", "reinforcement: ")
    ),
    max_tokens: int = typer.Option(
        None, help=_opt_help(GRPOConfig, "max_tokens", "reinforcement: ")
    ),
    setting: list[str] = typer.Option(None, "--set", help=SETTINGS_HELP),
    jurisdiction: list[str] = typer.Option(
        None,
        help="Where it may run: countries or EU/EEA (repeatable), within your policy; "
        "default: anywhere your policy allows.",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Watch it until it ends."),
) -> None:
    """Create a fine-tuning job; hyperparameters that cannot learn are refused here, with
    the reason, before anything is sent (the server checks them again)."""
    if method not in ("supervised", "reinforcement"):
        raise typer.BadParameter("supervised or reinforcement", param_hint="--method")
    reinforcement = method == "reinforcement"
    if setting and not reinforcement:
        raise typer.BadParameter("settings are for reinforcement jobs", param_hint="--set")
    hyper: dict[str, object] = {"n_epochs": epochs, "batch_size": batch_size,
                                "learning_rate_multiplier": lr_multiplier}  # fmt: skip
    if reinforcement:
        hyper |= {"training_steps": steps, **_settings(
            [*(setting or []), *(f"{k}={v}" for k, v in (("group_size", group_size),
                                                        ("max_tokens", max_tokens)) if v is not None)]
        )}  # fmt: skip
    body = {
        "model": model, "training_file": training_file, "validation_file": validation_file,
        "suffix": suffix, "method": _method(reinforcement, hyper, grader, batch_size=batch_size,
                                           lr_multiplier=lr_multiplier),
        "jurisdictions": list(jurisdiction or []) or None,
    }  # fmt: skip
    with client() as c:
        found = c.jobs.create_fine_tuning_job({k: v for k, v in body.items() if v is not None})
    console.print(f"created [bold]{found['id']}[/bold] ({found['status']})")
    if follow:
        fine_tuning_events(found["id"], follow=True)


@fine_tuning.command("list")
def fine_tuning_list() -> None:
    with client() as c:
        found = c.jobs.fine_tuning_jobs()
    table = Table("id", "model", "status", "step", "fine-tuned model", "datacenter", "created")
    for j in found:
        extra = j.get("souverain") or {}
        table.add_row(j["id"], j["model"], j["status"],
                      f"{extra.get('step', 0)}/{extra.get('total_steps', 0)}",
                      j.get("fine_tuned_model") or "-", extra.get("datacenter") or "-",
                      _when(j["created_at"]))  # fmt: skip
    console.print(table)


@fine_tuning.command("show")
def fine_tuning_show(job_id: str) -> None:
    with client() as c:
        j = c.jobs.fine_tuning_job(job_id)
    extra = j.get("souverain") or {}
    console.print(f"[bold]{j['id']}[/bold] {j['status']} — {j['model']} → "
                  f"{j.get('fine_tuned_model') or '(not yet)'}")  # fmt: skip
    for label, value in [
        ("step", f"{extra.get('step')}/{extra.get('total_steps')}"),
        ("train loss", extra.get("train_loss")), ("tokens", extra.get("tokens")),
        ("tokens/s", extra.get("tokens_per_s")), ("datacenter", extra.get("datacenter")),
        ("CPU seconds", extra.get("cpu_seconds")), ("energy (J)", extra.get("energy_j")),
        ("waiting because", extra.get("status_reason") or None),
        ("error", (j.get("error") or {}).get("message")),
    ]:  # fmt: skip
        if value is not None:
            console.print(f"  {label}: {value}")


@fine_tuning.command("cancel")
def fine_tuning_cancel(job_id: str) -> None:
    with client() as c:
        found = c.jobs.fine_tuning_action(job_id, "cancel")
    console.print(f"{found['id']}: {found['status']}")


@fine_tuning.command("events")
def fine_tuning_events(
    job_id: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Live view until it ends."),
) -> None:
    """The job's events; with --follow, a live view of loss, tokens/s and ETA."""
    with client() as c:
        if not follow:
            for event in c.jobs.fine_tuning_events(job_id):
                console.print(f"{_when(event['created_at'])} {event['level']:5} {event['message']}")
            return
        seen: set[str] = set()
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), "ETA {task.fields[eta]}", console=console,
        ) as bar:  # fmt: skip
            task = bar.add_task("queued", total=None, eta="-")
            while True:
                job = c.jobs.fine_tuning_job(job_id)
                extra = job.get("souverain") or {}
                for event in c.jobs.fine_tuning_events(job_id):
                    if event["id"] not in seen and event.get("type") != "metrics":
                        seen.add(event["id"])
                        bar.console.print(f"{_when(event['created_at'])} {event['message']}")
                finish = job.get("estimated_finish")
                eta = f"{max(0, finish - int(time.time()))} s" if finish else "-"
                loss = extra.get("train_loss")
                bar.update(
                    task, completed=extra.get("step", 0), total=extra.get("total_steps") or None,
                    description=f"{job['status']} loss={loss:.3f} {extra.get('tokens_per_s') or 0:.0f} tok/s"
                    if loss is not None else str(job["status"]), eta=eta,
                )  # fmt: skip
                if str(job["status"]).lower() in FINE_TUNING_ENDED | {"success"}:
                    break
                time.sleep(2.0)
        console.print(f"{job['id']}: {job['status']} {job.get('fine_tuned_model') or ''}")


datasets = typer.Typer(
    help="Data a tenant can upload: generated, never downloaded.", no_args_is_help=True
)


@datasets.command("math")
def datasets_math(
    split: str = typer.Option(
        "train",
        help="train, heldout (never the same problems) or heldout-templates (phrasings "
        "that train never uses).",
    ),
    count: int = typer.Option(200, min=1, max=100_000),
    skip: int = typer.Option(0, min=0, help="Leave out the first N problems of the split."),
    seed: int = typer.Option(0),
    worked: bool = typer.Option(
        False, help="Add worked answers (<think>…</think>, then \\boxed{})."
    ),
    reasoning_prompt: bool = typer.Option(False, help="Put the reasoning system prompt first."),
    level: str = typer.Option(
        "3", help="Difficulty 0–3 or a mix such as 0,1,2 (0: one-digit sums; 3: the default)."
    ),
) -> None:
    """Small math problems in English, French, German, Spanish and Italian, as chat JSONL
    with an `answer` field (for reinforcement) or worked answers (for a cold start)."""
    from souverain.training import mathgen

    arguments = ["--split", split, "--count", str(count), "--skip", str(skip), "--seed", str(seed)]
    arguments += ["--level", level]
    arguments += ["--worked"] if worked else []
    arguments += ["--system", "magistral"] if reasoning_prompt else []
    mathgen.main(arguments)
