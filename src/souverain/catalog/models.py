"""The model registry: names that clients call, and the artifacts behind them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import Holding, check_operator, check_org, check_scope, reach
from souverain.core.artifact_uri import BadArtifactUri, parse_artifact_uri
from souverain.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.models import ModelRegisterRequest
from souverain.db.tables import ModelArtifactRow, ModelRow
from souverain.db.visibility import visible
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs


def _visible(principal: Principal) -> ColumnElement[bool]:
    """Models are shared: the platform's and the caller's organisation's (all, for
    operators; the one rule, `core.access`)."""
    return visible(reach(principal, Holding.SHARED), org=ModelRow.owner_org_id)


async def find_model(session: AsyncSession, *, principal: Principal, ref: str) -> ModelRow | None:
    """By id or name, among the models the caller may see (its organisation's and the
    platform's; operators see all and must use an id when a name is ambiguous)."""
    query = select(ModelRow).where(
        or_(ModelRow.id == ref, ModelRow.name == ref), _visible(principal)
    )
    rows = list((await session.execute(query)).scalars())
    exact = [row for row in rows if row.id == ref]
    if exact:
        return exact[0]
    if len(rows) > 1:
        raise ConflictError(f"several models are named '{ref}'; use the model's id", param="model")
    return rows[0] if rows else None


async def find_public_model(session: AsyncSession, *, name: str) -> ModelRow | None:
    query = select(ModelRow).where(ModelRow.name == name, ModelRow.owner_org_id.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


async def get_model(session: AsyncSession, *, principal: Principal, ref: str) -> ModelRow:
    check_scope(principal, Scope.READ)
    model = await find_model(session, principal=principal, ref=ref)
    if model is None:
        raise NotFoundError("model not found")
    return model


async def _name_taken(session: AsyncSession, *, name: str, owner_org_id: str | None) -> bool:
    """A platform name clashes with any model; a private name with its organisation's
    models and the platform's (both of which the registering tenant can see anyway)."""
    query = select(ModelRow.id).where(ModelRow.name == name)
    if owner_org_id is not None:
        query = query.where(
            or_(ModelRow.owner_org_id.is_(None), ModelRow.owner_org_id == owner_org_id)
        )
    return (await session.execute(query.limit(1))).first() is not None


async def list_models(session: AsyncSession, *, principal: Principal) -> list[ModelRow]:
    if not (principal.has(Scope.READ) or principal.has(Scope.INFERENCE)):
        check_scope(principal, Scope.READ)
    query = select(ModelRow).where(_visible(principal)).order_by(ModelRow.name)
    return list((await session.execute(query)).scalars())


async def artifacts_of(
    session: AsyncSession, *, model_ids: list[str]
) -> dict[str, list[ModelArtifactRow]]:
    result: dict[str, list[ModelArtifactRow]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        query = select(ModelArtifactRow).where(ModelArtifactRow.model_id.in_(model_ids))
        for artifact in (
            await session.execute(query.order_by(ModelArtifactRow.created_at))
        ).scalars():
            result[artifact.model_id].append(artifact)
    return result


def check_artifact_source(principal: Principal, uri: str, *, model_roots: Sequence[Path]) -> None:
    """Who may bring weights from where (see `core.artifact_uri`): tenants from a hub or
    the built-in set; operators also from a path inside the installation's model roots."""
    try:
        parsed = parse_artifact_uri(uri)
    except BadArtifactUri as error:
        raise InvalidRequestError(str(error), param="uri") from None
    if not parsed.operator_only:
        return
    if not principal.is_operator:
        raise PermissionDeniedError(
            "file:// artifacts are for operators: bring your model from a hub (hf://)",
            param="uri",
        )
    real = Path(os.path.realpath(parsed.target))
    if not any(real == (base := Path(os.path.realpath(root))) or base in real.parents
               for root in model_roots):  # fmt: skip
        raise InvalidRequestError(
            "file:// artifacts must lie inside the model roots "
            f"(SOUVERAIN_MODEL_ROOTS: {', '.join(str(r) for r in model_roots) or 'none'})",
            param="uri",
        )


async def register_model(
    session: AsyncSession,
    *,
    principal: Principal,
    request: ModelRegisterRequest,
    model_roots: Sequence[Path] = (),
    source: str = "user",
) -> ModelRow:
    check_artifact_source(principal, request.uri, model_roots=model_roots)
    owner_org_id = None
    if request.org is not None:
        org = await orgs.get_org(session, principal=principal, ref=request.org)
        check_org(principal, org.id, Scope.MANAGE)
        owner_org_id = org.id
    else:
        check_operator(principal)
    model = await put_model(
        session, request=request, owner_org_id=owner_org_id, source=source, replace=False
    )
    await record(
        session,
        actor=actor_of(principal),
        action="model.register",
        org_id=owner_org_id,
        target_type="model",
        target_id=model.id,
        details={"name": model.name, "uri": request.uri, "sha256": request.sha256},
    )
    return model


async def put_model(
    session: AsyncSession,
    *,
    request: ModelRegisterRequest,
    owner_org_id: str | None,
    source: str,
    replace: bool,
) -> ModelRow:
    if not replace and await _name_taken(session, name=request.name, owner_org_id=owner_org_id):
        raise ConflictError(f"model '{request.name}' already exists", param="name")
    model = await find_public_model(session, name=request.name) if replace else None
    if model is None:
        model = ModelRow(id=new_id("mdl"), name=request.name)
        session.add(model)
    model.owner_org_id = owner_org_id
    model.engine = request.engine
    model.capabilities = list(request.capabilities)
    model.reasoning_tags = request.reasoning_tags
    model.context_length = request.context_length
    model.description = request.description
    await session.flush()
    for old in (await artifacts_of(session, model_ids=[model.id]))[model.id]:
        await session.delete(old)
    session.add(
        ModelArtifactRow(
            id=new_id("art"),
            model_id=model.id,
            uri=request.uri,
            sha256=request.sha256,
            size_bytes=request.size_bytes,
            format=request.format,
            license=request.license,
            source=source,
        )
    )
    await session.flush()
    return model
