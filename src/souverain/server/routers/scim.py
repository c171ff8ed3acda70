"""SCIM 2.0 at /scim/v2 (RFC 7644): the organisation's directory provisions its people and
groups with a SCIM token of the organisation (`Authorization: Bearer scim-souv-…`).

Answers and errors are in SCIM's own shape (`application/scim+json`, `urn:…:Error` with
`status` and `scimType`), not the /api shape. Every route, discovery included, needs the
token. A refused change is audited (`scim.refused`, counted per window), a failed token like
a failed key (`auth.failed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from scim2_models import Context, Group, ListResponse, User
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import STATUS, SouverainError
from souverain.identity.scim import groups, resources, tokens, users
from souverain.identity.scim.directory import Directory
from souverain.identity.scim.resources import MAX_RESULTS, ScimError
from souverain.server.deps import SessionDep, StateDep, bearer_token

MEDIA = "application/scim+json"
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ScimRoute(APIRoute):
    """Errors of SCIM routes leave in SCIM's shape, and refusals are audited."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def scim_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ScimError as error:
                return _refused(request, error)
            except RequestValidationError as error:
                detail = resources_message(list(error.errors()))
                return _refused(request, ScimError(400, detail, "invalidValue"))
            except SouverainError as error:
                return _refused(request, ScimError(STATUS[error.code], error.message))

        return scim_handler


def resources_message(errors: list[Any]) -> str:
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
    return f"{where}: {first.get('msg', 'invalid value')}"[:300]


def _refused(request: Request, error: ScimError) -> Response:
    state = getattr(request.app.state, "souverain", None)
    directory: Directory | None = getattr(request.state, "directory", None)
    if state is not None and error.status == 401:
        header = request.headers.get("authorization", "").partition(" ")[2].strip()
        token_id = tokens.token_id_of(header)
        subject = f"scim-token:{token_id}" if token_id else "malformed"
        state.audit_trail.note("auth.failed", subject=subject, reason=error.message)
    elif (
        state is not None
        and directory is not None
        and (request.method != "GET" or error.status == 404)
    ):
        state.audit_trail.note(
            "scim.refused",
            org_id=directory.org_id,
            subject=f"scim-token:{directory.token_id}",
            reason=f"{request.method} {request.url.path}: {error.message}",
        )
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), error.status, media_type=MEDIA, headers=headers)


async def get_directory(request: Request, state: StateDep) -> Directory:
    """The organisation whose directory calls, by its SCIM token."""
    token = bearer_token(request)
    async with state.sessions() as session:
        row = await tokens.authenticate(session, token=token)
    base = (state.settings.public_url or str(request.base_url)).rstrip("/") + "/scim/v2"
    directory = Directory(org_id=row.org_id, token_id=row.id, base_url=base)
    request.state.directory = directory
    return directory


# Not in /openapi.json: SCIM is described by RFC 7644 and by its own discovery endpoints
# (/ServiceProviderConfig, /Schemas, /ResourceTypes), and its errors have SCIM's shape.
router = APIRouter(prefix="/scim/v2", tags=["scim"], route_class=ScimRoute, include_in_schema=False)
DirectoryDep = Depends(get_directory)


def scim(content: Any, status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Location": location} if location else None
    return JSONResponse(content, status, media_type=MEDIA, headers=headers)


async def body_of(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as error:
        raise ScimError(400, "The body is not JSON.", "invalidSyntax") from error


Attributes = Query(default=None, max_length=1000)
Excluded = Query(default=None, alias="excludedAttributes", max_length=1000)


@router.get("/ServiceProviderConfig", summary="SCIM: what this server supports")
async def service_provider_config(directory: Directory = DirectoryDep) -> Response:
    config = resources.discovery_documents(directory.base_url)["config"]
    return scim(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


@router.get("/ResourceTypes", summary="SCIM: the resource types (User, Group)")
async def resource_types(directory: Directory = DirectoryDep) -> Response:
    types = list(resources.discovery_documents(directory.base_url)["types"].values())
    return scim(_listing(types, len(types), 1))


@router.get("/ResourceTypes/{name}", summary="SCIM: one resource type")
async def resource_type(name: str, directory: Directory = DirectoryDep) -> Response:
    found = resources.discovery_documents(directory.base_url)["types"].get(name)
    if found is None:
        raise ScimError(404, f"No resource type '{name}'.")
    return scim(found.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


@router.get("/Schemas", summary="SCIM: the schemas")
async def schemas(directory: Directory = DirectoryDep) -> Response:
    found = list(resources.discovery_documents(directory.base_url)["schemas"].values())
    return scim(_listing(found, len(found), 1))


@router.get("/Schemas/{schema_id}", summary="SCIM: one schema")
async def schema(schema_id: str, directory: Directory = DirectoryDep) -> Response:
    found = resources.discovery_documents(directory.base_url)["schemas"].get(schema_id)
    if found is None:
        raise ScimError(404, f"No schema '{schema_id}'.")
    return scim(found.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _listing(items: list[Any], total: int, start: int) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(items),
        "Resources": [i.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for i in items],
    }


@dataclass(frozen=True)
class Search:
    """A query, from the URL (GET) or a SearchRequest body (POST …/.search)."""

    filter: str | None
    start_index: int
    count: int
    attributes: str | None
    excluded: str | None

    @classmethod
    def of(cls, body: Any) -> Search:
        if not isinstance(body, dict):
            raise ScimError(400, "The body must be a SearchRequest.", "invalidSyntax")
        text = {k: v for k, v in body.items() if k != "schemas"}
        joined = {
            k: ",".join(v) if isinstance(v, list) else v
            for k, v in text.items()
            if k in ("attributes", "excludedAttributes")
        }
        try:
            return cls(
                filter=_text(text.get("filter")),
                start_index=int(text.get("startIndex", 1)),
                count=int(text.get("count", 100)),
                attributes=_text(joined.get("attributes")),
                excluded=_text(joined.get("excludedAttributes")),
            )
        except (TypeError, ValueError) as error:
            raise ScimError(400, "startIndex and count are integers.", "invalidValue") from error


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise ScimError(400, "A search parameter is not a short string.", "invalidValue")
    return value


async def _search(
    session: AsyncSession, directory: Directory, model: type[Any], query: Search
) -> Response:
    start, count = max(query.start_index, 1), min(max(query.count, 0), MAX_RESULTS)
    service: Any = users if model is User else groups
    total, rows = await service.list_entries(
        session, directory, expression=query.filter, start=start, count=count
    )
    found = [await service.to_resource(session, directory, row) for row in rows]
    listing = ListResponse[model](  # type: ignore[valid-type]
        total_results=total, start_index=start, items_per_page=len(found), resources=found
    )
    parameters = resources.response_parameters(model, query.attributes, query.excluded)
    return scim(resources.dump(listing, Context.SEARCH_RESPONSE, parameters))


Route = tuple[str, Callable[..., Coroutine[Any, Any, Response]], str, int]


def _resource_routes(
    plural: str, service: Any, model: type[Any], summaries: dict[str, str]
) -> None:
    """The same routes for Users and Groups, each through `service` (`users`, `groups`)."""
    for path, handler, method, status in (
        *_reading(plural, service, model),
        *_writing(plural, service),
    ):
        router.add_api_route(
            path, handler, methods=[method], status_code=status,
            summary=f"SCIM: {summaries[method + (' search' if path.endswith('.search') else '')]}",
        )  # fmt: skip


def _reading(plural: str, service: Any, model: type[Any]) -> list[Route]:
    async def listing(
        session: SessionDep,
        directory: Directory = DirectoryDep,
        filter: str | None = Query(default=None, max_length=1000),
        start_index: int = Query(default=1, alias="startIndex", ge=-(2**31), le=2**31),
        count: int = Query(default=100, ge=-(2**31), le=2**31),
        attributes: str | None = Attributes,
        excluded_attributes: str | None = Excluded,
    ) -> Response:
        query = Search(filter, start_index, count, attributes, excluded_attributes)
        return await _search(session, directory, model, query)

    async def search(
        request: Request, session: SessionDep, directory: Directory = DirectoryDep
    ) -> Response:
        return await _search(session, directory, model, Search.of(await body_of(request)))

    async def read(
        entry_id: str,
        session: SessionDep,
        directory: Directory = DirectoryDep,
        attributes: str | None = Attributes,
        excluded_attributes: str | None = Excluded,
    ) -> Response:
        row = await service.get_entry(session, directory, entry_id)
        found = await service.to_resource(session, directory, row)
        parameters = resources.response_parameters(model, attributes, excluded_attributes)
        return scim(resources.dump(found, Context.RESOURCE_QUERY_RESPONSE, parameters))

    one = f"/{plural}/{{entry_id}}"
    return [(f"/{plural}", listing, "GET", 200), (f"/{plural}/.search", search, "POST", 200),
            (one, read, "GET", 200)]  # fmt: skip


def _writing(plural: str, service: Any) -> list[Route]:
    async def create(
        request: Request, session: SessionDep, directory: Directory = DirectoryDep
    ) -> Response:
        row = await service.create(session, directory, await body_of(request))
        await session.commit()
        found = await service.to_resource(session, directory, row)
        location = directory.location(plural, row.id)
        return scim(resources.dump(found, Context.RESOURCE_CREATION_RESPONSE), 201, location)

    def changing(change: str, context: Context) -> Handler:
        async def changed(
            entry_id: str,
            request: Request,
            session: SessionDep,
            directory: Directory = DirectoryDep,
        ) -> Response:
            row = await getattr(service, change)(
                session, directory, entry_id, await body_of(request)
            )
            await session.commit()
            found = await service.to_resource(session, directory, row)
            return scim(resources.dump(found, context))

        return changed  # type: ignore[return-value]

    async def remove(
        entry_id: str, session: SessionDep, directory: Directory = DirectoryDep
    ) -> Response:
        await service.remove(session, directory, entry_id)
        await session.commit()
        return Response(status_code=204)

    one = f"/{plural}/{{entry_id}}"
    return [
        (f"/{plural}", create, "POST", 201),
        (one, changing("replace", Context.RESOURCE_REPLACEMENT_RESPONSE), "PUT", 200),
        (one, changing("patch", Context.RESOURCE_PATCH_RESPONSE), "PATCH", 200),
        (one, remove, "DELETE", 204),
    ]


_resource_routes("Users", users, User, {
    "GET": "list, filter or read the organisation's users", "POST search": "search users",
    "POST": "provision a user", "PUT": "replace a user",
    "PATCH": "change a user (e.g. active: false)", "DELETE": "delete a user",
})  # fmt: skip
_resource_routes("Groups", groups, Group, {
    "GET": "list, filter or read the organisation's groups", "POST search": "search groups",
    "POST": "create a group", "PUT": "replace a group",
    "PATCH": "change a group's members or name", "DELETE": "delete a group",
})  # fmt: skip


@router.api_route(
    "/{anything:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown(request: Request, anything: str, directory: Directory = DirectoryDep) -> Response:
    """Anything else under /scim/v2: 405 for a method an endpoint does not take, else a SCIM
    404 (for a holder of a token)."""
    head, _, rest = anything.strip("/").partition("/")
    if head == ".search" and request.method == "POST":
        raise ScimError(501, "Search one resource type at a time: /Users/.search, /Groups/.search.")
    if head in DISCOVERY or (
        head in ("Users", "Groups") and (not rest) != (request.method == "POST")
    ):
        raise ScimError(405, f"{request.method} is not allowed here.")
    raise ScimError(404, "No such SCIM endpoint.")


DISCOVERY = frozenset({"ServiceProviderConfig", "ResourceTypes", "Schemas"})
