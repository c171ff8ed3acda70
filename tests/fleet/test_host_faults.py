"""Faults of one host of the README's three-host fleet, as an operator would meet them.

- The Frankfurt host (certified for fra1) comes back declaring iad1: `souverain node join`
  refuses it with the fix; started by hand all the same (an older node, a bare `ray
  start`), the controller sees that its certificate does not bind it to iad1. It gets no
  replica: a US deployment only that node could hold stays pending with the reason, which
  `souverain nodes list` shows too; the refusal is audited, and EU tenants get 451 (never
  a US answer) until fra1 is back under its own label.
- Its certificate renewed by the README's commands, fra1 serves again.
- The Frankfurt host is SIGKILLed while it streams an answer to a prompt carrying a canary;
  once it has rejoined by the README's command, the canary is nowhere on its disk (node
  directory, HOME, TMPDIR with Ray's temp directory, engine caches), and Ray's 0777 temp
  directory sits inside a directory no other user can enter; the memory-backed scratch
  (the replica's TLS key, its engine's temporary files) holds nothing of a dead process.

The fleet is installed by `tests/fleet/test_hosts.py`'s fixture, once for this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path

import openai
import pytest

from souverain.cluster import ray_node
from souverain.core.schemas.deployments import Deployment, DeploymentCreateRequest
from souverain.core.schemas.fleet import Node
from souverain.node import scratch
from souverain.testing.hosts import Host
from tests.fleet import test_hosts
from tests.fleet.test_hosts import Fleet, diagnosis, eu_back, rejoin, run, until_451, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow, pytest.mark.postgres]

fleet = test_hosts.fleet  # the same installation, made once for this module


def session(fleet: Fleet) -> dict[str, str]:
    return {"SOUVERAIN_URL": fleet.url, "SOUVERAIN_API_KEY": fleet.operator}


def node_at(fleet: Fleet, address: str) -> Node | None:
    with fleet.api() as api:
        alive = [n for n in api.list_nodes() if n.alive and n.address == address]
    return alive[0] if alive else None


def refusal_at(fleet: Fleet, address: str) -> str | None:
    node = node_at(fleet, address)
    return None if node is None else node.refusal


def start_by_hand(fleet: Fleet, host: Host, datacenter: str) -> None:
    """Ray started on `host` with its certified directory but another label, around
    `node join`'s checks (as an older souverain or a bare `ray start` would)."""
    plan = (
        f"ray_node.NodePlan(node_ip={host.address!r}, "
        f"token_file=Path({str(host.home / 'ray_auth_token')!r}), "
        f"node_dir=ray_node.default_node_dir(), datacenter={datacenter!r}, "
        f"tls_dir=Path({str(host.home / f'ray-tls-{host.address}')!r}))"
    )
    run(host, "python - <<'EOF'\nfrom pathlib import Path\n"
        "from souverain.cluster import ray_node\n"
        f"ray_node._ray_start({plan}, ['--address', '{fleet.control.address}:6379'])\nEOF")  # fmt: skip


class TestNodeUnderAnotherLabel:
    def test_fra1_back_as_iad1_receives_no_replica_and_eu_tenants_get_451(
        self, fleet: Fleet
    ) -> None:
        de = fleet.net["de"]
        assert fleet.chat("acme-eu").headers["x-souverain-datacenter"] == "fra1"
        run(de, "souverain node stop")
        stopped = time.monotonic()
        code, said = de.run(
            f"souverain node join --address {fleet.control.address}:6379 --node-ip-address "
            f"{de.address} --datacenter iad1 --token-file ~/ray_auth_token "
            f"--tls-dir ~/ray-tls-{de.address}",
            env=session(fleet),
        )
        assert code == 1, said
        assert "certified for datacenter fra1, not iad1: join with --datacenter fra1" in said
        assert not de.runs("raylet")  # nothing half-started

        start_by_hand(fleet, de, "iad1")
        wait_for(lambda: refusal_at(fleet, de.address) is not None, 60, diagnosis(fleet))
        impostor = node_at(fleet, de.address)
        assert impostor is not None and impostor.datacenter_id == "iad1"
        assert (impostor.refusal or "").startswith(
            "label not certified (declares iad1, certified fra1;"
        ), impostor.refusal
        until_451(fleet, stopped, "fra1 back as iad1")

        with fleet.api() as api:  # a US deployment that fits only on the host certified fra1
            cpus = max(n.resources.get("CPU", 0) for n in api.list_nodes() if n.alive)
            api.create_deployment(DeploymentCreateRequest(
                name="us-wide", model="chat", cpus=cpus, jurisdictions=["US"]))  # fmt: skip
        wait_for(lambda: "label not certified" in us_wide(fleet).status_reason, 60,
                 diagnosis(fleet))  # fmt: skip
        wide = us_wide(fleet)
        assert wide.replica_details == [], wide.replica_details
        assert f"lack {cpus:g} free CPU(s)" in wide.status_reason, wide.status_reason
        with fleet.api() as api:
            api.delete_deployment("us-wide")
            refused = api.audit_events(action="node.refused")["events"]
        assert any(e["target_id"] == impostor.id for e in refused), refused
        assert fleet.chat("acme-us").headers["x-souverain-datacenter"] == "iad1"

        run(de, "souverain node stop")
        back = time.monotonic()
        rejoin(fleet, de, "fra1")
        eu_back(fleet, back, "fra1 rejoined under its own label -> EU answers")


def us_wide(fleet: Fleet) -> Deployment:
    with fleet.api() as api:
        return api.get_deployment("us-wide")


class TestRenewal:
    def test_a_renewed_certificate_is_taken_once_the_node_rejoins(self, fleet: Fleet) -> None:
        """The README's renewal: `node certify --renew` on the head, the directory copied
        again, `node stop` and the same `node join` on the server; EU tenants are served
        from fra1 again, by a node presenting the new certificate."""
        de = fleet.net["de"]
        certified = f"ray-tls-{de.address}"
        before = (fleet.control.home / certified / "node.crt").read_bytes()
        run(fleet.control, f"souverain node certify --node-ip-address {de.address} "
            f"--datacenter fra1 --out ~/{certified} --renew", env=session(fleet))  # fmt: skip
        renewed = (fleet.control.home / certified / "node.crt").read_bytes()
        assert renewed != before
        shutil.rmtree(de.home / certified)  # copied again, as `scp -rp` would
        shutil.copytree(fleet.control.home / certified, de.home / certified)
        run(de, "souverain node stop")
        back = time.monotonic()
        rejoin(fleet, de, "fra1")
        eu_back(fleet, back, "certificate renewed, rejoined -> EU answers")
        assert (de.home / certified / "node.crt").read_bytes() == renewed


class TestHostKilledMidServing:
    def test_no_canary_on_the_hosts_disk_once_it_rejoined(self, fleet: Fleet) -> None:
        de, canary = fleet.net["de"], f"CANARY-{secrets.token_hex(8)}"
        wait_for(lambda: fleet.chat("acme-eu").status_code == 200, 150, diagnosis(fleet))
        streaming = threading.Event()

        def stream() -> None:
            eu = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.keys["acme-eu"],
                               max_retries=0)  # fmt: skip
            try:
                for _chunk in eu.chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": f"Repeat {canary} forever."}],
                    max_tokens=400,
                    stream=True,
                ):
                    streaming.set()
            except openai.APIError:
                pass  # the host died under it

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert streaming.wait(60), "the stream never started"
        assert de.kill() > 0
        reader.join(60)
        killed = time.monotonic()
        rejoin(fleet, de, "fra1")
        eu_back(fleet, killed, "killed mid-stream, rejoined -> EU answers")

        found = [str(p) for root in (de.root, de.tmp) for p in holding(root, canary.encode())]
        assert not found, f"the tenant's canary is on the rejoined host's disk: {found}"
        held = de.scratch.iterdir() if de.scratch.is_dir() else iter(())  # the host's own
        orphans = [e.name for e in held  # the replica's key, engine TMPDIR
                   if not scratch._tag_or_empty(e.name.rsplit(".", 1)[-1])]  # fmt: skip
        assert not orphans, f"memory-backed scratch of dead processes left: {orphans}"
        node_dir = Path(str(de.tmp)) / f"souverain-ray-{os.getuid()}" / "node"
        assert node_dir.parent.is_dir(), list(Path(de.tmp).iterdir())
        for barrier in (node_dir.parent, node_dir):  # Ray's 0777 temp dir is inside these
            assert stat.S_IMODE(barrier.stat().st_mode) == 0o700, barrier  # was 0755
        assert ray_node.ray_temp_dir(node_dir).is_dir()


def holding(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under `root` whose bytes contain `needle`."""
    found = []
    for parent, _dirs, files in os.walk(root):
        for name in files:
            path = Path(parent) / name
            try:
                if not path.is_symlink() and path.is_file() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found
