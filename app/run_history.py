"""The run history page's query: filters that combine, keyset pages by run id, newest first.

Each filter has an index that leads with it and ends with the id we page by (app/models.py), so
a page reads its 50 rows from an index at any depth. The date range is on ``queued_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.list_filters import QueryFilter, day_errors, day_range_clauses
from app.models import RUN_STATES, RUN_TRIGGERS, Run, User

PAGE_SIZE = 50


@dataclass(frozen=True)
class RunFilter(QueryFilter):
    """What the history form asks for; empty strings mean "any"."""

    job: str = ""
    state: str = ""
    trigger: str = ""
    user: str = ""
    since: str = ""  # YYYY-MM-DD, UTC, inclusive
    until: str = ""  # YYYY-MM-DD, UTC, inclusive

    @classmethod
    def from_args(cls, args) -> tuple[RunFilter, dict[str, str]]:
        """Read the query string; return the filter and a message per unusable field."""
        values = {f.name: (args.get(f.name) or "").strip() for f in fields(cls)}
        values["state"] = values["state"].upper()
        errors = {}
        if values["state"] and values["state"] not in RUN_STATES:
            errors["state"] = f"unknown state {values['state']!r}"
        if values["trigger"] and values["trigger"] not in RUN_TRIGGERS:
            errors["trigger"] = f"unknown trigger {values['trigger']!r}"
        errors |= day_errors(values)
        for name in errors:
            values[name] = ""
        return cls(**values), errors


@dataclass
class HistoryPage:
    rows: list  # Row(id, job_id, state, trigger, queued_at, started_at, finished_at, username)
    older: int | None  # the `before` of the next page, None on the last one


def find_runs(
    db: Session,
    run_filter: RunFilter,
    before: int | None = None,
    limit: int = PAGE_SIZE,
    job_ids: set[str] | None = None,
) -> HistoryPage:
    """Return one page of runs matching ``run_filter`` with ids below ``before``.

    ``job_ids``: only runs of these jobs (app.visibility.visible_job_ids; None: every job).
    """
    query = (
        sa.select(
            Run.id,
            Run.job_id,
            Run.state,
            Run.trigger,
            Run.queued_at,
            Run.started_at,
            Run.finished_at,
            User.username,
        )
        .outerjoin(User, User.id == Run.triggered_by)
        .where(*filter_clauses(run_filter))
        .order_by(Run.id.desc())
        .limit(limit + 1)  # one more tells whether an older page exists
    )
    if before:
        query = query.where(Run.id < before)
    if job_ids is not None:
        query = query.where(Run.job_id.in_(sorted(job_ids)))
    rows = db.execute(query).all()
    older = rows[limit - 1].id if len(rows) > limit else None
    return HistoryPage(rows[:limit], older)


def filter_clauses(run_filter: RunFilter) -> list:
    clauses = []
    if run_filter.job:
        clauses.append(Run.job_id == run_filter.job)
    if run_filter.state:
        clauses.append(Run.state == run_filter.state)
    if run_filter.trigger:
        clauses.append(Run.trigger == run_filter.trigger)
    if run_filter.user:
        user_id = sa.select(User.id).where(User.username == run_filter.user).scalar_subquery()
        clauses.append(Run.triggered_by == user_id)
    return clauses + day_range_clauses(Run.queued_at, run_filter.since, run_filter.until)


def run_matches(db: Session, run_id: int, run_filter: RunFilter) -> bool:
    """Does this run belong on pages showing ``run_filter``? (One indexed lookup.)"""
    return (
        db.scalar(sa.select(Run.id).where(Run.id == run_id, *filter_clauses(run_filter)))
        is not None
    )


def history_row(db: Session, run_id: int):
    """The row of one run, as ``find_runs`` returns them."""
    rows = find_runs(db, RunFilter(), before=run_id + 1, limit=1).rows
    return rows[0] if rows and rows[0].id == run_id else None


def newest_page_floor(db: Session, size: int = PAGE_SIZE) -> int:
    """The smallest id on the unfiltered first page now (0 when there are fewer runs)."""
    floor = db.scalar(sa.select(Run.id).order_by(Run.id.desc()).offset(size - 1).limit(1))
    return floor or 0


def usernames(db: Session) -> list[str]:
    return list(db.scalars(sa.select(User.username).order_by(User.username)))
