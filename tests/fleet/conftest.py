"""A fleet of hosts installed by the README's "Running it for real", and nothing else: the
fixture and helpers each module of this package starts its own fleet with.

The hosts are network namespaces (`souverain.testing.hosts`): a control plane in Paris
(server, controller, Ray head; PostgreSQL reached over the bridge), a worker in Frankfurt
(fra1, DE), one in Ashburn (iad1, US), and a file store host running a real S3 server
(moto's, in HTTPS with a certificate of its own authority) that holds one bucket per
datacenter. Each README shell block runs on its host as written, with only the README's
example values replaced by the harness's: the addresses 10.24.0.x, the store endpoints,
the database URL and the master key; the worker block once more for the US host with its
datacenter's identity. Each host's account has the store's credentials and authority in
~/.aws, as the README asks of an operator.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import httpx
import pytest

from souverain.client.client import SouverainClient
from souverain.cluster import ray_tls
from souverain.core.roles import Role
from souverain.core.schemas.policies import PolicyDocument
from souverain.core.schemas.tenancy import KeyCreateRequest, OrganisationCreateRequest
from souverain.testing import hosts
from souverain.testing.hosts import Host, Network, timed
from tests.conftest import POSTGRES_URL, fresh_database_url

README = Path(__file__).parents[2] / "README.md"
SECTION = "## Running it for real"
PORT = 8000
US_HOST = {  # the worker block again, for the US host: its datacenter's identity
    "fra1": "iad1", '"Frankfurt 1"': '"Ashburn 1"', "--country DE": "--country US",
    "--operator-country DE": "--operator-country US", "--carbon-intensity 380":
    "--carbon-intensity 20",
}  # fmt: skip
QUESTION = [{"role": "user", "content": "Say hello."}]
STORE_PORT = 9443
BUCKETS = ("souverain-par1", "souverain-fra1")
STORE_KEY = ("AKIASOUVERAINHOSTS01", "store-secret-" + "x" * 27)  # moto takes any pair


def readme_blocks() -> list[str]:
    """The section's bash blocks, in order: file stores, control plane, a worker declared
    and certified (on the head), the worker's join (on the worker), models."""
    text = README.read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def substituted(block: str, values: dict[str, str]) -> str:
    for example, value in values.items():
        assert example in block, f"the README's block no longer shows {example!r}"
        block = block.replace(example, value)
    return block


@dataclass
class Fleet:
    net: Network
    url: str
    operator: str
    secret_key: str
    database_url: str
    store: str  # the S3 server's endpoint
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # organisation -> its owner's key

    @property
    def control(self) -> Host:
        return self.net["cp"]

    def api(self, url: str | None = None, key: str | None = None) -> SouverainClient:
        return SouverainClient(url or self.url, key or self.operator, timeout_s=60)

    def chat(self, org: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.keys[org]}"},
            json={"model": "chat", "messages": QUESTION, "max_tokens": 8},
            timeout=60,
        )


def run(host: Host, script: str, env: dict[str, str] | None = None) -> str:
    code, output = host.run(script, env=env)
    assert code == 0, f"on {host.name}:\n{script}\n---\n{output}"
    return output


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s:.0f}s: {what if isinstance(what, str) else what()}"
            )
        time.sleep(0.5)


def rejoin(fleet: Fleet, host: Host, datacenter: str) -> None:
    """`souverain node stop` (what is left of the node, if anything) and `node join`."""
    token = host.home / "ray_auth_token"
    run(host, f"souverain node stop\nsouverain node join --address "
        f"{fleet.control.address}:6379 --node-ip-address {host.address} "
        f"--datacenter {datacenter} --token-file {token} "
        f"--tls-dir {host.home / f'ray-tls-{host.address}'}",
        env={"SOUVERAIN_URL": fleet.url, "SOUVERAIN_API_KEY": fleet.operator})  # fmt: skip


def start_store(host: Host) -> tuple[str, Path]:
    """moto's S3 server on `host`, in HTTPS with a certificate for the host's address from
    an authority of its own; its buckets made. (endpoint, the authority's certificate)"""
    tls = host.root / "store-tls"
    ray_tls.ensure_head(tls, host.address)  # an authority and a certificate for the address
    run(host, f"python -m moto.server -H {host.address} -p {STORE_PORT} "
        f"--ssl-cert {tls / 'node.crt'} --ssl-key {tls / 'node.key'} > store.log 2>&1 &")  # fmt: skip
    host.logs.append(host.home / "store.log")
    endpoint, authority = f"https://{host.address}:{STORE_PORT}", tls / "ca.crt"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-3", verify=str(authority),
                      aws_access_key_id=STORE_KEY[0], aws_secret_access_key=STORE_KEY[1])  # fmt: skip

    def created() -> bool:
        try:
            for bucket in BUCKETS:
                location = {"LocationConstraint": "eu-west-3"}
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)
        except Exception:  # not listening yet
            return False
        return True

    wait_for(created, 60, lambda: (host.home / "store.log").read_text(errors="replace"))
    return endpoint, authority


def store_account(host: Host, authority: Path) -> None:
    """What the README asks of each host that reaches a store: its credentials and the
    authority that signed its certificate, in the account's ~/.aws (0600)."""
    aws = host.home / ".aws"
    aws.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(authority, aws / "store-ca.crt")
    files = {
        "credentials": f"[default]\naws_access_key_id = {STORE_KEY[0]}\n"
        f"aws_secret_access_key = {STORE_KEY[1]}\n",
        "config": f"[default]\nregion = eu-west-3\nca_bundle = {aws / 'store-ca.crt'}\n",
    }
    for name, text in files.items():
        (aws / name).write_text(text)
    for path in aws.iterdir():
        path.chmod(0o600)


def install(net: Network, database_url: str, timings: dict[str, float]) -> Fleet:
    """The README's blocks on their hosts; returns the fleet once the EU model answers."""
    control, de, us = net["cp"], net["de"], net["us"]
    stores, first, declare, worker, models = readme_blocks()
    secret_key = secrets.token_urlsafe(36)
    with timed("file store (S3 server in HTTPS, buckets)", timings):
        store, authority = start_store(net["s3"])
        for host in (control, de, us):
            store_account(host, authority)
    with timed("control plane (init, server, head, controller)", timings):
        run(control, substituted(stores, {
            "https://s3.par1.example": store, "https://s3.fra1.example": store,
        }) + substituted(first, {
            "10.24.0.1": control.address, "postgresql://souverain@db/souverain": database_url,
            "SOUVERAIN_SECRET_KEY=…": f"SOUVERAIN_SECRET_KEY={secret_key}",
        }))  # fmt: skip
    operator = (control.home / "operator.key").read_text().strip()
    url = f"http://{control.address}:{PORT}"
    token = control.home / ".souverain-node" / "node" / "ray" / "auth_token"
    session = {"SOUVERAIN_URL": url, "SOUVERAIN_API_KEY": operator}

    def join(host: Host, values: dict[str, str]) -> str:
        values = {"10.24.0.1": control.address, "10.24.0.2": host.address} | values
        declaring = {k: v for k, v in values.items() if k != "10.24.0.1"}
        run(control, substituted(declare, declaring), env=session)  # on the head
        copy = host.home / "ray_auth_token"  # copied to each host, mode 0600
        shutil.copyfile(token, copy)
        copy.chmod(0o600)
        certified = f"ray-tls-{host.address}"  # copied as `scp -rp` would: 0700, files 0600
        shutil.copytree(control.home / certified, host.home / certified)
        joining = {k: v for k, v in values.items() if k in worker}  # addresses, datacenter
        return run(host, substituted(worker, joining), env=session)

    joined = "two workers joined (at once, as two operators would)"
    with timed(joined, timings), ThreadPoolExecutor(2) as pool:
        list(pool.map(join, (de, us), ({}, US_HOST)))
    fleet = Fleet(net, url, operator, secret_key, database_url, store, timings)
    with timed("models registered, EU deployment ready", timings):
        run(control, models, env=session)
        run(control, "souverain deployments create us-chat --model chat --jurisdiction US",
            env=session)  # fmt: skip
        wait_for(lambda: ready(fleet, "eu-chat") and ready(fleet, "us-chat"), 150, diagnosis(fleet))
    return fleet


def diagnosis(fleet: Fleet) -> Callable[[], str]:
    """What a failed wait shows: each deployment's state and reason, each host's last lines."""

    def show() -> str:
        with fleet.api() as api:
            lines = [f"{d.name}: {d.status} {d.status_reason}" for d in api.list_deployments()]
        for host in fleet.net.hosts.values():
            for log in host.logs:
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    lines += [f"--- {host.name} {log.name}", *tail]
        return "\n".join(lines)

    return show


def ready(fleet: Fleet, deployment: str) -> bool:
    with fleet.api() as api:
        return api.get_deployment(deployment).ready_replicas == 1


def tenant(fleet: Fleet, org: str, jurisdictions: list[str]) -> None:
    """An organisation whose ceiling allows only `jurisdictions`, and its owner's key."""
    with fleet.api() as api:
        api.create_org(OrganisationCreateRequest(name=org, owner=f"{org}-owner"))
        api.set_policy(org, PolicyDocument(jurisdictions=jurisdictions))
        created = api.create_key(KeyCreateRequest(org=org, user=f"{org}-owner", role=Role.OWNER))
    fleet.keys[org] = created.key


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    """A fleet of its own for each module (its tests may kill and cut off hosts)."""
    if (why := hosts.available()) is not None:
        pytest.skip(f"multi-host harness: {why}")
    if not POSTGRES_URL:
        pytest.skip(
            "multi-host harness: production runs on PostgreSQL (set SOUVERAIN_TEST_POSTGRES_URL)"
        )
    root = tmp_path_factory.mktemp("hosts")
    database = f"souverain_{request.module.__name__.rpartition('.')[2]}"
    url = asyncio.run(fresh_database_url("postgres", root, database=database))
    started = time.monotonic()
    timings: dict[str, float] = {}
    with Network(["cp", "de", "us", "s3"], root) as net:
        parts = urlsplit(url)
        port = net.relay((parts.hostname or "127.0.0.1", parts.port or 5432))
        user = parts.netloc.rpartition("@")[0]  # the hosts reach it through the relay
        netloc = f"{user}@" * bool(user) + f"{net.bridge_address}:{port}"
        fleet = install(net, urlunsplit(parts._replace(netloc=netloc)), timings)
        tenant(fleet, "acme-eu", ["EU"])
        tenant(fleet, "acme-us", ["US"])
        timings["harness up"] = time.monotonic() - started
        try:
            yield fleet
        finally:
            timings["harness total"] = time.monotonic() - started
            for label, seconds in timings.items():
                print(f"[hosts] {label}: {seconds:.1f}s")
