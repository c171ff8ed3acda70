"""The languages of reasoning requests, found after the answer has gone.

A reasoning request hands the tagger its prompt, thinking and answer when it settles; a
worker task identifies the three languages in a thread (core/language.py) and writes them
on the usage record: through the usage journal when the record went that way, else
straight to the database. Nothing here is on the request's path but a queue append.

Texts wait in memory only, bounded (`MAX_WAITING`); when the queue is full the request is
counted in `dropped` and left untagged: languages are statistics, not billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core import language
from souverain.gateway.journal import UsageJournal
from souverain.metering import usage

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
MAX_TEXT = language.MAX_CHARS


@dataclass(frozen=True)
class Texts:
    record_id: str
    journaled: bool
    prompt: str
    reasoning: str | None
    answer: str


def tags_of(texts: Texts) -> dict[str, Any]:
    prompt = language.identify(texts.prompt)
    reasoning = language.identify(texts.reasoning)
    answer = language.identify(texts.answer)
    return {
        "id": texts.record_id,
        "prompt_language": prompt,
        "reasoning_language": reasoning,
        "answer_language": answer,
        "languages_agree": language.agree(prompt, reasoning, answer),
    }


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The user's task: the last user message's text."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content[:MAX_TEXT]
            if isinstance(content, list):
                return " ".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )[:MAX_TEXT]
    return ""


class LanguageTagger:
    def __init__(self, journal: UsageJournal, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._journal = journal
        self._sessions = sessions
        self._queue: asyncio.Queue[Texts] = asyncio.Queue(MAX_WAITING)
        self._worker: asyncio.Task[None] | None = None
        self.tagged = 0
        self.dropped = 0

    def submit(self, texts: Texts) -> None:
        try:
            self._queue.put_nowait(texts)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Tag what is waiting, then stop."""
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            try:
                await self._tag(batch)
            except Exception:
                log.exception("tagging the languages of %d requests failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _tag(self, batch: list[Texts]) -> None:
        tags = await asyncio.to_thread(lambda: [tags_of(texts) for texts in batch])
        journaled = [tag for tag, texts in zip(tags, batch, strict=True) if texts.journaled]
        direct = [tag for tag, texts in zip(tags, batch, strict=True) if not texts.journaled]
        if journaled:
            self._journal.tag_languages(journaled)
        if direct:
            async with self._sessions.begin() as session:
                await usage.tag_languages(session, tags=direct)
        self.tagged += len(batch)
