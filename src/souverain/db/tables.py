"""SQLAlchemy tables. Rows are plain records: no behaviour lives here.

Every schema change goes through an Alembic migration in `db/migrations/versions`;
`tests/test_migrations.py` checks that the migrations and these tables agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(String(16), default="person")  # person | service
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OrganisationRow(Base):
    __tablename__ = "organisations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ProjectRow(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the priority its keys' requests get unless a key asks for a lower one (batch)
    priority: Mapped[str] = mapped_column(String(16), default="interactive")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MembershipRow(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="manual")  # | directory | service
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    parent_key_id: Mapped[str | None] = mapped_column(
        String(16), index=True, nullable=True
    )  # the key that minted this one: its revocation and rate limits reach this key
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True, nullable=True
    )
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    role: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)  # requests per minute
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)  # tokens per minute
    # interactive | batch: a batch key's requests queue like batch lines (gateway/shares.py)
    priority: Mapped[str] = mapped_column(String(16), default="interactive")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ConsoleSessionRow(Base):
    """A console sign-in: the API key it was opened with stays on the server (`key_id`);
    the browser holds only the session's own secret, of which a SHA-256 is kept."""

    __tablename__ = "console_sessions"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DatacenterRow(Base):
    __tablename__ = "datacenters"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    operator_name: Mapped[str] = mapped_column(String(200))
    operator_country: Mapped[str] = mapped_column(String(2))
    certifications: Mapped[list[str]] = mapped_column(JSON)
    carbon_intensity: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NodeRow(Base):
    """A cache of what Ray reports, refreshed by the controller; Ray stays the truth."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    datacenter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    address: Mapped[str] = mapped_column(String(255))
    alive: Mapped[bool] = mapped_column(Boolean)
    resources: Mapped[dict[str, float]] = mapped_column(JSON)
    available: Mapped[dict[str, float]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    refusal: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it gets no work


class ModelRow(Base):
    """Names are unique per owner: platform models among themselves (and no private model
    may take a platform name), private ones within their organisation, so a tenant can
    never learn another tenant's model names."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner_org_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    owner_org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    engine: Mapped[str] = mapped_column(String(32))
    capabilities: Mapped[list[str]] = mapped_column(JSON)
    # A reasoning model's opening tag (`<think>` or `[THINK]`); None: either (the models
    # souverain's own jobs produced).
    reasoning_tags: Mapped[str | None] = mapped_column(String(16), nullable=True)
    context_length: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Fine-tuned models: the model they were trained from, and how (the model card's source).
    base_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ModelAdapterRow(Base):
    """A fine-tuned model's LoRA adapter: an encrypted object of its organisation, served on
    top of the base model's artifact (decrypted on the serving node only)."""

    __tablename__ = "model_adapters"
    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(32))  # gguf-lora | peft
    store_uri: Mapped[str] = mapped_column(Text)
    object_key: Mapped[str] = mapped_column(String(128))
    object_id: Mapped[str] = mapped_column(String(128))
    wrapped_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    datacenter_id: Mapped[str] = mapped_column(String(64))


class ModelArtifactRow(Base):
    __tablename__ = "model_artifacts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    format: Mapped[str] = mapped_column(String(32))
    license: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    engine: Mapped[str] = mapped_column(String(32))
    replicas: Mapped[int] = mapped_column(Integer)
    datacenters: Mapped[list[str]] = mapped_column(JSON)
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[int] = mapped_column(Integer)
    engine_args: Mapped[dict[str, Any]] = mapped_column(JSON)
    placement: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # policy vocabulary
    strategy: Mapped[str] = mapped_column(String(16), default="spread")
    # the reasoning system prompt unless the client says reasoning_effort "none"
    reasoning_default: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str] = mapped_column(Text, default="")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Autoscaling (scheduler/autoscale.py). No minimum and maximum: a fixed count, `replicas`;
    # with them, `replicas` is the count the controller wants now.
    min_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_busy_per_replica: Mapped[float] = mapped_column(Float, default=4.0)
    scale_down_idle_s: Mapped[int] = mapped_column(Integer, default=300)
    scale_above: Mapped[int] = mapped_column(Integer, default=0)  # readings in a row above
    scale_below_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scaled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scaling_reason: Mapped[str] = mapped_column(Text, default="")
    # dedicated: replicas of its own; shared: a fine-tuned model's adapter held by replicas
    # of its base's deployments (jobs/deployments/sharing.py)
    sharing: Mapped[str] = mapped_column(String(16), default="dedicated")
    lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReplicaRow(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    actor_name: Mapped[str] = mapped_column(String(128))
    datacenter_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    engine_restarts: Mapped[int] = mapped_column(Integer, default=0)
    energy_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    energy_j_per_token: Mapped[float | None] = mapped_column(Float, nullable=True)  # last interval
    # What the engine's chat template adds, measured when it became ready (tokens for one
    # empty message, and per further message); None until measured.
    prompt_overhead_fixed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prompt_overhead_per_message: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The program serving the engine on its node (llamacpp: llama-server or
    # llama-cpp-python) and how many requests it decodes at once, as the replica reports.
    runtime: Mapped[str | None] = mapped_column(String(32), nullable=True)
    slots: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Set by the controller when the replica was chosen for release: no new requests are
    # routed to it; it is stopped once the servers report nothing left on it (bounded).
    draining_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A shared replica's adapters, in the engine's order: [{"model": id, "error": why
    # refused, "" once loaded, None until the node says}]
    adapters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UsageRecordRow(Base):
    """One row per admitted request. Written `open` at admission, settled exactly once."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_org_created", "org_id", "created_at"),
        Index("ix_usage_records_status", "status"),
        Index("ix_usage_records_created", "created_at"),  # the latest records, platform-wide
        # the latest request for a deployment (an idle shared adapter: idle_adapters.py)
        Index("ix_usage_records_deployment_created", "deployment_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    key_id: Mapped[str] = mapped_column(String(16), index=True)
    user_id: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    stream: Mapped[bool] = mapped_column(Boolean)
    deployment_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    replica_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    datacenter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    operator_country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    certifications: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    jurisdictions: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24))
    error: Mapped[str] = mapped_column(Text, default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tokens_counted_by: Mapped[str] = mapped_column(String(16), default="engine")
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    energy_estimate_j: Mapped[float | None] = mapped_column(Float, nullable=True)  # at completion
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)  # attributed later
    co2e_g: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reserved_cost: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_energy_j: Mapped[float] = mapped_column(Float, default=0.0)
    ledger_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    server_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # a batch's line
    # Reasoning requests only, written after the request by the language tagger.
    prompt_language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    reasoning_language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    answer_language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    languages_agree: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


ROLLUP_KEY = ("span", "level", "org_id", "starts_at", "project_id", "key_id", "user_id",
              "model", "datacenter_id", "status", "prompt_language", "language_tagged")  # fmt: skip
ROLLUP_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost", "energy_j", "co2e_g",
               "language_consistent")  # fmt: skip


class UsageRollupRow(Base):
    """The sums of the settled usage records created in one hour, day or month with the
    same dimensions (`metering/usage_rollups.py` keeps them in step with the records), at
    two levels: `key` (every dimension) and, for days and months, `org` (no key, user or
    project). Dimensions are never NULL, so the key can be upserted: '' stands for a NULL.
    On PostgreSQL both indexes carry every column: reports read them alone (index-only)."""

    __tablename__ = "usage_rollups"
    __table_args__ = (
        PrimaryKeyConstraint(*ROLLUP_KEY, postgresql_include=list(ROLLUP_SUMS)),
        Index(
            "ix_usage_rollups_span_level_starts",
            "span",
            "level",
            "starts_at",
            postgresql_include=[
                c for c in ROLLUP_KEY + ROLLUP_SUMS if c not in ("span", "level", "starts_at")
            ],
        ),
    )
    span: Mapped[str] = mapped_column(String(8))  # hour, day or month
    level: Mapped[str] = mapped_column(String(8))  # key or org
    org_id: Mapped[str] = mapped_column(String(32))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    project_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    datacenter_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    prompt_language: Mapped[str] = mapped_column(String(8))
    language_tagged: Mapped[bool] = mapped_column(Boolean)  # languages_agree is not NULL
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[float] = mapped_column(Float)
    energy_j: Mapped[float] = mapped_column(Float)  # attributed where known, else the estimate
    co2e_g: Mapped[float] = mapped_column(Float)
    language_consistent: Mapped[int] = mapped_column(BigInteger)  # languages_agree is true


class SovereigntyPolicyRow(Base):
    """Append-only: each change is a new version, so the policy in force at any past
    moment can be found (residency reports check records against it)."""

    __tablename__ = "sovereignty_policies"
    __table_args__ = (Index("ix_sovereignty_policies_scope", "org_id", "project_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )  # None: the organisation's ceiling, set by the operator
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# Files, batches, fine-tuning and leases (`db/jobs.py`), identities, the audit chain, …
# share this Base: importing them here puts them in `Base.metadata` wherever tables are.
from souverain.db import audit as _audit  # noqa: E402, F401
from souverain.db import data_controls as _data_controls  # noqa: E402, F401
from souverain.db import demand as _demand  # noqa: E402, F401
from souverain.db import exports as _exports  # noqa: E402, F401
from souverain.db import identity as _identity  # noqa: E402, F401
from souverain.db import installation as _installation  # noqa: E402, F401
from souverain.db import jobs as _jobs  # noqa: E402, F401
from souverain.db import metering as _metering  # noqa: E402, F401
