"""A fleet installed by the README's "Running it for real", and nothing else (the fleet and
its hosts: tests/fleet/conftest.py). As a user would notice: an EU-only deployment lands on
the DE host and answers through the control plane's server; a second server process signs
with the installation's one key; the DE host dies and an EU tenant gets 451 with reasons,
never an answer from the US host, until the host rejoins.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from souverain.core.ids import replica_secret
from souverain.core.signing import load_public_key, verify
from tests.fleet.conftest import PORT, QUESTION, Fleet, diagnosis, rejoin, run, wait_for
from tests.fleet.conftest import fleet as fleet  # the name modules beside it import
from tests.security.test_link_capture import LinkCapture, packets

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow, pytest.mark.postgres]


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
    answer = fleet.chat("acme-eu")  # and stays answered, in Frankfurt
    assert answer.headers.get("x-souverain-datacenter") == "fra1", (
        f"{answer.status_code} {answer.text}\n{diagnosis(fleet)()}"
    )


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
