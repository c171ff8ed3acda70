"""The inference pipeline: one `execute` for live requests and batch lines alike.

    execute(call, client)   check_crashes → compliant_routes → admit → send → answer

A model whose deployments for the caller are all scaled to zero is woken in
`compliant_routes`: the request waits (bounded) for a replica before admission
(`gateway/demand.py`); so does one for a fine-tuned model whose adapter a shared replica
of its base is loading.

Invariant: every admitted request ends with exactly one settled usage record
(`gateway.exchange`). Refusals before admission (no compliant replica: 451; none ready:
503; rate limit or budget: 429; an unwritable usage journal: 503) write no record, because
nothing was processed. Once sent, a request is never sent again: only a connection that
could not be made moves on to the next compliant replica, never across a border.

A batch line (`call.line`) goes through every step of it: its own record id, its
batch's lower priority in the fair queue, and its settlement held for the runner to
write with the line's result. The pipeline knows nothing of HTTP frameworks: it is told
when the client goes away (`Client`), and returns an `Answer` the server turns into a
response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from souverain.catalog.routes import ReplicaRoute
from souverain.core.errors import (
    InvalidRequestError,
    PolicyRefusedError,
    ServiceUnavailableError,
    SouverainError,
    UpstreamError,
    UpstreamTimeoutError,
)
from souverain.core.fleet import replica_server_name
from souverain.core.ids import new_id, replica_secret
from souverain.gateway import admission, demand, reasoning, upstream
from souverain.gateway.admission import Admitted
from souverain.gateway.calls import Call, encode
from souverain.gateway.exchange import Answer, Exchange
from souverain.gateway.relay import relay
from souverain.gateway.state import AppState
from souverain.metering.usage import OpenRecord, Settlement
from souverain.node.engines.base import SAMPLING_LIMIT
from souverain.tenancy import projects

log = logging.getLogger(__name__)
T = TypeVar("T")

PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}

__all__ = ["Answer", "Client", "execute"]


class Client(Protocol):
    """The one thing the pipeline needs of whoever waits for the answer."""

    async def gone(self) -> None:
        """Return when the client has gone away (never, for a batch line)."""


async def execute(call: Call, client: Client | None = None) -> Answer:
    """One request from admission to its answer; raises the refusal or the engine's
    failure as a `SouverainError` (after admission, the exchange settles it)."""
    await call.state.limiter.check_crashes(call.principal.key_id)
    routes = await compliant_routes(call)
    content = encode(call)
    exchange = Exchange(call, await admit(call, routes))
    async with exchange:
        try:
            response = await _unless_gone(send(exchange, routes, content), client)
        except ClientGone:
            return _cancelled(exchange)
        if call.stream:
            return exchange.hand_over(relay(exchange, response), {"Cache-Control": "no-cache"})
        return await _complete(exchange, response, client)


async def compliant_routes(call: Call) -> list[ReplicaRoute]:
    table = call.state.routes
    routes, excluded = table.compliant_routes(call.principal, call.model)
    if not routes:
        await table.refresh_if_older_than(call.state.sessions, 0.25)
        routes, excluded = table.compliant_routes(call.principal, call.model)
    # A deployment at zero is woken even when a replica elsewhere runs that this caller's
    # policy excludes: the one at zero may be where the caller is allowed (routing checks
    # the woken replica like any other; a non-compliant one still ends in 451).
    if not routes and table.wakeable_for(call.principal, call.model):
        await _wake(call, set())
        routes, excluded = table.compliant_routes(call.principal, call.model)
    if not routes and excluded:
        reasons = "; ".join(f"{dc}: {why}" for dc, why in sorted(excluded.items()))
        call.state.audit_trail.note(
            "sovereignty.refused",
            org_id=call.principal.org_id,
            subject=f"model:{call.model.name}",
            reason=reasons,
        )
        raise PolicyRefusedError(
            f"No replica of '{call.model.name}' runs where your sovereignty policy allows "
            f"({reasons}). The request was not processed anywhere.",
            param="model",
        )
    if not routes:
        raise ServiceUnavailableError(
            f"The model '{call.model.name}' has no ready replica right now; retry shortly.",
            param="model",
        )
    return routes


async def _wake(call: Call, tried: set[str]) -> None:
    """The model's deployments for this caller are scaled to zero, or its adapter is being
    loaded onto a shared replica: wait for a replica (other than those `tried`)."""
    state = call.state
    await demand.wake(
        state.routes,
        state.demand,
        state.sessions,
        principal=call.principal,
        model=call.model,
        deployments=state.routes.wakeable_for(call.principal, call.model),
        timeout_s=state.settings.wake_timeout_s,
        exclude=tried,
    )


async def _woken(exchange: Exchange, tried: set[str]) -> list[ReplicaRoute]:
    """Every replica refused the connection: the last one of a deployment that scales to
    zero may have just stopped (the route table learns within its refresh). Then wait for
    a new one as a request at zero does; otherwise none."""
    call = exchange.call
    table = call.state.routes
    if not table.wakeable_for(call.principal, call.model):
        return []
    await _wake(call, tried)
    routes, _ = table.compliant_routes(call.principal, call.model)
    return [route for route in routes if route.replica_id not in tried]


async def admit(call: Call, routes: list[ReplicaRoute]) -> Admitted:
    """Rate limits, budget reservation, and the open usage record, or a refusal. A batch
    line brings its own record id (the same on every attempt) and its batch's id."""
    state, principal, line = call.state, call.principal, call.line
    project_id = state.routes.project_of(principal)
    if project_id is None and principal.org_id is not None:
        project_id = await _default_project(state, principal.org_id)
    prompt = max(admission.prompt_bound(call.body, r.prompt_overhead) for r in routes)
    completion = admission.completion_bound(call.endpoint, call.body, call.model)
    price = state.routes.prices.get(call.model.id)
    worst = max((state.meter.per_token(r.energy_j_per_token) for r in routes), default=0.0)
    amounts = state.meter.amounts(
        prompt=prompt, completion=completion, price=price, j_per_token=worst
    )
    record = OpenRecord(
        id=line.record_id if line is not None else new_id("req"),
        org_id=principal.org_id,
        project_id=project_id,
        key_id=principal.key_id,
        user_id=principal.user_id,
        endpoint=call.endpoint,
        model=call.model.name,
        stream=call.stream,
        server_id=state.server_id,
        batch_id=line.batch_id if line is not None else None,
    )
    return await admission.admit(
        state,
        principal=principal,
        record=record,
        amounts=amounts,
        # Rate limits estimate the prompt as OpenAI does (about 4 bytes a token, text only).
        rate_tokens=admission.prompt_bound(call.body, (0, 0)) // 4 + completion,
        price=price,
    )


async def _default_project(state: AppState, org_id: str) -> str | None:
    if org_id not in state.default_projects:
        async with state.sessions() as session:
            state.default_projects[org_id] = (
                await projects.get_default_project(session, org_id=org_id)
            ).id
    return state.default_projects.get(org_id)


async def send(exchange: Exchange, routes: list[ReplicaRoute], content: bytes) -> upstream.Response:
    """Send to the least busy replica; only a connection that could not be made moves on
    to the next compliant one. A request the engine received is never sent again."""
    state, tried = exchange.state, set[str]()
    org = exchange.call.principal.org_id or "platform"
    batch = exchange.call.queued_as_batch
    while True:
        route = await state.queue.acquire(org, routes, tried, exchange.use, batch=batch)
        if route is None:
            routes = await _woken(exchange, tried)
            if not routes:
                break
            continue
        tried.add(route.replica_id)
        secret = replica_secret(state.master_key, route.replica_id)
        headers = {
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/json",
            "X-Souverain-Cache-Scope": exchange.cache_scope,
            **exchange.dialect.headers(),
        }
        log.debug("request %s to replica %s in %s", exchange.record_id, route.replica_id,
                  route.datacenter_id)  # fmt: skip
        try:
            response = await state.upstream.post(
                route.url + PATHS[exchange.call.endpoint],
                exchange.dialect.body(exchange, content),
                headers,
                server_name=replica_server_name(route.replica_id),
            )
        except upstream.Untrusted as error:  # nothing was sent: the next compliant replica
            exchange.release()
            state.routes.suspect(route)
            state.audit_trail.note("replica.tls_refused", subject=route.replica_id,
                                   reason=str(error))  # fmt: skip
            log.warning("replica %s refused: %s", route.replica_id, error)
            continue
        except upstream.Refused:
            exchange.release()
            state.routes.suspect(route)
            log.warning("replica %s refused the connection; trying another", route.replica_id)
            continue
        except upstream.TimedOut:
            raise UpstreamTimeoutError(
                "The model engine did not answer in time; the request was stopped."
            ) from None
        except upstream.Broken:
            await exchange.note_engine_failure("dropped the connection before answering")
            raise UpstreamError(
                "The model engine dropped the connection before answering; the request was "
                "not sent again because it may have been processed."
            ) from None
        if response.status >= 400:
            raise await _refusal(exchange, route, response)
        return response
    raise ServiceUnavailableError(
        f"No replica of '{exchange.call.model.name}' could be reached; retry shortly."
    )


async def _refusal(
    exchange: Exchange, route: ReplicaRoute, response: upstream.Response
) -> SouverainError:
    """What the client is told of an engine's error answer."""
    raw = await _error_body(response)
    if _adapter_gone(route, response.status, raw):
        # its adapter left the shared replica (unloaded while idle) as the request went:
        # nothing was processed, and the next request waits for it to load (SDKs retry a
        # 503 by themselves); not the client's mistake, nor a 400 naming the engine's number
        log.info("replica %s no longer holds %s's adapter", route.replica_id, route.model_id)
        return ServiceUnavailableError(
            f"The adapter of '{exchange.call.model.name}' was unloaded as this request "
            "arrived; nothing was processed. Retry: it is loaded again on request."
        )
    return await _upstream_error(exchange, response.status, raw)


async def _error_body(response: upstream.Response) -> bytes:
    try:
        return await response.read()
    except upstream.Broken:
        return b""
    finally:
        response.close()


def _adapter_gone(route: ReplicaRoute, status: int, raw: bytes) -> bool:
    """souverain's llama-server refuses a request naming an adapter it no longer holds
    (scripts/patches/llama-server-runtime-lora.patch) before it reads the prompt."""
    return route.lora_id is not None and status == 400 and b"is not loaded" in raw


async def _upstream_error(exchange: Exchange, status: int, raw: bytes) -> SouverainError:
    message = plain_engine_message(_engine_message(raw))
    if SAMPLING_LIMIT in message:  # it held the engine for everyone: counted like a crash
        await exchange.note_engine_failure("stopped a request whose sampler stalled it")
        return InvalidRequestError(f"The model engine stopped the request: {message}")
    if 400 <= status < 500 and status not in (401, 403):
        return InvalidRequestError(
            f"The model engine refused the request: {message}"
            if message
            else "The model engine refused the request (a parameter this model cannot take)."
        )
    return UpstreamError(f"The model engine failed (HTTP {status}).")


_INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|line \d+|invalid literal|object has no attribute|NoneType|"
    r"KeyError|IndexError|TypeError|ValueError|AttributeError|Exception|site-packages|0x[0-9a-f]{6,}",
    re.IGNORECASE,
)


def plain_engine_message(message: str) -> str:
    """An engine's own words for a client, unless they are Python's internals (which say
    how the engine is built, and nothing a client can act on): then nothing."""
    first = message.strip().splitlines()[0][:200] if message.strip() else ""
    return "" if _INTERNALS.search(first) else first


def _engine_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:300]
    detail = data.get("detail") if isinstance(data, dict) else None
    return str(error or detail or "")[:300]


def settlement_of(exchange: Exchange, answer: dict[str, Any]) -> Settlement:
    """A complete answer's settlement: the engine's token counts, priced and metered."""
    tokens = answer.get("usage") or {}
    return exchange.metered(
        replace(
            exchange.base("ok"),
            prompt_tokens=int(tokens.get("prompt_tokens", 0)),
            completion_tokens=int(tokens.get("completion_tokens", 0)),
        )
    )


def _cancelled(exchange: Exchange) -> Answer:
    exchange.conclude(exchange.base("client_cancelled", "client disconnected"))
    return Answer(exchange, status=499)


async def _complete(
    exchange: Exchange, response: upstream.Response, client: Client | None
) -> Answer:
    try:
        raw = await _unless_gone(response.read(), client)
    except ClientGone:
        return _cancelled(exchange)
    except upstream.TimedOut:
        raise UpstreamTimeoutError("The model engine did not finish its answer in time.") from None
    except upstream.Broken:
        await exchange.note_engine_failure("broke off its answer")
        raise UpstreamError("The model engine broke off the response.") from None
    finally:
        response.close()
    try:
        settlement = settlement_of(exchange, json.loads(raw))
    except (ValueError, AttributeError):
        raise UpstreamError("The model engine sent an answer that is not JSON.") from None
    exchange.conclude(settlement)
    raw = exchange.dialect.answer(exchange, raw)
    if exchange.call.reasoning is not None:
        raw, (thinking, text) = reasoning.rewrite_answer(
            raw, exchange.call.reasoning, exchange.call.model.reasoning_tags
        )
        exchange.said(thinking, text)
    headers = exchange.headers() | {
        "x-souverain-energy-joules": f"{settlement.energy_estimate_j or 0.0:.6g}",
        "x-souverain-co2e-grams": f"{exchange.co2e_grams(settlement):.6g}",
    }
    return Answer(exchange, content=raw, headers=headers)


class ClientGone(Exception):
    """The client disconnected before the answer was ready; the work was cancelled."""


async def _unless_gone(work: Awaitable[T], client: Client | None) -> T:
    """Await `work`, cancelling it if the client goes away first (then ClientGone)."""
    if client is None:
        return await work
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(client.gone())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        answered = task.done()
        if not answered:
            task.cancel()  # aiohttp drops the connection: the engine stops generating
    if not answered:
        raise ClientGone
    return task.result()
