"""Reading runs back: the run view for pages, the run document (DESIGN §8), lists, logs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import LogLine, Run, StepRun, User


@dataclass
class RunView:
    run: Run
    step_runs: list[StepRun]
    triggered_by: str | None


def load_run_view(db: Session, run_id: int) -> RunView | None:
    run = db.get(Run, run_id)
    if run is None:
        return None
    step_runs = db.scalars(
        sa.select(StepRun).where(StepRun.run_id == run_id).order_by(StepRun.id)
    ).all()
    who = db.scalar(sa.select(User.username).where(User.id == run.triggered_by))
    return RunView(run, list(step_runs), who)


def run_document(view: RunView) -> dict[str, Any]:
    """The run as JSON: CLI --json, the REST API."""
    run = view.run
    latest: dict[str, StepRun] = {}
    attempts: dict[str, int] = {}
    for step_run in view.step_runs:
        latest[step_run.step_name] = step_run
        attempts[step_run.step_name] = max(attempts.get(step_run.step_name, 0), step_run.attempt)
    return {
        "id": run.id,
        "job": run.job_id,
        "job_version": run.job_version,
        "state": run.state,
        "reason": run.reason,
        "trigger": run.trigger,
        "triggered_by": view.triggered_by,
        "params": run.params,
        "log_level": run.log_level,
        "node": run.node,
        "scheduled_for": _iso(run.scheduled_for),
        "queued_at": _iso(run.queued_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "replay_of": run.replay_of_id,
        "steps": [
            {
                "name": s.step_name,
                "type": s.step_type,
                "state": s.state,
                "attempts": attempts[s.step_name],
                "error": s.error,
                "output": s.output,
                "metrics": s.metrics,
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
            }
            for s in sorted(latest.values(), key=lambda s: s.position)
        ],
    }


def list_runs(
    db: Session,
    job: str | None = None,
    state: str | None = None,
    trigger: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[Run]:
    """Newest runs first, filtered, paged by id (keyset: fast at any depth)."""
    query = sa.select(Run).order_by(Run.id.desc()).limit(limit)
    if job:
        query = query.where(Run.job_id == job)
    if state:
        query = query.where(Run.state == state.upper())
    if trigger:
        query = query.where(Run.trigger == trigger)
    if before_id:
        query = query.where(Run.id < before_id)
    return list(db.scalars(query))


def log_lines(db: Session, run_id: int, after: int = 0, batch: int = 5000) -> Iterator[LogLine]:
    """Yield a run's log lines in order, reading in batches (downloads of any size)."""
    while True:
        rows = db.scalars(
            sa.select(LogLine)
            .where(LogLine.run_id == run_id, LogLine.seq > after)
            .order_by(LogLine.seq)
            .limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def last_log_lines(db: Session, run_id: int, count: int) -> list[LogLine]:
    rows = db.scalars(
        sa.select(LogLine).where(LogLine.run_id == run_id).order_by(LogLine.seq.desc()).limit(count)
    ).all()
    return list(reversed(rows))


def duration_text(started: datetime | None, finished: datetime | None, now: datetime) -> str:
    if started is None:
        return "—"
    seconds = ((finished or now) - started).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
