"""The app factory. Everything stateful is built in the lifespan, nothing at import.

    create_app(settings, hooks=[...])  ->  FastAPI with /v1, /api, /healthz, /readyz, /docs

`hooks` are async context managers entered once the database is migrated, in order; the
`souverain up` command uses one to start an embedded Ray head and the controller inside
the server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from prometheus_client import start_http_server
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from souverain import __version__
from souverain.db.engine import create_engine, session_factory, upgrade
from souverain.files import service as files_service
from souverain.gateway.auditing import AuditTrail
from souverain.gateway.demand import DemandBoard
from souverain.gateway.journal import UsageJournal
from souverain.gateway.languages import LanguageTagger
from souverain.gateway.meter import Meter
from souverain.gateway.metrics import Metrics
from souverain.gateway.queueing import FairQueue
from souverain.gateway.ratelimit import RateLimiter
from souverain.gateway.routing import RouteTable
from souverain.gateway.shares import SharePolicy
from souverain.gateway.state import AppState
from souverain.gateway.upstream import Upstream
from souverain.installation import authority, bootstrap, signing
from souverain.jobs.batches.runner import BatchRunner
from souverain.metering import usage as usage_service
from souverain.server import errors
from souverain.server.middleware import EdgeGuard
from souverain.server.routers import (
    audit,
    batches,
    billing,
    console,
    data_controls,
    deployments,
    evaluations,
    exports,
    files,
    fine_tuning,
    fleet,
    health,
    inference,
    keys,
    limits,
    me,
    metrics,
    models,
    orgs,
    policies,
    reports,
    scim,
    sso,
    storage,
    usage,
)
from souverain.server.routers import identity as identity_routes
from souverain.server.routers import service_accounts as service_account_routes
from souverain.settings import Settings, ensure_data_dir, load_master_key
from souverain.tenancy.auth import KeyCache

log = logging.getLogger(__name__)

Hook = Callable[[AppState], AbstractAsyncContextManager[None]]

DESCRIPTION = """\
**souverain** — a sovereign AI cloud you run yourself.

* `/v1` — OpenAI- and Mistral-compatible inference (`Authorization: Bearer sk-souv-…`).
* `/api` — the control plane: organisations, projects, keys, datacenters, nodes, models,
  deployments, usage.

Every route needs an API key except `/healthz`, `/readyz` and these docs.
"""


def create_app(
    settings: Settings,
    *,
    hooks: Sequence[Hook] = (),
    on_first_key: Callable[[str], None] | None = None,
) -> FastAPI:
    """`on_first_key` is given by a process that shows the first operator key on a terminal
    (`souverain up`); the first operator key is made then, else by `souverain init`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await _start(settings, on_first_key)
        app.state.souverain = state
        async with _running(state, hooks):
            yield

    app = FastAPI(
        title="souverain",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=errors.DOCUMENTED,
        redirect_slashes=False,  # a redirect would echo the Host header
    )
    errors.install(app)
    app.add_middleware(
        EdgeGuard,
        max_body_bytes=settings.max_request_bytes,
        # Uploads stream through an encrypting parser: their own limit, checked as they go.
        large_bodies={("POST", "/v1/files"): settings.files_max_bytes + 2**20},
    )

    _include_routers(app)
    return app


def _include_routers(app: FastAPI) -> None:
    app.include_router(health.router)
    for router in (
        inference.router,
        files.router,
        batches.router,
        fine_tuning.router,
        evaluations.router,  # before models: /api/models/{model:path} would take its paths
        me.router,
        orgs.router,
        policies.router,
        data_controls.router,
        exports.router,
        keys.router,
        fleet.router,
        models.router,
        deployments.router,
        usage.router,
        reports.router,
        billing.router,
        limits.router,
        metrics.router,
        audit.router,
        storage.router,
        console.router,
        sso.router,
        identity_routes.router,
        service_account_routes.router,
        scim.router,
    ):
        app.include_router(router)


@contextlib.asynccontextmanager
async def _running(state: AppState, hooks: Sequence[Hook]) -> AsyncIterator[None]:
    """The process's own work while it serves: route refreshes, the audit trail's
    counted events, the batch runner, the metrics listener and the hooks; stopped in
    order, usage records of answers already sent written first."""
    settings = state.settings
    state.languages.start()
    refresher = asyncio.create_task(
        state.routes.refresh_forever(state.sessions, settings.replica_refresh_s)
    )
    publisher = asyncio.create_task(
        state.demand.publish_forever(state.sessions, settings.demand_interval_s)
    )
    stop_trail = asyncio.Event()
    trail = asyncio.create_task(state.audit_trail.run(stop_trail))
    runner, batch_engine = _batch_runner(state)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if settings.metrics_bind:
                host, _, port = settings.metrics_bind.rpartition(":")
                server, _thread = start_http_server(
                    int(port), addr=host or "127.0.0.1", registry=state.metrics.registry
                )
                stack.callback(server.shutdown)
            for hook in hooks:
                await stack.enter_async_context(hook(state))
            yield
    finally:
        runner.cancel()  # its lines in flight stay open; the next runner takes them over
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if state.pending_settlements:  # usage records of answers already sent
            await asyncio.wait(state.pending_settlements, timeout=30)
        await state.languages.stop()
        await state.journal.stop()
        stop_trail.set()
        await trail  # writes what the last window counted

        refresher.cancel()
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        with contextlib.suppress(asyncio.CancelledError):
            await publisher

        await state.upstream.close()
        await state.oidc.close()
        await batch_engine.dispose()
        await state.engine.dispose()


def _batch_runner(state: AppState) -> tuple[asyncio.Task[None], AsyncEngine]:
    """The batch runner, on a database pool of its own: a batch's lines never hold every
    connection while live requests wait for one. Its task and that pool's engine."""
    settings = state.settings
    engine = create_engine(settings.sqlalchemy_url, connections=settings.batch_db_connections)
    runner = BatchRunner(
        dataclasses.replace(state, engine=engine, sessions=session_factory(engine)),
        lease_s=settings.batch_lease_s,
        concurrency=settings.batch_concurrency,
        at_once=settings.batch_at_once,
        per_org=settings.batch_per_org,
    )
    return asyncio.create_task(runner.run()), engine


def journal_directory(settings: Settings, server_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in server_id)
    return settings.data_dir / "journal" / safe


async def installation_signing_key(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> Ed25519PrivateKey:
    return await signing.installation_key(
        sessions,
        master_key=load_master_key(settings),
        key_file=settings.signing_key_file,
        adopt=settings.legacy_signing_key,
    )


def say_where_files_go(coverage: files_service.StoreCoverage) -> None:
    """At start-up: which datacenters keep files, and a warning for each that does not
    (tenants whose policy allows only those get 451 on upload)."""
    log.info("file stores: %s", ", ".join(coverage.stored) or "none")
    for datacenter in coverage.missing:
        log.warning(
            "datacenter %s has no file store: uploads that may only go there are refused (451); "
            "add it to SOUVERAIN_FILE_STORES",
            datacenter,
        )
    for datacenter in coverage.undeclared:
        log.warning(
            "SOUVERAIN_FILE_STORES names %s, which is not a declared datacenter", datacenter
        )


async def _start(settings: Settings, on_first_key: Callable[[str], None] | None) -> AppState:
    ensure_data_dir(settings)
    engine = create_engine(settings.sqlalchemy_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    signing_key = await installation_signing_key(settings, sessions)  # refuses a foreign one
    server_id = f"{socket.gethostname()}:{settings.port}"
    journal = UsageJournal(journal_directory(settings, server_id), sessions)
    await journal.start()  # replays what a killed predecessor left
    async with sessions.begin() as session:
        interrupted = await usage_service.settle_interrupted(session, server_id=server_id)
        first_key = await bootstrap.ensure_operator_key(session) if on_first_key else None
    if interrupted:
        log.warning(
            "settled %d usage record(s) left open by a previous run as 'interrupted'", interrupted
        )
    if first_key and on_first_key:
        on_first_key(first_key)
    async with sessions() as session:
        stores = settings.file_stores_or_default
        say_where_files_go(await files_service.store_coverage(session, stores=stores))
    routes = RouteTable(
        SharePolicy(
            batch_share=settings.queue_batch_share,
            neighbour_s=settings.queue_neighbour_s,
            live_s=settings.queue_live_s,
            batch_max_wait_s=settings.queue_batch_max_wait_s,
        )
    )
    await routes.refresh(sessions)
    master_key = load_master_key(settings)
    trusted = await authority.load_or_create(sessions, master_key)  # engines' TLS root
    queue = FairQueue(
        routes,
        per_org=settings.queue_per_org,
        total=settings.queue_total,
        wait_s=settings.queue_wait_s,
    )
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        keys=KeyCache(sessions, ttl_s=settings.key_cache_ttl_s),
        routes=routes,
        upstream=Upstream(timeout_s=settings.upstream_timeout_s, authority=trusted.certificate_pem),
        master_key=master_key,
        server_id=server_id,
        signing_key=signing_key,
        limiter=RateLimiter(
            settings.rate_limit_storage, crashes_per_10_minutes=settings.engine_failures_per_key
        ),
        metrics=Metrics(routes),
        audit_trail=AuditTrail(sessions, window_s=settings.audit_window_s),
        journal=journal,
        languages=LanguageTagger(journal, sessions),
        meter=Meter.from_settings(settings),
        file_stores=settings.file_stores_or_default,
        queue=queue,
        demand=DemandBoard(routes, queue, server_id),
    )
