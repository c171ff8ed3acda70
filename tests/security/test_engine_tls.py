"""TLS between the gateway and engines: the installation's authority, one certificate per
replica, and every way an engine that is not *that* replica is refused before it sees a
secret or a prompt (another replica's certificate, a foreign one, an expired one, plain
HTTP), by the node's own probe (the replica `failed`, with the reason) and by the gateway's
client (nothing sent)."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import EngineCredential, ReplicaSpec, replica_server_name
from souverain.core.ids import new_id
from souverain.core.tls import client_context
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.db.installation import InstallationSecretRow
from souverain.gateway.upstream import Untrusted, Upstream
from souverain.installation import authority
from souverain.node import scratch
from souverain.node.engines.stand_in import StandInLauncher
from souverain.node.supervisor import EngineSupervisor

SECRET = "s3cret-for-this-replica"
BODY = b'{"model": "stand-in", "prompt": "hi", "max_tokens": 2}'
HEADERS = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
async def sessions(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    directory = tmp_path_factory.mktemp("authority")
    engine = create_engine_unpooled(f"sqlite+aiosqlite:///{directory / 'db.sqlite'}")
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(scope="module")
async def trusted(sessions: async_sessionmaker[AsyncSession]) -> authority.Authority:
    return await authority.load_or_create(sessions, b"master-key-of-this-installation")


def spec(replica_id: str, credential: EngineCredential | None) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=replica_id, deployment_id="dep_tls", model_name="stand-in", engine="stand-in",
        artifact_uri=f"file://{__file__}", artifact_sha256=None, secret=SECRET,  # never read
        datacenter_id="local", cpus=0.1, gpus=0, threads=1, context_length=512, tls=credential,
        model_roots=(str(Path(__file__).parent),),
    )  # fmt: skip


def supervise(replica_spec: ReplicaSpec, log_dir: Path) -> EngineSupervisor:
    supervisor = EngineSupervisor(
        replica_spec, StandInLauncher(), host="127.0.0.1", node_id="node-1", log_dir=log_dir
    )
    supervisor.start()
    return supervisor


def settled(supervisor: EngineSupervisor, timeout_s: float = 60) -> str:
    """The first state other than `starting` (its reason for `failed`)."""
    deadline = time.monotonic() + timeout_s
    status = supervisor.status()
    while status.state == "starting":
        left = deadline - time.monotonic()
        assert left > 0, f"still starting ({status.error})"
        status = supervisor.watch(status.version, left)
    return status.state if status.state != "failed" else f"failed: {status.error}"


@dataclass(frozen=True)
class Engine:
    replica_id: str
    url: str

    @property
    def name(self) -> str:
        return replica_server_name(self.replica_id)


@pytest.fixture(scope="module")
def engine(
    trusted: authority.Authority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A stand-in engine process serving HTTPS as one replica."""
    replica_id = new_id("rep")
    credential = authority.issue(trusted, replica_server_name(replica_id))
    supervisor = supervise(spec(replica_id, credential), tmp_path_factory.mktemp("engine"))
    assert settled(supervisor) == "ready"
    yield Engine(replica_id, str(supervisor.status().url))
    supervisor.stop()


class TestAuthority:
    async def test_created_once_and_its_key_sealed_under_the_master_key(
        self, sessions: async_sessionmaker[AsyncSession], trusted: authority.Authority
    ) -> None:
        again = await authority.load_or_create(sessions, b"master-key-of-this-installation")
        assert again.certificate == trusted.certificate
        async with sessions() as session:
            query = select(InstallationSecretRow).where(InstallationSecretRow.name == "authority")
            rows = (await session.execute(query)).scalars().all()
        assert len(rows) == 1 and rows[0].sealed and "PRIVATE KEY" not in rows[0].sealed
        with pytest.raises(authority.AuthorityUnreadable, match="same SOUVERAIN_SECRET_KEY"):
            await authority.load_or_create(sessions, b"another installation's master key")

    def test_a_replica_certificate_names_that_replica_only(
        self, trusted: authority.Authority
    ) -> None:
        from cryptography import x509

        replica_id = new_id("rep")
        credential = authority.issue(trusted, replica_server_name(replica_id))
        certificate = x509.load_pem_x509_certificate(credential.certificate)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == [replica_server_name(replica_id)]
        assert "key" not in repr(credential).replace("key=", "")  # the key is never printed


class TestTheNodeRefusesAnEngineThatIsNotItsReplica:
    """The supervisor's probe checks the engine as the gateway does; a refusal is `failed`
    at once with its reason (what `deployments list` shows), and is not restarted."""

    def test_served_over_https_with_its_key_gone_from_scratch(self, engine: Engine) -> None:
        assert engine.url.startswith("https://")
        (directory,) = scratch.root().glob(f"replica-{engine.replica_id}.*")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert sorted(p.name for p in directory.iterdir()) == []  # key and certificate read, gone
        mounts = Path("/proc/mounts").read_text().split("\n")
        shm = [line.split()[2] for line in mounts if line.split()[1:2] == ["/dev/shm"]]
        if str(scratch.root()).startswith("/dev/shm/"):
            assert set(shm) == {"tmpfs"}
        assert stat.S_IMODE(scratch.root().stat().st_mode) == 0o700

    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("another replica's", "Hostname mismatch"),
            ("expired", "certificate has expired"),
            ("foreign", "unable to get local issuer certificate"),
        ],
    )
    def test_refused_certificates(
        self, trusted: authority.Authority, tmp_path: Path, case: str, expected: str
    ) -> None:
        replica_id = new_id("rep")
        name = replica_server_name(replica_id)
        credential = {
            "another replica's": lambda: authority.issue(
                trusted, replica_server_name(new_id("rep"))
            ),
            "expired": lambda: authority.issue(
                trusted, name, now=datetime.now(UTC) - timedelta(days=30), days=1
            ),
            "foreign": lambda: replace(
                authority.issue(authority.create(), name), authority=trusted.certificate_pem
            ),
        }[case]()
        supervisor = supervise(spec(replica_id, credential), tmp_path)
        try:
            state = settled(supervisor)
        finally:
            supervisor.stop()
        assert state.startswith("failed: the engine's certificate was refused")
        assert expected in state


class TestTheGatewayRefusesAnEngineThatIsNotItsReplica:
    async def test_that_replica_answers(self, engine: Engine, trusted: authority.Authority) -> None:
        upstream = Upstream(timeout_s=10, authority=trusted.certificate_pem)
        url = f"{engine.url}/v1/completions"
        try:
            response = await upstream.post(url, BODY, HEADERS, server_name=engine.name)
            assert response.status == 200
            response.close()
        finally:
            await upstream.close()

    @pytest.mark.parametrize("case", ["another replica's name", "plain http", "foreign authority"])
    async def test_nothing_is_sent_to_an_untrusted_engine(
        self, engine: Engine, trusted: authority.Authority, case: str
    ) -> None:
        url = f"{engine.url}/v1/completions"
        name, anchor = engine.name, trusted.certificate_pem
        if case == "another replica's name":
            name = replica_server_name(new_id("rep"))
        elif case == "plain http":
            url = url.replace("https://", "http://")
        else:
            anchor = authority.create().certificate_pem
        upstream = Upstream(timeout_s=10, authority=anchor)
        try:
            with pytest.raises(Untrusted):
                await upstream.post(url, BODY, HEADERS, server_name=name)
        finally:
            await upstream.close()

    def test_a_direct_caller_without_the_authority_or_the_secret_is_refused(
        self, engine: Engine, trusted: authority.Authority
    ) -> None:
        url = f"{engine.url}/v1/completions"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.post(url, content=BODY, headers=HEADERS)  # the system's roots: not trusted
        with pytest.raises(httpx.TransportError):
            httpx.post(url.replace("https://", "http://"), content=BODY, headers=HEADERS)
        context = client_context(trusted.certificate_pem)
        context.check_hostname = False  # an attacker who knows the authority, not the secret
        answer = httpx.post(url, content=BODY, verify=context)
        assert answer.status_code == 401
