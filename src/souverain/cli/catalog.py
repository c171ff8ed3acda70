"""models and deployments."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from souverain.cli.context import client, console, request_of
from souverain.core.schemas.deployments import (
    Deployment,
    DeploymentCreateRequest,
    UsageSums,
)
from souverain.core.schemas.models import ModelRegisterRequest
from souverain.core.schemas.usage import DeploymentStartup

models = typer.Typer(help="The model registry.", no_args_is_help=True)
deployments = typer.Typer(help="Model deployments and their replicas.", no_args_is_help=True)


def sha256_with_progress(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=size < 64 * 2**20) as progress:
        task = progress.add_task(f"sha256 {path.name}", total=size)
        with path.open("rb") as handle:
            while block := handle.read(8 * 2**20):
                digest.update(block)
                progress.update(task, advance=len(block))
    return digest.hexdigest()


@models.command("evaluate")
def models_evaluate(
    model: str = typer.Argument(..., help="Model id or name."),
    file_id: str = typer.Argument(..., help="A held-out file (chat JSONL with `answer`)."),
    max_tokens: int = typer.Option(None, help="The longest answer (default 192)."),
    samples: int = typer.Option(None, help="Prompts evaluated, at most (default 100)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Wait for the result."),
) -> None:
    """pass@1, format rate, mean reward and language consistency, per language, with the
    magistral grader: a job on your organisation's fleet."""
    body = {"file_id": file_id, "max_tokens": max_tokens, "samples": samples}
    with client() as c:
        found = c.jobs.evaluate(model, {k: v for k, v in body.items() if v is not None})
        console.print(f"created [bold]{found['id']}[/bold] ({found['status']})")
        while follow and found["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(2.0)
            found = next(e for e in c.jobs.evaluations(model) if e["id"] == found["id"])
    if not follow:
        return
    if found["status"] != "succeeded":
        console.print(f"{found['status']}: {(found.get('error') or {}).get('message', '')}")
        raise typer.Exit(1)
    result = found["result"] or {}
    table = Table("language", "samples", "pass@1", "format", "mean reward", "consistency")
    for name, row in [("all", result.get("overall") or {}),
                      *sorted((result.get("languages") or {}).items())]:  # fmt: skip
        table.add_row(name, *(str(row.get(k)) for k in ("samples", "pass_at_1", "format_rate",
                                                         "mean_reward", "language_consistency")))  # fmt: skip
    console.print(table)


@models.command("card")
def models_card(
    model: str = typer.Argument(..., help="Model id or name."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of Markdown."),
) -> None:
    """The model card (EU AI Act, Annex XI): provenance, compute, energy, where it was trained."""
    with client() as c:
        card = c.jobs.model_card(model, markdown=not as_json)
    if as_json:
        console.print_json(data=card)
    else:
        console.print(Markdown(card))


@models.command("list")
def models_list() -> None:
    with client() as c:
        table = Table("name", "engine", "capabilities", "owner", "artifact", "size", "license")
        for model in c.list_models():
            artifact = model.artifacts[0] if model.artifacts else None
            size = (
                f"{artifact.size_bytes / 2**20:.0f} MiB"
                if artifact and artifact.size_bytes
                else "-"
            )
            table.add_row(
                model.name,
                model.engine,
                ",".join(model.capabilities),
                model.owner_org_id or "platform",
                (artifact.sha256 or "")[:12] if artifact else "-",
                size,
                artifact.license if artifact else "-",
            )
        console.print(table)


@models.command("register")
def models_register(
    name: str,
    source: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="A local file (GGUF or safetensors, inside SOUVERAIN_MODEL_ROOTS on the nodes), "
        "builtin://NAME, or hf://owner/repo/path/file for online nodes.",
    ),
    engine: str = typer.Option("llamacpp"),
    capability: list[str] = typer.Option(
        None, help="chat, completions, embeddings, reasoning (repeatable)."
    ),
    reasoning_tags: str = typer.Option(
        None, help="A reasoning model's tags: '<think>' (default) or '[THINK]' (Magistral)."
    ),
    context_length: int = typer.Option(4096, "--context-length"),
    license: str = typer.Option("unknown"),
    sha256: str = typer.Option(None, help="The file's sha256, checked on every node (hf://)."),
    org: str = typer.Option(None, help="Make it private to this organisation."),
) -> None:
    """Register a model: a local file's sha256 is computed here and checked on every node.
    A reasoning model (`--capability reasoning`) has its thinking shown apart in answers."""
    uri, checksum, size = _artifact(source, sha256)
    request = request_of(
        ModelRegisterRequest,
        name=name,
        uri=uri,
        sha256=checksum,
        size_bytes=size,
        format="safetensors" if uri.endswith(".safetensors") else "gguf",
        engine=engine,
        capabilities=list(capability) if capability else ["chat", "completions"],
        reasoning_tags=reasoning_tags,
        context_length=context_length,
        license=license,
        org=org,
    )
    with client() as c:
        model = c.register_model(request)
    shown = f" sha256 {checksum[:16]}…" if checksum else ""
    console.print(f"registered [bold]{model.name}[/bold] ({model.id}) from {uri}{shown}")


def _artifact(source: str, sha256: str | None) -> tuple[str, str | None, int | None]:
    """(URI, sha256, size) of what `models register` was given: a URI is sent as written
    (the server checks it), a local path is hashed here."""
    if source.startswith(("builtin://", "hf://", "file://")):
        return source, sha256, None
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise typer.BadParameter(
            f"{source}: no such file (or give builtin://NAME or hf://owner/repo/file)",
            param_hint="SOURCE",
        )
    return f"file://{path}", sha256 or sha256_with_progress(path), path.stat().st_size


@deployments.command("list")
def deployments_list() -> None:
    with client() as c:
        table = Table(
            "name", "model", "engine", "replicas", "serves", "status", "reason", "where",
            "last scaling",
        )  # fmt: skip
        for d in c.list_deployments():
            runtimes = sorted({f"{r.runtime} ×{r.slots}" if r.slots else r.runtime
                               for r in d.replica_details if r.runtime})  # fmt: skip
            colour = {"ready": "green", "failed": "red", "unschedulable": "red"}.get(
                d.status, "yellow"
            )
            table.add_row(
                d.name,
                d.model,
                f"{d.engine} ({', '.join(runtimes)})" if runtimes else d.engine,
                _replicas(d),
                _serves(d),
                f"[{colour}]{d.status}[/{colour}]",
                d.status_reason,
                ",".join(d.datacenters) or "any",
                _last_scaling(d),
            )
        console.print(table)


@deployments.command("show")
def deployments_show(name: str) -> None:
    """One deployment: its status, replicas and, for its own organisation, what its
    replicas' starts cost (wall time, CPU seconds, energy)."""
    with client() as c:
        d = c.get_deployment(name)
    console.print(f"{d.name} ({d.model}, {d.engine}): {d.status} {d.status_reason}".rstrip())
    console.print(f"replicas {_replicas(d)}, serves {_serves(d)}")
    for r in d.replica_details:
        console.print(f"  {r.id} {r.state} in {r.datacenter_id} {r.reason}".rstrip())
    if d.startup is not None:
        console.print(_startup(d.startup))


def _startup(startup: DeploymentStartup) -> str:
    """The last start and every start, in one line each."""
    total = (f"starts: {startup.starts}, {startup.energy_wh:.4g} Wh, "
             f"{startup.co2e_g:.4g} g CO2e, {startup.cpu_s:.1f} CPU s")  # fmt: skip
    last = startup.last
    if last is None:
        return total
    cpu = f"{last.cpu_s:.1f} CPU s" if last.cpu_s is not None else "CPU time not reported"
    return (f"last start: {last.wall_s:.1f} s from placement to ready, {cpu}, "
            f"{last.energy_wh:.4g} Wh ({last.replica_id})\n{total}")  # fmt: skip


@deployments.command("usage")
def deployments_usage(
    name: str, hours: int = typer.Option(24, help="The window, up to now (at most 744).")
) -> None:
    """Requests, tokens and energy of a deployment over the last hours, per replica, and
    on a shared replica per adapter: yours (other organisations' use is not shown)."""
    with client() as c:
        found = c.deployment_usage(name, hours)
    console.print(f"{name}, the last {hours} h: {_used(found)}")
    table = Table("replica", "served for", "requests", "tokens", "energy")
    for r in found.replicas:
        rows = [("its model", r.model), *((a.model_id, a) for a in r.adapters)]
        for what, sums in rows:
            table.add_row(r.replica_id, what, str(sums.requests),
                          str(sums.prompt_tokens + sums.completion_tokens), _wh(sums))  # fmt: skip
    console.print(table)


def _used(sums: UsageSums) -> str:
    tokens = sums.prompt_tokens + sums.completion_tokens
    return f"{sums.requests} request(s), {tokens} tokens, {_wh(sums)}"


def _wh(sums: UsageSums) -> str:
    estimated = " (partly estimated)" if sums.energy_estimated else ""
    return f"{sums.energy_wh:.4g} Wh{estimated}"


def _replicas(d: Deployment) -> str:
    """ready/wanted, and the limits of an autoscaled deployment."""
    count = f"{d.ready_replicas}/{d.replicas}"
    return f"{count} ({d.min_replicas}–{d.max_replicas})" if d.autoscaling else count


def _serves(d: Deployment) -> str:
    """Shared (its adapter on its base's replicas), or dedicated and the adapters its
    replicas hold for others (those you may see)."""
    if d.sharing == "shared" and d.status == "idle":
        return "shared (unloaded while idle)"
    if d.sharing == "shared":
        return "shared (on its base's replicas)"
    return f"dedicated, +{d.adapters} adapter(s)" if d.adapters else "dedicated"


def _last_scaling(d: Deployment) -> str:
    if d.scaled_at is None:
        return ""
    return f"{d.scaled_at:%Y-%m-%d %H:%M:%S} {d.scaling_reason}"


def _where(
    datacenters: list[str], jurisdictions: list[str] | None, certifications: list[str]
) -> str:
    parts = [",".join(datacenters)] if datacenters else []
    parts += [",".join(jurisdictions)] if jurisdictions is not None else []
    parts += [f"+{c}" for c in certifications]
    return " ".join(parts) or "any"


# `deployments create`'s longer options (its signature stays readable)
SHARED = typer.Option(
    False, help="A fine-tuned model: its adapter on its base's replicas, beside others."
)
MIN_REPLICAS = typer.Option(
    None, help="Autoscale from this many replicas (0: scale to zero when idle)."
)
TARGET_BUSY = typer.Option(
    None, help="Outstanding requests per replica to aim at when autoscaling (default 4)."
)
SCALE_DOWN_IDLE = typer.Option(
    None, help="Seconds with nothing outstanding before replicas go (default 300)."
)


@deployments.command("create")
def deployments_create(
    name: str,
    model: str = typer.Option(...),
    replicas: int = typer.Option(None, help="Replicas to start with (default 1, or the minimum)."),
    datacenter: list[str] = typer.Option(None, help="Allowed datacenters (repeatable)."),
    cpus: float = typer.Option(1.0),
    gpus: int = typer.Option(0),
    org: str = typer.Option(None, help="Deploy for this organisation only."),
    engine_arg: list[str] = typer.Option(
        None, help="An engine argument NAME=VALUE (repeatable), e.g. runtime=llama-server."
    ),
    jurisdiction: list[str] = typer.Option(
        None, help="Allowed countries or EU/EEA (repeatable; default anywhere)."
    ),
    certification: list[str] = typer.Option(
        None, help="A certification every datacenter must hold (repeatable)."
    ),
    operator_jurisdiction: list[str] = typer.Option(
        None, "--operator-jurisdiction", help="Allowed operator headquarters (repeatable)."
    ),
    strategy: str = typer.Option("spread", help="spread or binpack."),
    shared: bool = SHARED,
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = typer.Option(None, help="Autoscale up to this many replicas."),
    target_busy: float = TARGET_BUSY,
    scale_down_idle: int = SCALE_DOWN_IDLE,
) -> None:
    """Deploy a model; replicas go only where these constraints and the ceiling allow."""
    request = request_of(
        DeploymentCreateRequest,
        name=name,
        model=model,
        datacenters=list(datacenter or []),
        cpus=cpus,
        gpus=gpus,
        org=org,
        engine_args=dict(_engine_arg(item) for item in engine_arg or []),
        jurisdictions=list(jurisdiction) if jurisdiction else None,
        certifications=list(certification or []),
        operator_jurisdictions=list(operator_jurisdiction) if operator_jurisdiction else None,
        strategy=strategy,
        sharing="shared" if shared else "dedicated",
        **_given(
            replicas=replicas,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            target_busy_per_replica=target_busy,
            scale_down_idle_s=scale_down_idle,
        ),
    )
    with client() as c:
        d = c.create_deployment(request)
    console.print(
        f"created deployment [bold]{d.name}[/bold] ({d.id}): {d.status} — {d.status_reason}"
    )


def _given(**options: object) -> dict[str, object]:
    return {name: value for name, value in options.items() if value is not None}


def _engine_arg(item: str) -> tuple[str, str | int | float | bool]:
    """NAME=VALUE, the value typed as it reads: true/false, an integer, a number, or text."""
    name, sep, raw = item.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--engine-arg")
    if raw.lower() in ("true", "false"):
        return name, raw.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            pass
    return name, raw


@deployments.command("scale")
def deployments_scale(name: str, replicas: int) -> None:
    with client() as c:
        d = c.scale_deployment(name, replicas)
    console.print(f"{d.name}: {d.replicas} replica(s) wanted, {d.ready_replicas} ready")


@deployments.command("delete")
def deployments_delete(name: str) -> None:
    with client() as c:
        d = c.delete_deployment(name)
    console.print(f"deleting {d.id}: replicas are being stopped")
