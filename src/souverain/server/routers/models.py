from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse

from souverain.catalog import model_cards, models
from souverain.core.schemas.models import Model, ModelArtifact, ModelRegisterRequest
from souverain.db.tables import ModelArtifactRow, ModelRow
from souverain.server.deps import PrincipalDep, SessionDep, StateDep

router = APIRouter(prefix="/api/models", tags=["models"])


def _out(row: ModelRow, artifacts: list[ModelArtifactRow]) -> Model:
    return Model(
        id=row.id,
        name=row.name,
        owner_org_id=row.owner_org_id,
        engine=row.engine,
        capabilities=list(row.capabilities),
        reasoning_tags=row.reasoning_tags,
        context_length=row.context_length,
        description=row.description,
        artifacts=[ModelArtifact.model_validate(a) for a in artifacts],
        created_at=row.created_at,
    )


@router.get("", response_model=list[Model])
async def list_models(principal: PrincipalDep, session: SessionDep) -> list[Model]:
    """The registry: platform models and your organisation's own."""
    rows = await models.list_models(session, principal=principal)
    artifacts = await models.artifacts_of(session, model_ids=[r.id for r in rows])
    return [_out(row, artifacts[row.id]) for row in rows]


@router.post("", response_model=Model, status_code=status.HTTP_201_CREATED)
async def register_model(
    body: ModelRegisterRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Model:
    """Register a model artifact. Platform models need the operator; `org` makes it private to
    an organisation. Tenants bring weights from a hub (`hf://owner/repo/file`); `file://`
    paths are for operators, inside the installation's model roots. Engines check the
    sha256 on each node before serving."""
    row = await models.register_model(
        session,
        principal=principal,
        request=body,
        model_roots=state.settings.model_roots_or_default,
    )
    artifacts = await models.artifacts_of(session, model_ids=[row.id])
    await session.commit()
    return _out(row, artifacts[row.id])


@router.get("/{model:path}/card", summary="The model card (EU AI Act, Annex XI)")
async def model_card(
    model: str,
    principal: PrincipalDep,
    session: SessionDep,
    format: Literal["json", "markdown"] = Query(default="json"),
) -> Any:
    """Description, training data provenance, compute, energy and where it was trained;
    `format=markdown` for the same as a document."""
    doc = await model_cards.card(session, principal=principal, ref=model)
    if format == "markdown":
        return PlainTextResponse(model_cards.markdown(doc), media_type="text/markdown")
    return doc


@router.get("/{model:path}", response_model=Model)
async def get_model(model: str, principal: PrincipalDep, session: SessionDep) -> Model:
    row = await models.get_model(session, principal=principal, ref=model)
    artifacts = await models.artifacts_of(session, model_ids=[row.id])
    return _out(row, artifacts[row.id])
