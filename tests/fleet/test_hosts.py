"""A fleet of three hosts installed by the README's "Running it for real", and nothing else.

The hosts are network namespaces (`souverain.testing.hosts`): a control plane in Paris
(server, controller, Ray head; PostgreSQL reached over the bridge), a worker in Frankfurt
(fra1, DE) and one in Ashburn (iad1, US). Each README shell block runs on its host as
written, with only the README's example values replaced by the harness's: the addresses
10.24.0.x, the database URL and the master key; the worker block once more for the US
host with its datacenter's identity. Then, as a user would notice: an EU-only deployment
lands on the DE host and answers through the control plane's server; a second server
process signs with the installation's one key; the DE host dies and an EU tenant gets 451
with reasons, never an answer from the US host, until the host rejoins.
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
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest

from souverain.client.client import SouverainClient
from souverain.core.ids import replica_secret
from souverain.core.roles import Role
from souverain.core.schemas.policies import PolicyDocument
from souverain.core.schemas.tenancy import KeyCreateRequest, OrganisationCreateRequest
from souverain.core.signing import load_public_key, verify
from souverain.testing import hosts
from souverain.testing.hosts import Host, Network, timed
from tests.conftest import POSTGRES_URL, fresh_database_url
from tests.security.test_link_capture import LinkCapture, packets

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow, pytest.mark.postgres]

README = Path(__file__).parents[2] / "README.md"
SECTION = "## Running it for real"
PORT = 8000
US_HOST = {  # the worker block again, for the US host: its datacenter's identity
    "fra1": "iad1", '"Frankfurt 1"': '"Ashburn 1"', "--country DE": "--country US",
    "--operator-country DE": "--operator-country US", "--carbon-intensity 380":
    "--carbon-intensity 20",
}  # fmt: skip
QUESTION = [{"role": "user", "content": "Say hello."}]


def readme_blocks() -> list[str]:
    """The section's bash blocks, in order: control plane, a worker declared and certified
    (on the head), the worker's join (on the worker), models, file stores."""
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
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # organisation -> its owner's key

    @property
    def control(self) -> Host:
        return self.net["cp"]

    def api(self, url: str | None = None) -> SouverainClient:
        return SouverainClient(url or self.url, self.operator, timeout_s=60)

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


def install(net: Network, database_url: str, timings: dict[str, float]) -> Fleet:
    """The README's blocks on their hosts; returns the fleet once the EU model answers."""
    control, de, us = net["cp"], net["de"], net["us"]
    first, declare, worker, models, stores = readme_blocks()
    secret_key = secrets.token_urlsafe(36)
    with timed("control plane (init, server, head, controller)", timings):
        run(control, substituted(first, {
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
    fleet = Fleet(net, url, operator, secret_key, database_url, timings)
    with timed("models registered, EU deployment ready", timings):
        run(control, models + stores, env=session)
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
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if (why := hosts.available()) is not None:
        pytest.skip(f"multi-host harness: {why}")
    if not POSTGRES_URL:
        pytest.skip(
            "multi-host harness: production runs on PostgreSQL (set SOUVERAIN_TEST_POSTGRES_URL)"
        )
    root = tmp_path_factory.mktemp("hosts")
    url = asyncio.run(fresh_database_url("postgres", root, database="souverain_hosts"))
    started = time.monotonic()
    timings: dict[str, float] = {}
    with Network(["cp", "de", "us"], root) as net:
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


class TestReadmeFleet:
    def test_each_tenant_is_served_by_the_host_its_policy_allows(self, fleet: Fleet) -> None:
        with fleet.api() as api:
            nodes = {n.address: n.datacenter_id for n in api.list_nodes() if n.alive}
            placed = {d: api.get_deployment(d).replica_details[0] for d in ("eu-chat", "us-chat")}
        assert nodes == {fleet.control.address: None, fleet.net["de"].address: "fra1",
                         fleet.net["us"].address: "iad1"}  # fmt: skip
        assert placed["eu-chat"].datacenter_id == "fra1"
        assert placed["us-chat"].datacenter_id == "iad1"
        eu = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.keys["acme-eu"], max_retries=0)
        answer = eu.chat.completions.with_raw_response.create(
            model="chat",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=8,
        )
        assert answer.headers["x-souverain-datacenter"] == "fra1"
        assert answer.parse().choices[0].message.content
        assert fleet.chat("acme-us").headers["x-souverain-datacenter"] == "iad1"

    def test_a_second_server_signs_with_the_installations_one_key(self, fleet: Fleet) -> None:
        second = f"http://{fleet.control.address}:{PORT + 1}"
        run(fleet.control, f"souverain server --host {fleet.control.address} --port {PORT + 1} &\n"
            f"until curl -sf {second}/healthz > /dev/null; do sleep 0.5; done",
            env={"HOME": str(fleet.control.root / "second-home"),  # nothing local shared
                 "SOUVERAIN_DATABASE_URL": fleet.database_url,
                 "SOUVERAIN_SECRET_KEY": fleet.secret_key})  # fmt: skip
        assert fleet.chat("acme-eu").status_code == 200  # something to report
        with fleet.api() as first:
            public = load_public_key(first.signing_key()["public_key_pem"])
        until = time.time()
        for url in (fleet.url, second):
            with fleet.api(url) as api:
                assert load_public_key(api.signing_key()["public_key_pem"]) == public
                signed = api.residency_report(
                    "acme-eu", since=_utc(until - 3600), until=_utc(until + 60)
                )
            assert verify(signed, public), url
            by_datacenter = {row["datacenter"] for row in signed["document"]["by_datacenter"]}
            assert by_datacenter == {"fra1"} and not signed["document"]["violations"]


class TestLinksBetweenHosts:
    def test_nothing_of_a_tenant_and_no_secret_crosses_the_worker_hosts_link_in_clear(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Everything the Frankfurt host sends and receives (the gateway's requests to its
        engine, Ray's traffic with the head and the other worker) during a chat and a
        stream whose prompts carry a canary: neither the canary, nor `Bearer`, nor the
        cluster's token, nor the replica's secret is in the captured bytes. The database
        link (the harness's relay) is the operator's to secure and is left out."""
        if shutil.which("tcpdump") is None:
            pytest.skip("needs tcpdump (make tcpdump, as root)")
        de, canary = fleet.net["de"], f"CANARY-{secrets.token_hex(8)}"
        with fleet.api() as api:
            replica = api.get_deployment("eu-chat").replica_details[0]
        secret = replica_secret(fleet.secret_key.encode(), replica.id)
        token = (fleet.control.home / ".souverain-node" / "node" / "ray" / "auth_token").read_text()
        capture = LinkCapture(0, tmp_path / "de.pcap", interface=de.link, expression="tcp")
        try:
            eu = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.keys["acme-eu"],
                               max_retries=0)  # fmt: skip
            said = [{"role": "user", "content": f"Repeat {canary}"}]
            answer = eu.chat.completions.with_raw_response.create(
                model="chat",
                messages=said,
                max_tokens=8,  # type: ignore[arg-type]
            )
            assert answer.headers["x-souverain-datacenter"] == "fra1"
            streamed = eu.chat.completions.create(
                model="chat",
                messages=said,
                max_tokens=8,
                stream=True,  # type: ignore[arg-type]
            )
            assert [chunk for chunk in streamed]
        finally:
            pcap = capture.stop()
        seen = packets(pcap)
        print(f"[hosts] fra1's link: {len(seen)} packets, {len(pcap)} bytes")
        assert len(seen) > 20  # the requests did cross it
        for what, value in (("canary", canary), ("Bearer", "Bearer"),
                            ("the cluster's token", token.strip()), ("the replica's secret", secret)):  # fmt: skip
            assert value.encode() not in pcap, f"{what} crossed fra1's link in clear"

    def test_each_hosts_listeners_and_its_engine_refuses_a_direct_caller(
        self, fleet: Fleet
    ) -> None:
        """What listens on each host (printed: the list the firewall section of the README
        is checked against), and the Frankfurt engine, called straight from the US host
        around the gateway: without the replica's secret it refuses, in plain HTTP it
        does not answer at all."""
        listening: dict[str, list[tuple[str, str]]] = {}
        for host in fleet.net.hosts.values():
            listing = run(host, "ss -ltnpH")
            listening[host.name] = sorted(
                (fields[3], (re.findall(r'"([^"]+)"', fields[-1]) or ["?"])[0])
                for fields in (line.split() for line in listing.splitlines() if line.strip())
            )
            shown = ", ".join(f"{where} {what}" for where, what in listening[host.name])
            print(f"[hosts] {host.name} listens on: {shown}")
        engines = [where for where, what in listening["de"] if what == "llama-server"]
        assert engines, listening["de"]
        port = engines[0].rpartition(":")[2]
        de, us = fleet.net["de"].address, fleet.net["us"]
        assert all(not where.startswith(("0.0.0.0:", "*:", "[::]:")) for where in engines)
        code = run(us, f"curl -sk -o /dev/null -w '%{{http_code}}' https://{de}:{port}/v1/models")
        assert code.strip() == "401", code
        plain = run(
            us, f"curl -s -o /dev/null -w '%{{http_code}}' http://{de}:{port}/v1/models || true"
        )
        assert plain.strip() in ("000", "400"), plain  # TLS only: no answer in clear


def until_451(fleet: Fleet, since: float, label: str) -> str:
    """EU requests until one is refused with 451: each refused (502/503/504 while the
    gateway finds the replica gone), none answered from anywhere. The 451's reasons."""
    statuses: list[int] = []
    while True:
        answer = fleet.chat("acme-eu")
        statuses.append(answer.status_code)
        assert answer.status_code in (451, 502, 503, 504), answer.text
        if answer.status_code == 451:
            break
        assert time.monotonic() - since < 120, f"no 451 yet: {statuses[-5:]}"
        time.sleep(0.25)
    fleet.timings[f"{label} -> 451"] = time.monotonic() - since
    print(f"[hosts] EU answers, {label}: {statuses}")
    reasons: str = answer.json()["error"]["message"]
    assert "iad1: outside EU (US)" in reasons, reasons
    served = fleet.chat("acme-us")  # the US tenant is still served, in the US
    assert served.headers["x-souverain-datacenter"] == "iad1"
    return reasons


def eu_back(fleet: Fleet, since: float, label: str) -> None:
    wait_for(lambda: fleet.chat("acme-eu").status_code == 200, 150, diagnosis(fleet))
    fleet.timings[label] = time.monotonic() - since
    assert fleet.chat("acme-eu").headers["x-souverain-datacenter"] == "fra1"


def rejoin(fleet: Fleet, host: Host, datacenter: str) -> None:
    """`souverain node stop` (what is left of the node, if anything) and `node join`."""
    token = host.home / "ray_auth_token"
    run(host, f"souverain node stop\nsouverain node join --address "
        f"{fleet.control.address}:6379 --node-ip-address {host.address} "
        f"--datacenter {datacenter} --token-file {token} "
        f"--tls-dir {host.home / f'ray-tls-{host.address}'}",
        env={"SOUVERAIN_URL": fleet.url, "SOUVERAIN_API_KEY": fleet.operator})  # fmt: skip


class TestHostDies:
    def test_eu_requests_get_451_never_a_us_answer_until_the_host_rejoins(
        self, fleet: Fleet
    ) -> None:
        de = fleet.net["de"]
        assert fleet.chat("acme-eu").status_code == 200
        killed = time.monotonic()
        de.kill()
        until_451(fleet, killed, "host killed")
        rejoined = time.monotonic()
        rejoin(fleet, de, "fra1")
        eu_back(fleet, rejoined, "rejoin -> EU answers again")


class TestHostCutOff:
    def test_eu_requests_get_451_while_the_host_is_cut_off(self, fleet: Fleet) -> None:
        de = fleet.net["de"]
        assert fleet.chat("acme-eu").status_code == 200
        cut = time.monotonic()
        de.cut_off()
        until_451(fleet, cut, "host cut off")
        back = time.monotonic()
        de.reconnect()
        rejoined: list[float] = []

        def answered() -> bool:
            """Back by itself when Ray had not yet given the node up; otherwise its raylet
            has stopped (Ray declared it dead) and the operator rejoins it."""
            if fleet.chat("acme-eu").status_code == 200:
                return True
            if not rejoined and not de.runs("raylet"):
                rejoined.append(time.monotonic() - back)
                rejoin(fleet, de, "fra1")
            return False

        wait_for(answered, 150, diagnosis(fleet))
        how = f"rejoined after {rejoined[0]:.1f}s" if rejoined else "by itself"
        fleet.timings[f"link back -> EU answers again ({how})"] = time.monotonic() - back
        assert fleet.chat("acme-eu").headers["x-souverain-datacenter"] == "fra1"


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
