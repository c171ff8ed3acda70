"""One admitted request, from its admission to its one settlement.

Invariant: every admitted request ends with exactly one settled usage record. An
`Exchange` wraps the immutable `Admitted` value and is the only thing that settles it, at
most once: `async with exchange:` settles on the way out whatever happened (success, an
engine error, a timeout, a broken stream, a client disconnect, a cancellation), with the
outcome the pipeline concluded or, failing that, one read from the exception. A streamed
answer is handed over (`hand_over()`): the response that streams it re-enters the
exchange and settles when the stream ends, however it ends. If this process is killed in
between, the record stays `open` and is settled `interrupted` at the next start.

A batch line's settlement is held instead of written (`settle_in`): its runner writes it in
the transaction that keeps the line's result, so the two are one fact.

The exchange also holds the chosen replica's outstanding-request count
(`RouteTable.track`) from the moment the request is sent until it is settled, so load is
counted in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import TracebackType

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.routes import ReplicaRoute
from souverain.core.errors import SouverainError
from souverain.core.ids import cache_scope as cache_scope_of
from souverain.core.jurisdictions import jurisdictions_of
from souverain.energy.attribution import co2e_grams
from souverain.gateway.admission import Admitted
from souverain.gateway.calls import Call
from souverain.gateway.dialects import OPENAI, Dialect, dialect_of
from souverain.gateway.forced_tools import Forced
from souverain.gateway.languages import Texts, prompt_text
from souverain.gateway.slots import Slot
from souverain.metering import usage
from souverain.metering.usage import Settlement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What `gateway.pipeline.execute` returns: a whole answer (`content`), a stream to
    relay (`events`, which owns the exchange until it ends), or 499 when the client went
    away first. The server makes it a response; a batch line keeps `content`."""

    exchange: Exchange
    status: int = 200
    content: bytes = b""
    events: AsyncIterator[bytes] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Exchange:
    def __init__(self, call: Call, admitted: Admitted) -> None:
        self.call = call
        self.state = call.state
        self.admitted = admitted
        self.route: ReplicaRoute | None = None
        self.dialect: Dialect = OPENAI  # how the chosen replica's engine speaks
        self._outcome: Settlement | None = None
        self._tracking: contextlib.AbstractContextManager[Slot | None] | None = None
        self.slot: Slot | None = None  # on a slotted replica: where the engine serves it
        self.forced_tool: Forced | None = None  # a tool call the gateway forces (llama-server)
        self.prefill_first = False  # its prompt before the others' next step (gateway/shares.py)
        self._handed_over = False
        self._settled = False
        self._held: Settlement | None = None  # a batch line's, until its runner writes it
        self._said: tuple[str | None, str] | None = None  # a reasoning answer's two parts
        if call.line is not None:
            call.line.exchange = self

    @property
    def record_id(self) -> str:
        return self.admitted.record_id

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.admitted.started) * 1000

    # the replica

    def use(self, route: ReplicaRoute) -> None:
        """Count the request against `route` (and no longer against any other)."""
        self.release()
        self.route = route
        self.dialect = dialect_of(route)
        org, batch = self.call.principal.org_id or "platform", self.call.queued_as_batch
        self.prefill_first = not batch and self.state.routes.shares.outnumbered(
            route.replica_id, org
        )
        self._tracking = self.state.routes.track(route, self.cache_scope, org, batch=batch)
        self.slot = self._tracking.__enter__()

    @cached_property
    def cache_scope(self) -> str:
        """The organisation's opaque KV-cache scope for this model: engines reuse a cached
        prefix within it only (node/engines/llamacpp_main.py, llama-server's patch)."""
        principal, model = self.call.principal, self.call.model
        return cache_scope_of(self.state.master_key, principal.org_id, model.id)

    def release(self) -> None:
        if self._tracking is not None:
            self._tracking.__exit__(None, None, None)
            self._tracking = None
            self.slot = None

    # the outcome

    def said(self, thinking: str | None, answer: str) -> None:
        """A reasoning answer's thinking and answer: their languages go on the usage
        record after it settles (gateway/languages)."""
        self._said = (thinking, answer)

    def conclude(self, settlement: Settlement) -> None:
        """What happened, as the pipeline knows it; the settlement will say this."""
        self._outcome = settlement

    def base(self, status: str = "ok", error: str = "") -> Settlement:
        """A settlement naming where the request ran (nothing, before a replica was used)."""
        route = self.route
        if route is None:
            return Settlement(status=status, error=error)
        return Settlement(
            status=status,
            error=error,
            deployment_id=route.deployment_id,
            replica_id=route.replica_id,
            node_id=route.node_id,
            datacenter_id=route.datacenter_id,
            country=route.country,
            operator_country=route.operator_country,
            certifications=sorted(route.certifications),
            jurisdictions=jurisdictions_of(route.country),
        )

    def metered(self, settlement: Settlement) -> Settlement:
        """Price and energy estimate of what was actually used."""
        route, price = self.route, self.admitted.price
        j_per_token = self.state.meter.per_token(route.energy_j_per_token if route else None)
        used = self.state.meter.amounts(
            prompt=settlement.prompt_tokens,
            completion=settlement.completion_tokens,
            price=price,
            j_per_token=j_per_token,
        )
        return replace(
            settlement,
            cost=used.cost,
            currency=price.currency if price else None,
            energy_estimate_j=used.energy_j,
            energy_source=(route.energy_source if route else None) or "estimate",
        )

    def co2e_grams(self, settlement: Settlement) -> float:
        intensity = self.route.carbon_intensity if self.route else 0.0
        return co2e_grams(settlement.energy_estimate_j or 0.0, intensity)

    async def note_engine_failure(self, what: str) -> None:
        """An engine that drops a request it was processing has most likely died of it: the
        audit log names the key that sent it, and a key that does it again and again is
        paused (`RateLimiter.check_crashes`)."""
        principal = self.call.principal
        replica = self.route.replica_id if self.route else "?"
        self.state.audit_trail.note(
            "engine.failure",
            org_id=principal.org_id,
            subject=f"key:{principal.key_id}",
            reason=f"replica {replica} {what} (request {self.record_id})",
        )
        await self.state.limiter.note_crash(principal.key_id)

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.record_id, **self.admitted.rate_headers}
        if self.route is not None:
            headers["x-souverain-datacenter"] = self.route.datacenter_id
        return headers

    # the lifecycle

    async def __aenter__(self) -> Exchange:
        self._handed_over = False
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._handed_over and error is None:
            return  # a streamed response owns the exchange now
        self.settle(error)

    def hand_over(self, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> Answer:
        """Hand the exchange to the stream of `events`: whatever sends it re-enters the
        exchange (`async with`) and closes `events` before leaving, which settles it."""
        self._handed_over = True
        return Answer(self, events=events, headers={**self.headers(), **headers})

    def _final(self, error: BaseException | None) -> Settlement:
        """The one outcome: concluded, or read from the error; metered and counted."""
        self._settled = True
        self.release()
        outcome = self._outcome or self.base(*_status_of(error))
        if outcome.latency_ms is None:
            elapsed = self.elapsed_ms()
            outcome = replace(outcome, latency_ms=elapsed, ttft_ms=outcome.ttft_ms or elapsed)
        if self.route is not None and outcome.energy_estimate_j is None:
            outcome = self.metered(outcome)
        self.state.metrics.observe(
            model=self.call.model.name, endpoint=self.call.endpoint, settlement=outcome
        )
        return outcome

    def _tag_languages(self) -> None:
        if self._said is None or self.call.reasoning is None:
            return
        thinking, answer = self._said
        self.state.languages.submit(
            Texts(
                record_id=self.record_id,
                journaled=self.admitted.journaled,
                prompt=prompt_text(self.call.body.get("messages") or []),
                reasoning=thinking,
                answer=answer,
            )
        )

    async def settle_in(self, session: AsyncSession) -> bool:
        """Write a batch line's held settlement inside its runner's transaction, which
        keeps the line's result too. False when the record was already settled."""
        if self._held is None:
            self.settle()
        outcome, self._held = self._held, None
        if outcome is None:
            return False
        admitted = self.admitted
        settled = await usage.settle_record(
            session,
            record_id=self.record_id,
            settlement=outcome,
            reservation=(admitted.ledger_ids, admitted.reserved),
        )
        self._tag_languages()
        return settled

    def settle(self, error: BaseException | None = None) -> None:
        """Settle once; later calls do nothing. Never makes the client wait for the write;
        a batch line's is held for its runner (`settle_in`)."""
        if self._settled:
            return
        outcome = self._final(error)
        if self.call.line is not None:
            self._held = outcome
            return
        if self.admitted.journaled:
            self.state.journal.settle(self.record_id, outcome)
            self._tag_languages()
            return
        task = asyncio.get_running_loop().create_task(self._write(outcome))
        pending = self.state.pending_settlements
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def _write(self, outcome: Settlement) -> None:
        admitted = self.admitted
        try:
            with anyio.CancelScope(shield=True):
                async with self.state.sessions.begin() as session:
                    await usage.settle_record(
                        session,
                        record_id=self.record_id,
                        settlement=outcome,
                        reservation=(admitted.ledger_ids, admitted.reserved),
                    )
            self._tag_languages()  # after the row it updates is written
        except Exception:
            log.exception(
                "settling usage record %s failed; it will be settled as interrupted",
                self.record_id,
            )


def _status_of(error: BaseException | None) -> tuple[str, str]:
    """The settlement status and error text an exception stands for."""
    if error is None:
        return "ok", ""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "client_cancelled", "client disconnected"
    if isinstance(error, SouverainError):
        return "upstream_error", error.message[:500]
    return "upstream_error", type(error).__name__
