"""The one visibility rule (`core/access.py`) as a query filter.

`core.access.reach` decides what a caller sees of a kind of object; `visible` renders that
same decision over a table's columns, so a list and a lookup by id can never disagree with
each other or with `Reach.allows`. The user an object belongs to is the user of the key
that made it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select

from souverain.core.access import Reach
from souverain.db.tables import ApiKeyRow


def visible(
    reach: Reach,
    *,
    org: Any,
    project: Any = None,
    key: Any = None,
) -> ColumnElement[bool]:
    """True for the rows `reach` allows; `org`, `project` and `key` (the key that made
    the row) are the table's columns for them."""
    if reach.nothing:
        return false()
    owned: list[ColumnElement[bool]] = [org.is_not(None)]
    if reach.org_id is not None:
        owned.append(org == reach.org_id)
    if reach.project_id is not None:
        owned.append(project == reach.project_id)
    if reach.user_id is not None:
        keys = select(ApiKeyRow.id).where(ApiKeyRow.user_id == reach.user_id)
        owned.append(key.in_(keys))
    clause = and_(*owned)
    return or_(org.is_(None), clause) if reach.platform else clause
