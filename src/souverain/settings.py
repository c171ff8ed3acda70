"""All configuration, in one pydantic-settings class. `SOUVERAIN_` prefix.

Nothing happens at import: `Settings()` reads the environment when called, and the data
directory is created by whoever starts a process (`ensure_data_dir`), not here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "souverain"}


def default_data_dir() -> Path:
    return Path(user_data_dir("souverain", appauthor=False))


def default_config_file() -> Path:
    return Path(user_config_dir("souverain", appauthor=False)) / "config.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUVERAIN_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where SQLite, keys and logs live."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: SQLite in the data directory. "
        "postgresql://… is accepted and driven through asyncpg.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients use, if not http://host:port."
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description="Master key from which per-replica engine secrets are derived. Every "
        "server and controller process of one installation must share it. Default: a "
        "random key kept in <data_dir>/secret.key (mode 0600).",
    )
    dev_mode: bool = Field(
        default=False, description="Allows placeholder secrets. Never in production."
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="A file holding the installation's Ed25519 key that signs reports and audit "
        "seals (an HSM-backed mount), given to every server and controller. Default: the key "
        "made by `souverain init` (or the first start), sealed with the master key in the "
        "database. A process whose key is not the installation's refuses to start.",
    )

    ray_address: str | None = Field(
        default=None,
        description="The Ray head's host:port (its private address, as `souverain node head` "
        "printed it; 'auto' is refused). None: `souverain up`'s embedded head.",
    )
    ray_token_file: Path | None = Field(
        default=None,
        description="The Ray cluster's token file (0600), made by `souverain node head`. "
        "Default: the one in this host's node directory.",
    )
    ray_tls_dir: Path | None = Field(
        default=None,
        description="This host's Ray TLS directory (the cluster authority's certificate and "
        "this host's certificate and key for its private address, files 0600), made by "
        "`souverain node head` on the head and `souverain node certify` for other hosts. "
        "Default: the one in this host's node directory.",
    )
    local_datacenter: str = Field(
        default="local", description="Datacenter id of the embedded Ray head."
    )
    local_country: str = Field(default="FR", description="ISO country of the local datacenter.")
    local_carbon_intensity: float | None = Field(
        default=None,
        ge=0,
        description="gCO2e/kWh of the local grid (default: the country's average).",
    )
    embedded_ray_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs the embedded head offers. Default: this machine's, plus 3, so that "
        "fine-tuning jobs and their models fit beside the built-in models.",
    )

    deploy_builtin_model: bool = Field(
        default=True, description="souverain up deploys SmolLM2 on first start."
    )
    engine_threads: int = Field(
        default=2, ge=1, le=256, description="llama.cpp threads per replica."
    )
    engine_context: int = Field(
        default=4096, ge=256, le=1_048_576, description="llama.cpp context length."
    )
    engine_bind_host: str | None = Field(
        default=None,
        description="Address engines bind to. Default: the Ray node's private address.",
    )

    key_cache_ttl_s: float = Field(
        default=2.0, ge=0, le=5, description="Revocation is seen within this."
    )
    console_idle_s: int = Field(
        default=900,
        ge=60,
        le=86400,
        description="A console session without a request for this long is signed out.",
    )
    console_max_age_s: int = Field(
        default=8 * 3600,
        ge=300,
        le=7 * 86400,
        description="A console session ends this long after sign-in, however active.",
    )
    sso_refresh_s: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="How often a console session opened by single sign-on re-reads the "
        "person's groups from their identity provider (removal from a group demotes them then).",
    )
    console_secure_cookie: bool | None = Field(
        default=None,
        description="Mark the console cookie Secure. Default: when the request came over "
        "HTTPS, or public_url is https://. Set true behind a TLS-terminating proxy.",
    )
    replica_refresh_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="How often a server asks whether routes changed (one cheap query); an "
        "engine that exits is out of every server's routes within about this long.",
    )
    up_ready_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="How long `souverain up` waits for the built-in model to answer.",
    )
    reconcile_interval_s: float = Field(default=1.0, gt=0, le=60)
    controller_lease_s: float = Field(default=15.0, gt=1, le=600)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    rate_limit_storage: str = Field(
        default="memory://",
        description="Where rate-limit counters live: memory:// (one process) or "
        "redis://host:6379 (shared by every server process).",
    )
    default_key_rpm: int | None = Field(
        default=None, ge=1, description="Requests/min per key unless set."
    )
    default_key_tpm: int | None = Field(
        default=None, ge=1, description="Tokens/min per key unless set."
    )
    metrics_bind: str | None = Field(
        default=None,
        description="host:port for a separate, credential-free Prometheus endpoint on a private "
        "address. /metrics on the API always exists and needs an operator key.",
    )
    energy_interval_s: float = Field(
        default=30.0, gt=0, le=3600, description="Energy attribution period."
    )
    energy_settle_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long an energy interval waits after its last reading for the usage "
        "records settled before it to be written (the usage journals' lag).",
    )
    energy_watts_per_core: float = Field(
        default=10.0, gt=0, le=1000, description="For the CPU-time estimate."
    )
    energy_prompt_weight: float = Field(
        default=1.0, ge=0, description="Attribution weight of a prompt token."
    )
    energy_completion_weight: float = Field(
        default=3.0, ge=0, description="… of a completion token."
    )
    energy_j_per_token_prior: float = Field(
        default=0.3,
        ge=0,
        description="J per weighted token assumed before a replica's first measured interval.",
    )

    audit_window_s: float = Field(
        default=60.0, gt=0, le=3600, description="Aggregation window of flood-prone audit events."
    )
    audit_seal_interval_s: float = Field(
        default=300.0, gt=0, description="How often the controller seals the audit chain."
    )
    audit_retention_days: int = Field(
        default=400, ge=180, le=36500, description="Audit events are kept at least this long."
    )

    queue_per_org: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests one organisation may have waiting "
        "for busy replicas, per server process (429 beyond).",
    )
    queue_total: int = Field(default=1024, ge=1, le=1_000_000)
    queue_wait_s: float = Field(
        default=120.0, gt=0, le=3600, description="Longest wait for a replica slot (then 429)."
    )
    demand_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=10,
        description="How often a server tells the controller its outstanding requests per "
        "deployment (the autoscaler's load); at once when a request waits for a deployment "
        "scaled to zero.",
    )
    wake_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Longest a request waits for a deployment scaled to zero to start a "
        "replica (then 503 with the reason).",
    )
    queue_batch_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of a replica's slots batch lines may hold while live requests "
        "are present (never the last slot): live traffic finds a slot at once. Unset: by "
        "replica, none on a replica without GPUs (every line decoded beside a live request "
        "slows a CPU engine), 0.25 on one with GPUs. Set: that share on every replica.",
    )
    queue_batch_max_wait_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="A batch line that has waited this long for a replica may take one slot "
        "beside live traffic (at most one such start per replica per this time, never the "
        "last free slot of an engine of several), so that live requests following each "
        "other never stall a batch for ever. Set: below SOUVERAIN_QUEUE_WAIT_S; 0: never "
        "(with SOUVERAIN_QUEUE_BATCH_SHARE=0, no batch line runs beside live traffic). "
        "Unset: 30 s, or half SOUVERAIN_QUEUE_WAIT_S if that is shorter.",
    )
    queue_live_s: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description="Live traffic counts as present on a replica this long after a live "
        "request ended (batch lines keep the slot free for the next one).",
    )
    queue_neighbour_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="An organisation that used a replica this recently finds one slot in "
        "eight left free by another organisation's burst.",
    )
    embeddings_max_inputs: int = Field(default=256, ge=1, le=2048)
    embeddings_max_bytes: int = Field(
        default=131_072,
        ge=1024,
        le=8_388_608,
        description="UTF-8 bytes of all inputs of one "
        "embeddings request: bounds the engine time a single request may take.",
    )
    engine_failures_per_key: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Requests of one key that may break an engine within 10 minutes before "
        "the key is paused (429) for the rest of that window.",
    )
    file_stores: dict[str, str] = Field(
        default_factory=dict,
        description='Where each datacenter keeps files: {"par1": "s3://bucket/prefix?endpoint=…", '
        '"fra1": "file:///srv/files"}. Default: the local datacenter, under <data_dir>/files.',
    )
    batch_lease_s: float = Field(
        default=30.0,
        ge=2,
        le=3600,
        description="A batch runner's lease; another server "
        "takes a batch over this long after its runner died.",
    )
    batch_concurrency: int = Field(
        default=16, ge=1, le=4096, description="Lines of one batch in flight at once."
    )
    batch_at_once: int = Field(
        default=8, ge=1, le=256, description="Batches one server process runs at once."
    )
    batch_db_connections: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Database connections one server process's batch work holds at most "
        "(a pool of its own): a batch never takes the connections live requests wait on.",
    )
    batch_per_org: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Batches of one organisation running at once, across every server: "
        "another tenant's batch starts while a long one runs.",
    )
    files_max_bytes: int = Field(default=512 * 2**20, ge=1024, le=2**40)
    files_quota_bytes: int = Field(
        default=10 * 2**30,
        ge=0,
        description="Bytes an organisation may store (operators can "
        "set another quota per organisation).",
    )
    finetune_max_steps: int = Field(
        default=20_000, ge=1, le=10_000_000, description="Training steps one job may ask for."
    )
    finetune_max_epochs: int = Field(default=50, ge=1, le=1000)
    finetune_max_seq_len: int = Field(
        default=4096, ge=64, le=131_072, description="Tokens per training sample, at most."
    )
    finetune_max_dataset_bytes: int = Field(
        default=256 * 2**20, ge=1024, le=2**40, description="Training + validation data per job."
    )
    finetune_max_samples: int = Field(default=1_000_000, ge=1, le=10**9)
    finetune_max_active_jobs: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description="Fine-tuning jobs an organisation may have "
        "not ended (queued, running, paused) at once; more get 429.",
    )
    finetune_cpus: float = Field(
        default=1.0,
        gt=0,
        le=1024,
        description="CPUs a fine-tuning job asks for on its node, and the threads its "
        "worker computes on (at least one; asynchronous GRPO on one CPU takes two).",
    )
    finetune_cpu_hours_per_job: float = Field(
        default=8.0,
        gt=0,
        le=100_000,
        description="CPU-hours reserved against the organisation's training budget at a "
        "time: when a job starts, and again each time it has used half of what it holds; it "
        "pauses when the budget has no room. What it used is settled at the end.",
    )
    key_mint_per_minute: int = Field(
        default=10, ge=1, le=10_000, description="API keys one user may create per minute."
    )
    model_roots: list[Path] = Field(
        default_factory=list,
        description="Directories operators may register file:// models from (checked again "
        "on every node after resolving symlinks). Default: <data_dir>/models.",
    )

    log_level: str = "INFO"

    @field_validator("secret_key")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        dev = os.environ.get("SOUVERAIN_DEV_MODE", "").lower() in {"1", "true", "yes"}
        if not dev and (raw.lower() in _PLACEHOLDER_SECRETS or len(raw) < 32):
            raise ValueError("secret_key must be at least 32 characters and not a placeholder")
        return value

    @model_validator(mode="after")
    def _batch_ages_before_the_queue_gives_up(self) -> Settings:
        """An operator's queue_batch_max_wait_s must be below queue_wait_s; unset, it follows
        a shorter queue_wait_s, so that a server whose queue waits 30 s or less still starts."""
        if "queue_batch_max_wait_s" not in self.model_fields_set:
            self.queue_batch_max_wait_s = min(30.0, self.queue_wait_s / 2)
        elif self.queue_batch_max_wait_s >= self.queue_wait_s:
            raise ValueError(
                "queue_batch_max_wait_s must be below queue_wait_s: a batch line that waited "
                "that long would be refused before it could take a slot"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return normalise_database_url(
            self.database_url or f"sqlite:///{self.data_dir / 'souverain.db'}"
        )

    @property
    def file_stores_or_default(self) -> dict[str, str]:
        default = {
            self.local_datacenter: f"file://{self.data_dir / 'files' / self.local_datacenter}"
        }
        return self.file_stores or default

    @property
    def model_roots_or_default(self) -> list[Path]:
        return self.model_roots or [self.data_dir / "models"]

    @property
    def legacy_signing_key(self) -> Path:
        """Where souverain kept a server's own signing key before the installation's one:
        the first start after an upgrade adopts it."""
        return self.data_dir / "signing.key"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::"} else self.host
        return f"http://{host}:{self.port}"


def normalise_database_url(url: str) -> str:
    """Pick the async driver for a plain URL: sqlite -> aiosqlite, postgresql -> asyncpg."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def ensure_data_dir(settings: Settings) -> Path:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return settings.data_dir


def load_master_key(settings: Settings) -> bytes:
    """The installation's master key: from settings, else from (or into) the data dir."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = ensure_data_dir(settings) / "secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
