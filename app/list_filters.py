"""What the run history and the audit log filters share: fields that are the query string,
and a day range (``since`` / ``until``, whole days in UTC)."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa


class QueryFilter:
    """A frozen dataclass of strings read from, and written back to, the query string."""

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def query_args(self) -> dict[str, str]:
        """The non-empty fields, for links that keep the filter (the Older link)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def day_errors(values: dict[str, str]) -> dict[str, str]:
    """Name each of ``since`` / ``until`` that is not a date like 2025-01-31."""
    return {
        name: f"{values[name]!r} is not a date like 2025-01-31"
        for name in ("since", "until")
        if values.get(name) and parse_day(values[name]) is None
    }


def day_range_clauses(column, since: str, until: str) -> list:
    """``column`` from the start of ``since`` to the end of ``until`` (either may be empty)."""
    clauses: list[sa.ColumnElement] = []
    if start := parse_day(since):
        clauses.append(column >= start)
    if end := parse_day(until):
        clauses.append(column < end + timedelta(days=1))
    return clauses


def parse_day(text: str) -> datetime | None:
    try:
        return datetime.combine(date.fromisoformat(text), time(), UTC) if text else None
    except ValueError:
        return None
