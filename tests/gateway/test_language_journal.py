"""Languages of reasoning requests reach the usage record through the journal: merged into
the INSERT when the record's open and settlement are in the same batch, as an UPDATE
otherwise, and once more when a killed server's journal is replayed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from souverain.core.ids import new_id
from souverain.db.tables import UsageRecordRow, utcnow
from souverain.gateway import journal
from souverain.metering import usage
from souverain.metering.usage import OpenRecord, Settlement
from tests.conftest import Platform

TAGS = {"prompt_language": "fr", "reasoning_language": "fr", "answer_language": "de",
        "languages_agree": False}  # fmt: skip


def entries(record_id: str) -> list[dict[str, Any]]:
    record = OpenRecord(id=record_id, key_id="k0000000", user_id="u", endpoint="chat",
                        model="m", stream=False, server_id="s")  # fmt: skip
    settled = usage.settlement_values(Settlement(status="ok", prompt_tokens=3))
    return [
        {"op": "open", **usage.row_values(record)},
        {"op": "settle", "id": record_id, **settled, "settled_at": utcnow()},
        {"op": "languages", "id": record_id, **TAGS},
    ]


async def row(platform: Platform, record_id: str) -> UsageRecordRow:
    async with platform.sessions() as session:
        found = (
            await session.execute(select(UsageRecordRow).where(UsageRecordRow.id == record_id))
        ).scalar_one()
        return found


@pytest.mark.parametrize("replaying", [False, True])
async def test_languages_in_one_batch(platform: Platform, replaying: bool) -> None:
    record_id = new_id("req")
    for _ in range(2 if replaying else 1):  # a replay may see the same entries twice
        async with platform.sessions.begin() as session:
            await journal.apply(session, entries(record_id), replaying=replaying)
    found = await row(platform, record_id)
    assert (found.status, found.prompt_tokens) == ("ok", 3)
    assert (found.prompt_language, found.answer_language, found.languages_agree) == (
        "fr", "de", False,
    )  # fmt: skip


async def test_languages_after_the_record_was_written(platform: Platform) -> None:
    record_id = new_id("req")
    first, second, third = entries(record_id)
    async with platform.sessions.begin() as session:
        await journal.apply(session, [first, second])
    assert (await row(platform, record_id)).prompt_language is None
    async with platform.sessions.begin() as session:
        await journal.apply(session, [third])
    assert (await row(platform, record_id)).reasoning_language == "fr"
