from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import NotFoundError
from souverain.core.ids import new_id
from souverain.db.tables import UserRow


async def find_user_by_name(session: AsyncSession, *, name: str) -> UserRow | None:
    return (await session.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()


async def get_user(session: AsyncSession, *, user_id: str) -> UserRow:
    user = await session.get(UserRow, user_id)
    if user is None:
        raise NotFoundError("user not found")
    return user


async def ensure_user(session: AsyncSession, *, name: str, is_operator: bool = False) -> UserRow:
    user = await find_user_by_name(session, name=name)
    if user is None:
        user = UserRow(id=new_id("usr"), name=name, is_operator=is_operator)
        session.add(user)
        await session.flush()
    return user
