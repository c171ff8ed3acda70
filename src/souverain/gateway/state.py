"""What one server process holds: settings, database, key cache, routes, HTTP client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from souverain.gateway.auditing import AuditTrail
from souverain.gateway.demand import DemandBoard
from souverain.gateway.journal import UsageJournal
from souverain.gateway.languages import LanguageTagger
from souverain.gateway.meter import Meter
from souverain.gateway.metrics import Metrics
from souverain.gateway.queueing import FairQueue
from souverain.gateway.ratelimit import RateLimiter
from souverain.gateway.routing import RouteTable
from souverain.gateway.upstream import Upstream
from souverain.identity.oidc import OidcClient
from souverain.settings import Settings
from souverain.tenancy.auth import KeyCache


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keys: KeyCache
    routes: RouteTable
    upstream: Upstream
    master_key: bytes
    server_id: str
    signing_key: Ed25519PrivateKey
    limiter: RateLimiter
    metrics: Metrics
    audit_trail: AuditTrail
    journal: UsageJournal
    languages: LanguageTagger
    meter: Meter
    queue: FairQueue
    demand: DemandBoard  # this process's outstanding requests, told to the autoscaler
    file_stores: dict[str, str]  # datacenter -> store URI
    default_projects: dict[str, str] = field(default_factory=dict)
    ledger_ids: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # (budget, month) -> ledger
    pending_settlements: set[asyncio.Task[None]] = field(default_factory=set)
    oidc: OidcClient = field(default_factory=OidcClient)  # single sign-on's provider client

    @property
    def files_quota_bytes(self) -> int:
        return self.settings.files_quota_bytes
