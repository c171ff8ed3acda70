"""The price book: per model, per million input and output tokens. Append-only, so the
price in force when a request was admitted is the one it is charged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.access import check_operator
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.db.metering import PriceRow
from souverain.db.tables import ModelRow
from souverain.evidence.audit import actor_of, record


@dataclass(frozen=True)
class Price:
    id: str
    model_id: str
    currency: str
    input_per_million: float
    output_per_million: float
    created_at: datetime

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


def _price(row: PriceRow) -> Price:
    return Price(
        row.id,
        row.model_id,
        row.currency,
        row.input_per_million,
        row.output_per_million,
        row.created_at,
    )


async def set_price(
    session: AsyncSession,
    *,
    principal: Principal,
    model_ref: str,
    currency: str,
    input_per_million: float,
    output_per_million: float,
) -> tuple[Price, ModelRow]:
    check_operator(principal)
    model = await models.get_model(session, principal=principal, ref=model_ref)
    row = PriceRow(
        id=new_id("prc"),
        model_id=model.id,
        currency=currency,
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        created_by=principal.user_id,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="price.set",
        target_type="model",
        target_id=model.id,
        details={
            "currency": currency,
            "input_per_million": input_per_million,
            "output_per_million": output_per_million,
        },
    )
    return _price(row), model


async def current_prices(session: AsyncSession) -> dict[str, Price]:
    """Model id -> the latest price."""
    rows = (
        await session.execute(select(PriceRow).order_by(PriceRow.created_at, PriceRow.id))
    ).scalars()
    return {row.model_id: _price(row) for row in rows}
