"""The audit log as a tenant reads it says nothing about other tenants: its events are
numbered within the organisation without gaps, however busy the others are, and carry no
link to the previous event of the platform's global chain."""

from __future__ import annotations

from souverain.core.roles import Role
from tests.conftest import Platform


async def test_a_tenants_events_are_numbered_without_gaps(platform: Platform) -> None:
    a = await platform.factory.tenant(roles={"a": Role.OWNER})
    b = await platform.factory.tenant(roles={"b": Role.OWNER})
    key_a = (await platform.factory.member_key(a, "a", Role.OWNER)).key
    key_b = (await platform.factory.member_key(b, "b", Role.OWNER)).key
    async with platform.client(key_a) as client_a, platform.client(key_b) as client_b:
        for i in range(4):  # interleaved changes: b's events fall between a's in the chain
            assert (await client_a.post(f"/api/orgs/{a.org_name}/projects",
                                        json={"name": f"pa{i}"})).status_code == 201  # fmt: skip
            for j in range(3):
                assert (await client_b.post(f"/api/orgs/{b.org_name}/projects",
                                            json={"name": f"pb{i}-{j}"})).status_code == 201  # fmt: skip
        events = (await client_a.get("/api/audit")).json()["events"]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert len(events) >= 4 and all("prev_hash" not in e for e in events)
        assert {e["org_id"] for e in events} == {a.org_id}
        page = (await client_a.get("/api/audit", params={"after_seq": seqs[1], "limit": 2})).json()
        assert [e["seq"] for e in page["events"]] == seqs[2:4]
        assert page["next_after_seq"] == seqs[3]
    async with platform.client(await platform.operator_key()) as operator:
        chain = (await operator.get("/api/audit", params={"org": a.org_name})).json()["events"]
    global_seqs = [e["seq"] for e in chain]
    assert global_seqs != list(range(global_seqs[0], global_seqs[0] + len(global_seqs)))
    assert all("prev_hash" in e for e in chain)
