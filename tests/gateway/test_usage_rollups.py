"""/api/usage answers from the usage rollups exactly what a GROUP BY over the raw records
answers, for every group_by, range and caller, whichever way the records were written:
journaled (merged or not, replayed), settled synchronously, concurrently, interrupted at a
restart, tagged with languages before or after settlement, attributed their energy."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Role, scopes_of
from souverain.gateway import journal
from souverain.metering import usage, usage_reports
from souverain.metering.usage import OpenRecord, Settlement
from souverain.metering.usage_reports import GROUPS, UsageFilter
from souverain.testing.factories import Key, Tenant
from tests.conftest import Platform

NOW = datetime.now(UTC)
EPOCH = datetime(2026, 9, 28, 22, 30, tzinfo=UTC)  # the records span a few months
MODELS = ("rollup-a", "rollup-b")
DATACENTERS = ("dc-rollup-1", "dc-rollup-2", None)
STATUSES = ("ok", "ok", "ok", "client_cancelled", "upstream_error")
TAGS = [
    {"prompt_language": "fr", "reasoning_language": "fr", "answer_language": "fr",
     "languages_agree": True},
    {"prompt_language": "de", "reasoning_language": "en", "answer_language": "de",
     "languages_agree": False},
    {"prompt_language": None, "reasoning_language": None, "answer_language": None,
     "languages_agree": None},
    {"prompt_language": "en", "reasoning_language": None, "answer_language": "en",
     "languages_agree": None},
]  # fmt: skip


@dataclass
class Org:
    tenant: Tenant
    admin: Key
    member: Key
    other_project: str

    def principal(self, key: Key, role: Role) -> Principal:
        return Principal(
            key_id=key.id, user_id=key.user_id, user_name="u", org_id=self.tenant.org_id,
            project_id=None, role=role, scopes=scopes_of(role),
        )  # fmt: skip


async def new_org(platform: Platform) -> Org:
    tenant = await platform.factory.tenant(roles={"admin": Role.ADMIN, "member": Role.MEMBER})
    admin = await platform.factory.member_key(tenant, "admin", Role.ADMIN)
    member = await platform.factory.member_key(tenant, "member", Role.MEMBER)
    return Org(tenant, admin, member, other_project=new_id("prj"))


class Records:
    """Records of one organisation, written every way the platform writes them."""

    def __init__(self, org: Org, seed: int) -> None:
        self.org, self.random = org, random.Random(seed)
        self.server_id = new_id("srv")

    def opened(self, created_at: datetime | None = None, *, alike: bool = False) -> OpenRecord:
        """A new record; `alike`: the admin's, in one project and model, as all alike are."""
        key = self.org.admin if alike else self.random.choice((self.org.admin, self.org.member))
        project = self.random.choice((self.org.tenant.project_id, self.org.other_project, None))
        return OpenRecord(
            id=new_id("req"), key_id=key.id, user_id=key.user_id, endpoint="chat",
            model=MODELS[0] if alike else self.random.choice(MODELS), stream=False,
            server_id=self.server_id, org_id=self.org.tenant.org_id,
            project_id=self.org.tenant.project_id if alike else project,
            created_at=created_at or self.moment(),
        )  # fmt: skip

    def moment(self) -> datetime:
        return EPOCH + (NOW - EPOCH) * self.random.random()

    def settlement(self) -> Settlement:
        pick = self.random
        return Settlement(
            status=pick.choice(STATUSES), prompt_tokens=pick.randint(1, 500),
            completion_tokens=pick.randint(0, 300), datacenter_id=pick.choice(DATACENTERS),
            cost=round(pick.random() / 100, 6), currency="EUR",
            energy_estimate_j=pick.choice((None, round(pick.random() * 40, 3))),
        )  # fmt: skip

    def tag(self, record_id: str) -> dict[str, Any]:
        return {"id": record_id, **self.random.choice(TAGS)}


def entries_of(record: OpenRecord, settlement: Settlement | None) -> list[dict[str, Any]]:
    opened = [{"op": "open", **usage.row_values(record)}]
    if settlement is None:
        return opened
    settled = usage.settlement_values(settlement)
    return [*opened, {"op": "settle", "id": record.id, **settled, "settled_at": NOW}]


async def write_every_way(platform: Platform, records: Records, count: int) -> None:
    """`count` records per way of writing them."""
    sessions = platform.sessions
    for _ in range(count):
        # journaled, open and settlement in one batch (one INSERT), languages with them
        record = records.opened()
        merged = entries_of(record, records.settlement())
        tag = {"op": "languages", **records.tag(record.id)}
        async with sessions.begin() as session:
            await journal.apply(session, [*merged, tag])
        # journaled, settled in a later batch, tagged in a third
        record = records.opened()
        opened, settled = entries_of(record, records.settlement())
        for batch in ([opened], [settled], [{"op": "languages", **records.tag(record.id)}]):
            async with sessions.begin() as session:
                await journal.apply(session, batch)
        # a killed server's journal, replayed twice
        record = records.opened()
        for _replay in range(2):
            async with sessions.begin() as session:
                await journal.apply(session, entries_of(record, records.settlement()),
                                    replaying=True)  # fmt: skip
        # synchronous (organisations with a budget); tagged straight in the database
        # before or after settlement; energy attributed later, once
        record = records.opened()
        async with sessions.begin() as session:
            await usage.open_record(session, record=record)
        tag_first = records.random.random() < 0.5
        if tag_first:
            async with sessions.begin() as session:
                await usage.tag_languages(session, tags=[records.tag(record.id)])
        async with sessions.begin() as session:
            settled_now = await usage.settle_record(
                session, record_id=record.id, settlement=records.settlement()
            )
            assert settled_now
        async with sessions.begin() as session:
            if not tag_first:
                await usage.tag_languages(session, tags=[records.tag(record.id)])
            joules = records.random.random() * 30
            assert await usage.attribute_energy(
                session, record_id=record.id, energy_j=joules, co2e_g=joules / 100, source="rapl"
            )
            assert not await usage.attribute_energy(
                session, record_id=record.id, energy_j=1.0, co2e_g=1.0, source="rapl"
            )  # once only
        # still open: counted, from the raw records
        async with sessions.begin() as session:
            await journal.apply(session, entries_of(records.opened(), None))


async def answers(
    platform: Platform, key: Key, principal: Principal, where: UsageFilter, group_by: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what /api/usage answers, what a GROUP BY over the raw records answers)."""
    params: dict[str, Any] = {"group_by": group_by, "limit": 0}
    for name, value in (("from", where.since), ("to", where.until), ("model", where.model),
                        ("key", where.key), ("project", where.project),
                        ("org", where.org_ref)):  # fmt: skip
        if value is not None:
            params[name] = value.isoformat() if isinstance(value, datetime) else value
    async with platform.client(key.key) as client:
        response = await client.get("/api/usage", params=params)
    assert response.status_code == 200, response.text
    async with platform.sessions() as session:
        raw = await usage_reports.aggregate(
            session, principal=principal, where=where, group_by=group_by, from_records=True
        )
    reference = [
        {"key": g.key, "requests": g.requests, "prompt_tokens": g.prompt_tokens,
         "completion_tokens": g.completion_tokens, "cost": g.cost, "energy_j": g.energy_j,
         "co2e_g": g.co2e_g, "language_tagged": g.language_tagged,
         "language_consistent": g.language_consistent}
        for g in raw
    ]  # fmt: skip
    return [_comparable(g) for g in response.json()["groups"]], reference


def _comparable(group: dict[str, Any]) -> dict[str, Any]:
    group = {k: v for k, v in group.items() if k != "language_consistency"}
    return {k: pytest.approx(v, rel=1e-9, abs=1e-9) if isinstance(v, float) else v
            for k, v in group.items()}  # fmt: skip


async def assert_same_answers(
    platform: Platform, key: Key, principal: Principal, where: UsageFilter
) -> int:
    """Every group_by; returns the requests counted, so a test can tell it saw records."""
    counted = 0
    for group_by in sorted(GROUPS):
        from_rollups, from_records = await answers(platform, key, principal, where, group_by)
        assert from_rollups == from_records, (group_by, where)
        counted = max(counted, sum(g["requests"] for g in from_records))
    return counted


def ranges() -> list[tuple[datetime | None, datetime | None]]:
    """Open ends, ends inside an hour, whole months, a single hour, and an empty range."""
    inside = datetime(2026, 10, 14, 9, 17, 3, 250_000, tzinfo=UTC)
    return [
        (None, None),
        (inside, None),
        (None, inside + timedelta(days=20, minutes=11)),
        (inside, inside + timedelta(days=33, hours=5, minutes=2)),
        (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),
        (inside, inside + timedelta(minutes=30)),
        (NOW - timedelta(days=30), None),  # the console's "last 30 days"
        (inside + timedelta(days=1), inside),
    ]


@pytest.fixture(scope="module")
async def written(platform: Platform) -> tuple[Org, Records]:
    org = await new_org(platform)
    records = Records(org, seed=7)
    await write_every_way(platform, records, count=12)
    return org, records


class TestRollupsAnswerAsTheRecords:
    @pytest.mark.parametrize("span", range(len(ranges())))
    async def test_every_group_by_over_ranges(
        self, platform: Platform, written: tuple[Org, Records], span: int
    ) -> None:
        org, _ = written
        since, until = ranges()[span]
        admin = org.principal(org.admin, Role.ADMIN)
        counted = await assert_same_answers(
            platform, org.admin, admin, UsageFilter(since=since, until=until)
        )
        if since is None and until is None:
            assert counted == 12 * 5

    async def test_filters_and_a_member_who_sees_only_their_own(
        self, platform: Platform, written: tuple[Org, Records]
    ) -> None:
        org, _ = written
        admin = org.principal(org.admin, Role.ADMIN)
        member = org.principal(org.member, Role.MEMBER)
        since = datetime(2026, 10, 3, 7, 45, tzinfo=UTC)
        for where in (
            UsageFilter(model=MODELS[0], since=since),
            UsageFilter(key=org.member.id),
            UsageFilter(project=org.other_project, until=NOW - timedelta(days=9)),
            UsageFilter(org_ref=org.tenant.org_name, since=since),
        ):
            assert await assert_same_answers(platform, org.admin, admin, where) > 0
        assert await assert_same_answers(platform, org.member, member, UsageFilter()) > 0

    async def test_open_records_count_until_they_settle(
        self, platform: Platform, written: tuple[Org, Records]
    ) -> None:
        org, _ = written
        async with platform.client(org.admin.key) as client:
            report = (await client.get("/api/usage", params={"group_by": "status"})).json()
        counts = {g["key"]: g["requests"] for g in report["groups"]}
        assert counts["open"] == 12 and counts["ok"] >= 12


class TestWritesThatRace:
    async def test_concurrent_settlements_lose_no_increment(self, platform: Platform) -> None:
        """Forty records of one key, model and hour: every settlement adds to the same
        rollup rows at once (in separate transactions, plus journal batches and tags)."""
        org = await new_org(platform)
        records = Records(org, seed=11)
        hour = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        opened = [records.opened(hour + timedelta(minutes=i), alike=True) for i in range(40)]
        async with platform.sessions.begin() as session:
            for record in opened:
                await usage.open_record(session, record=record)

        async def settle(record: OpenRecord) -> None:
            async with platform.sessions.begin() as session:
                await usage.settle_record(
                    session, record_id=record.id, settlement=Settlement(status="ok",
                    prompt_tokens=7, completion_tokens=3, cost=0.25, energy_estimate_j=2.0)
                )  # fmt: skip

        async def journaled(record: OpenRecord) -> None:
            settled = usage.settlement_values(Settlement(status="ok", prompt_tokens=7))
            batch = [{"op": "settle", "id": record.id, **settled, "settled_at": NOW},
                     {"op": "languages", **records.tag(record.id)}]  # fmt: skip
            async with platform.sessions.begin() as session:
                await journal.apply(session, batch)

        await asyncio.gather(
            *(settle(r) for r in opened[:20]), *(journaled(r) for r in opened[20:])
        )
        async with platform.client(org.admin.key) as client:
            report = (await client.get("/api/usage", params={"group_by": "model"})).json()
        assert report["groups"][0]["requests"] == 40
        assert report["groups"][0]["prompt_tokens"] == 40 * 7
        assert report["groups"][0]["cost"] == pytest.approx(20 * 0.25)
        admin = org.principal(org.admin, Role.ADMIN)
        await assert_same_answers(platform, org.admin, admin, UsageFilter())

    async def test_interrupted_records_enter_the_rollups(self, platform: Platform) -> None:
        org = await new_org(platform)
        records = Records(org, seed=13)
        left = [records.opened() for _ in range(6)]
        async with platform.sessions.begin() as session:
            await journal.apply(session, [e for r in left for e in entries_of(r, None)])
        async with platform.sessions.begin() as session:
            assert await usage.settle_interrupted(session, server_id=records.server_id) == 6
        async with platform.client(org.admin.key) as client:
            report = (await client.get("/api/usage", params={"group_by": "status"})).json()
        assert [(g["key"], g["requests"]) for g in report["groups"]] == [("interrupted", 6)]
        admin = org.principal(org.admin, Role.ADMIN)
        await assert_same_answers(platform, org.admin, admin, UsageFilter())

    async def test_languages_tagged_after_settlement_move_between_groups(
        self, platform: Platform
    ) -> None:
        org = await new_org(platform)
        records = Records(org, seed=17)
        record = records.opened()
        async with platform.sessions.begin() as session:
            await journal.apply(session, entries_of(record, records.settlement()))
        before = await language_groups(platform, org)
        async with platform.sessions.begin() as session:
            await usage.tag_languages(session, tags=[{"id": record.id, **TAGS[1]}])
        after = await language_groups(platform, org)
        assert before == {} and after == {f"{record.model} · de": (1, 1, 0)}
        admin = org.principal(org.admin, Role.ADMIN)
        await assert_same_answers(platform, org.admin, admin, UsageFilter())


async def language_groups(platform: Platform, org: Org) -> dict[str, tuple[int, int, int]]:
    async with platform.client(org.admin.key) as client:
        report = (await client.get("/api/usage", params={"group_by": "language"})).json()
    return {
        g["key"]: (g["requests"], g["language_tagged"], g["language_consistent"])
        for g in report["groups"]
    }
