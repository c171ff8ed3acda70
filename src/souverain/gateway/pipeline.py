"""The inference request pipeline.

Invariant: every admitted request ends with exactly one settled usage record. The record
is opened before the engine is called and settled in a `finally` shielded from
cancellation, whatever happens: success, engine error, broken stream, client disconnect.
If this process is killed in between, the record stays `open` and is settled
`interrupted` at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from souverain.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    PolicyRefusedError,
    ServiceUnavailableError,
    SouverainError,
    UpstreamError,
)
from souverain.core.ids import new_id, replica_secret
from souverain.core.jurisdictions import jurisdictions_of
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.energy.attribution import co2e_grams
from souverain.gateway import admission, upstream
from souverain.gateway.admission import Admission
from souverain.gateway.state import AppState
from souverain.services import projects, usage
from souverain.services.access import check_scope
from souverain.services.routes import ModelInfo, ReplicaRoute
from souverain.services.usage import Settlement

log = logging.getLogger(__name__)

PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


@dataclass
class Call:
    state: AppState
    principal: Principal
    endpoint: str  # chat | completions | embeddings
    model: ModelInfo
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    record_id: str = ""
    started: float = 0.0
    admission: Admission | None = None
    content: bytes = b""


async def resolve_model(
    state: AppState, principal: Principal, name: str, endpoint: str
) -> ModelInfo:
    check_scope(principal, Scope.INFERENCE)
    model = state.routes.visible_model(principal, name)
    if model is None:
        await state.routes.refresh_if_older_than(state.sessions, 0.25)
        model = state.routes.visible_model(principal, name)
    if model is None:
        raise ModelNotFoundError(
            f"The model '{name}' does not exist or you do not have access to it.", param="model"
        )
    if endpoint not in model.capabilities:
        what = {
            "chat": "chat completions",
            "completions": "text completions",
            "embeddings": "embeddings",
        }[endpoint]
        raise InvalidRequestError(f"The model '{name}' does not support {what}.", param="model")
    return model


async def run(call: Call, request: Request) -> Response:
    table = call.state.routes
    routes, excluded = table.compliant_routes(call.principal, call.model)
    if not routes:
        await table.refresh_if_older_than(call.state.sessions, 0.25)
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
    call.body["model"] = call.model.name
    try:
        call.content = json.dumps(call.body, allow_nan=False).encode()
    except ValueError:
        raise InvalidRequestError(
            "Numbers must be finite: NaN and Infinity are not JSON."
        ) from None
    await _open_record(call, routes)

    try:
        route, response = await _send(call, routes)
    except SouverainError as error:
        await _settle(call, Settlement(status="upstream_error", error=error.message[:500]), None)
        raise

    if call.stream:
        return StreamingResponse(
            _relay(call, route, response),
            media_type="text/event-stream",
            headers=_headers(call, route) | {"Cache-Control": "no-cache"},
        )
    return await _complete(call, route, response, request)


def _headers(call: Call, route: ReplicaRoute) -> dict[str, str]:
    headers = {"x-request-id": call.record_id, "x-souverain-datacenter": route.datacenter_id}
    if call.admission is not None:
        headers |= call.admission.rate_headers
    return headers


async def _open_record(call: Call, routes: list[ReplicaRoute]) -> None:
    """Admission: rate limits, budget reservation, and the usage record, or a refusal."""
    state, principal = call.state, call.principal
    project_id = state.routes.project_of(principal)
    if project_id is None and principal.org_id is not None:
        project_id = await _default_project(state, principal.org_id)
    prompt = admission.prompt_bound(call.body)
    completion = admission.completion_bound(call.endpoint, call.body, call.model)
    price = state.routes.prices.get(call.model.id)
    worst = max(
        (admission.energy_per_token(state, r.energy_j_per_token) for r in routes), default=0.0
    )
    amounts = admission.estimate(
        state, prompt=prompt, completion=completion, price=price, j_per_token=worst
    )
    call.record_id = new_id("req")
    call.started = time.perf_counter()
    record = {
        "id": call.record_id,
        "org_id": principal.org_id,
        "project_id": project_id,
        "key_id": principal.key_id,
        "user_id": principal.user_id,
        "endpoint": call.endpoint,
        "model": call.model.name,
        "stream": call.stream,
        "server_id": state.server_id,
    }
    call.admission = await admission.admit(
        state,
        principal=principal,
        record=record,
        project_id=project_id,
        amounts=amounts,
        rate_tokens=prompt // 4 + completion,
        price=price,
    )


async def _default_project(state: AppState, org_id: str) -> str | None:
    if org_id not in state.default_projects:
        async with state.sessions() as session:
            state.default_projects[org_id] = (
                await projects.get_default_project(session, org_id=org_id)
            ).id
    return state.default_projects.get(org_id)


async def _send(call: Call, routes: list[ReplicaRoute]) -> tuple[ReplicaRoute, upstream.Response]:
    """Send to the least busy replica; on a refused connection, try the next compliant one."""
    tried: set[str] = set()
    while (route := call.state.routes.pick(routes, exclude=tried)) is not None:
        tried.add(route.replica_id)
        secret = replica_secret(call.state.master_key, route.replica_id)
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        log.debug(
            "request %s to replica %s in %s", call.record_id, route.replica_id, route.datacenter_id
        )
        call.state.routes.outstanding[route.replica_id] += 1

        try:
            response = await call.state.upstream.post(
                route.url + PATHS[call.endpoint], call.content, headers
            )
        except upstream.Refused:
            call.state.routes.outstanding[route.replica_id] -= 1
            log.warning("replica %s refused the connection; trying another", route.replica_id)
            continue
        except BaseException:
            call.state.routes.outstanding[route.replica_id] -= 1
            raise
        if response.status >= 400:
            call.state.routes.outstanding[route.replica_id] -= 1
            raise await _upstream_error(response)
        return route, response
    raise ServiceUnavailableError(
        f"No replica of '{call.model.name}' could be reached; retry shortly."
    )


async def _upstream_error(response: upstream.Response) -> SouverainError:
    try:
        raw = await response.read()
    except upstream.Broken:
        raw = b""
    finally:
        response.close()
    message = _engine_message(raw) or f"engine answered HTTP {response.status}"
    if 400 <= response.status < 500 and response.status not in (401, 403):
        return InvalidRequestError(message)
    return UpstreamError(f"The model engine failed: {message}")


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


async def _complete(
    call: Call, route: ReplicaRoute, response: upstream.Response, request: Request
) -> Response:
    settlement = _base_settlement(route)
    try:
        raw = await _read_unless_disconnected(response, request)
        if raw is None:
            settlement = replace(settlement, status="client_cancelled")
            return Response(status_code=499)
        data = json.loads(raw)
        tokens = data.get("usage") or {}
        settlement = metered(
            call,
            route,
            replace(
                settlement,
                status="ok",
                prompt_tokens=int(tokens.get("prompt_tokens", 0)),
                completion_tokens=int(tokens.get("completion_tokens", 0)),
            ),
        )
        headers = _headers(call, route) | energy_headers(settlement, route)
        return Response(raw, media_type="application/json", headers=headers)

    except (upstream.Broken, ValueError) as error:
        settlement = replace(settlement, status="upstream_error", error=type(error).__name__)
        raise UpstreamError("The model engine broke off the response.") from error
    finally:
        call.state.routes.outstanding[route.replica_id] -= 1
        elapsed = (time.perf_counter() - call.started) * 1000
        response.close()
        # Settled beside the answer, not before it: the client does not wait for the write.
        settle_soon(call, replace(settlement, latency_ms=elapsed, ttft_ms=elapsed), route)


def settle_soon(call: Call, settlement: Settlement, route: ReplicaRoute | None) -> None:
    """Settle without making the client wait: through the journal at once, or in a task of
    its own (the server waits for pending ones before it stops). If the process dies
    first, the record is settled `interrupted` at the next start."""
    if call.admission is not None and call.admission.journaled:
        call.state.journal.settle(call.record_id, prepare(call, settlement, route).__dict__)
        return
    task = asyncio.get_running_loop().create_task(_settle(call, settlement, route))
    pending = call.state.pending_settlements
    pending.add(task)
    task.add_done_callback(pending.discard)


async def _read_unless_disconnected(response: upstream.Response, request: Request) -> bytes | None:
    """Read the engine's answer; None if the client went away first (the read is cancelled)."""
    read = asyncio.ensure_future(response.read())
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if read in done:
        return read.result()
    read.cancel()
    return None


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _relay(
    call: Call, route: ReplicaRoute, response: upstream.Response
) -> AsyncIterator[bytes]:
    settlement = replace(
        _base_settlement(route), status="upstream_error", error="stream ended early"
    )
    chunks = 0
    ttft: float | None = None
    reported: dict[str, Any] | None = None
    try:
        async for line in response.lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                settlement = replace(settlement, status="ok", error="")
                break
            if ttft is None:
                ttft = (time.perf_counter() - call.started) * 1000
            if '"usage"' in payload:
                chunk = json.loads(payload)
                if not chunk.get("choices") and chunk.get("usage"):
                    reported = chunk["usage"]
                    if call.include_usage:
                        yield _usage_chunk(call, route, settlement, chunk)
                    continue

            chunks += 1
            yield f"data: {payload}\n\n".encode()
        if settlement.status == "ok":
            yield b"data: [DONE]\n\n"
        else:
            yield _stream_error("The model engine broke off the stream.")
    except asyncio.CancelledError:
        settlement = replace(settlement, status="client_cancelled", error="client disconnected")
        raise
    except upstream.Broken as error:
        settlement = replace(settlement, status="upstream_error", error=str(error))
        yield _stream_error("The model engine broke off the stream.")
    finally:
        call.state.routes.outstanding[route.replica_id] -= 1
        settlement = _stream_tokens(settlement, reported, chunks)
        elapsed = (time.perf_counter() - call.started) * 1000
        response.close()
        with anyio.CancelScope(shield=True):
            await _settle(call, replace(settlement, latency_ms=elapsed, ttft_ms=ttft), route)


def _stream_tokens(
    settlement: Settlement, reported: dict[str, Any] | None, chunks: int
) -> Settlement:
    if reported is not None:
        return replace(
            settlement,
            prompt_tokens=int(reported.get("prompt_tokens", 0)),
            completion_tokens=int(reported.get("completion_tokens", 0)),
        )
    # The engine reported nothing (the stream broke): count what was delivered.
    return replace(settlement, completion_tokens=chunks, tokens_counted_by="gateway")


def _stream_error(message: str) -> bytes:
    body = {
        "error": {
            "message": message,
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _base_settlement(route: ReplicaRoute) -> Settlement:
    return Settlement(
        status="ok",
        deployment_id=route.deployment_id,
        replica_id=route.replica_id,
        node_id=route.node_id,
        datacenter_id=route.datacenter_id,
        country=route.country,
        operator_country=route.operator_country,
        certifications=sorted(route.certifications),
        jurisdictions=jurisdictions_of(route.country),
    )


def _usage_chunk(
    call: Call, route: ReplicaRoute, settlement: Settlement, chunk: dict[str, Any]
) -> bytes:
    """The engine's usage chunk, with souverain's energy and CO2e estimates added."""
    tokens = chunk["usage"]
    estimate = metered(
        call,
        route,
        replace(
            settlement,
            prompt_tokens=int(tokens.get("prompt_tokens", 0)),
            completion_tokens=int(tokens.get("completion_tokens", 0)),
        ),
    )
    chunk["souverain"] = {
        "energy_joules": round(estimate.energy_estimate_j or 0.0, 6),
        "co2e_grams": round(co2e_estimate(estimate, route), 9),
        "datacenter": route.datacenter_id,
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def metered(call: Call, route: ReplicaRoute, settlement: Settlement) -> Settlement:
    """Price and energy estimate of what was actually used."""
    state = call.state
    price = call.admission.price if call.admission else None
    j_per_token = admission.energy_per_token(state, route.energy_j_per_token)
    used = admission.estimate(
        state,
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
        energy_source=route.energy_source or "estimate",
    )


def co2e_estimate(settlement: Settlement, route: ReplicaRoute) -> float:
    return co2e_grams(settlement.energy_estimate_j or 0.0, route.carbon_intensity)


def energy_headers(settlement: Settlement, route: ReplicaRoute) -> dict[str, str]:
    return {
        "x-souverain-energy-joules": f"{settlement.energy_estimate_j or 0.0:.6g}",
        "x-souverain-co2e-grams": f"{co2e_estimate(settlement, route):.6g}",
    }


def prepare(call: Call, settlement: Settlement, route: ReplicaRoute | None) -> Settlement:
    if route is not None and settlement.energy_estimate_j is None:
        settlement = metered(call, route, settlement)
    call.state.metrics.observe(model=call.model.name, endpoint=call.endpoint, settlement=settlement)
    return settlement


async def _settle(call: Call, settlement: Settlement, route: ReplicaRoute | None) -> None:
    settlement = prepare(call, settlement, route)
    admitted = call.admission
    if admitted is not None and admitted.journaled:
        call.state.journal.settle(call.record_id, settlement.__dict__)
        return
    try:
        async with call.state.sessions.begin() as session:
            reservation = (admitted.ledger_ids, admitted.reserved) if admitted is not None else None
            await usage.settle_record(
                session, record_id=call.record_id, settlement=settlement, reservation=reservation
            )
    except Exception:
        log.exception(
            "settling usage record %s failed; it will be settled as interrupted", call.record_id
        )
