"""The API's reads of runs: filtered keyset pages (the history page's filters) and log pages."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import LogLine, Run, StepRun, User
from app.run_history import RunFilter, filter_clauses
from app.visibility import visible_job_ids

from .errors import ApiError

RUN_PAGE, MAX_RUN_PAGE = 50, 500
LOG_PAGE, MAX_LOG_PAGE = 1000, 5000


def read_filter(args) -> tuple[RunFilter, list]:
    """Read job, state, trigger, since and until; 422 naming each unusable one.

    ``since`` / ``until`` take a date (2026-01-31: the whole day, UTC) or an ISO 8601 date and
    time (no offset means UTC); both are inclusive and compare with the run's queued_at.
    """
    given = {key: args.get(key, "") for key in ("job", "state", "trigger")}
    run_filter, fields = RunFilter.from_args(given)
    clauses = filter_clauses(run_filter)
    for name in ("since", "until"):
        text = (args.get(name) or "").strip()
        if not text:
            continue
        moment, whole_day = _parse_moment(text)
        if moment is None:
            fields[name] = f"{text!r} is not a date (2026-01-31) or a date and time"
        elif name == "since":
            clauses.append(Run.queued_at >= moment)
        elif whole_day:
            clauses.append(Run.queued_at < moment + timedelta(days=1))
        else:
            clauses.append(Run.queued_at <= moment)
    if fields:
        raise ApiError(422, "Some filters are not usable.", fields)
    return run_filter, clauses


def find_runs(
    db: Session, user, args, limit: int, after: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of runs the user may see, newest first, with ids below ``after``."""
    _, clauses = read_filter(args)
    visible = visible_job_ids(db, user)
    if visible is not None:
        clauses.append(Run.job_id.in_(visible))
    if after is not None:
        clauses.append(Run.id < after)
    rows = db.execute(
        sa.select(
            Run.id,
            Run.job_id,
            Run.state,
            Run.trigger,
            User.username,
            Run.queued_at,
            Run.started_at,
            Run.finished_at,
        )
        .outerjoin(User, User.id == Run.triggered_by)
        .where(*clauses)
        .order_by(Run.id.desc())
        .limit(limit + 1)  # one more says whether an older page exists
    ).all()
    page = [
        {
            "id": row.id,
            "job": row.job_id,
            "state": row.state,
            "trigger": row.trigger,
            "triggered_by": row.username,
            "queued_at": _iso(row.queued_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
        }
        for row in rows[:limit]
    ]
    return page, (page[-1]["id"] if len(rows) > limit else None)


def log_page(db: Session, run_id: int, after: int, limit: int) -> tuple[list[dict], bool]:
    """The run's log lines with seq > ``after``, in order, and whether more follow now."""
    rows = db.execute(
        sa.select(LogLine.seq, LogLine.ts, LogLine.level, LogLine.message, StepRun.step_name)
        .outerjoin(StepRun, StepRun.id == LogLine.step_run_id)
        .where(LogLine.run_id == run_id, LogLine.seq > after)
        .order_by(LogLine.seq)
        .limit(limit + 1)
    ).all()
    lines = [
        {
            "seq": row.seq,
            "ts": _iso(row.ts),
            "level": row.level,
            "message": row.message,
            "step": row.step_name,
        }
        for row in rows[:limit]
    ]
    return lines, len(rows) > limit


def _parse_moment(text: str) -> tuple[datetime | None, bool]:
    try:
        return datetime.combine(date.fromisoformat(text), time(), UTC), True
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None, False
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
