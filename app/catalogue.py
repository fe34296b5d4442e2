"""The job catalogue read model: jobs with their last run, recent durations and next fire.

Three queries whatever the number of jobs: the jobs, each job's newest run (a max(id) per job
subquery), and the last SPARK_RUNS finished runs per job (a row_number() window). The step a
running job is on is a fourth, only when some job is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.engine.history import duration_text
from app.models import Job, Run, StepRun, User
from app.schedules import ScheduleError, build_trigger, next_fire_times
from app.visibility import may_see_job

SPARK_RUNS = 20
SPARK_WIDTH, SPARK_HEIGHT, SPARK_GAP = 100, 20, 1


@dataclass
class Bar:
    """One run in a sparkline: position and size inside the SVG, outcome, tooltip."""

    x: float
    y: float
    width: float
    height: float
    state: str
    title: str


@dataclass
class CatalogueRow:
    job: Job
    last_run: Run | None = None
    current_step: str | None = None
    next_fire: datetime | None = None
    bars: list[Bar] = field(default_factory=list)

    @property
    def next_fire_utc(self) -> datetime | None:
        return self.next_fire.astimezone(UTC) if self.next_fire else None


def visible_jobs(db: Session, user: User | None) -> list[Job]:
    """Return the live jobs this user may see (a role limited to tags sees only those jobs)."""
    jobs = db.scalars(sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)).all()
    return [job for job in jobs if may_see(job, user)]


def matches(job: Job, query: str, tag: str) -> bool:
    """Does the job match the search text (id, description, tags) and the tag filter?"""
    if tag and tag not in (job.tags or []):
        return False
    words = query.lower().split()
    haystack = " ".join([job.id, job.description or "", *(job.tags or [])]).lower()
    return all(word in haystack for word in words)


def all_tags(jobs: list[Job]) -> list[str]:
    return sorted({tag for job in jobs for tag in job.tags or []})


def catalogue_rows(db: Session, jobs: list[Job], now: datetime) -> list[CatalogueRow]:
    """Return one row per job, in the order given."""
    ids = [job.id for job in jobs]
    if not ids:
        return []
    newest = (
        sa.select(sa.func.max(Run.id).label("id"))
        .where(Run.job_id.in_(ids))
        .group_by(Run.job_id)
        .subquery()
    )
    last_runs = {
        run.job_id: run for run in db.scalars(sa.select(Run).join(newest, Run.id == newest.c.id))
    }
    running = [run.id for run in last_runs.values() if run.state == "RUNNING"]
    steps = _current_steps(db, running) if running else {}
    durations = _recent_durations(db, ids)
    rows = []
    for job in jobs:
        last = last_runs.get(job.id)
        rows.append(
            CatalogueRow(
                job=job,
                last_run=last,
                current_step=steps.get(last.id) if last else None,
                next_fire=next_fire(job, now),
                bars=sparkline(durations.get(job.id, [])),
            )
        )
    return rows


def catalogue_row(db: Session, job: Job, now: datetime) -> CatalogueRow:
    return catalogue_rows(db, [job], now)[0]


def next_fire(job: Job, now: datetime) -> datetime | None:
    """Return the job's next scheduled fire (aware, in its timezone), or None."""
    if not job.enabled:
        return None
    try:
        trigger = build_trigger(job.schedule, job.interval, job.timezone)
    except ScheduleError:
        return None  # a stored schedule that no longer parses: the editor shows why
    if trigger is None:
        return None
    fires = next_fire_times(trigger, 1, now)
    return fires[0] if fires else None


def _recent_durations(db: Session, ids: list[str]) -> dict[str, list]:
    """Return the last finished runs of each job (id, state, started_at, finished_at), oldest
    first."""
    position = sa.func.row_number().over(partition_by=Run.job_id, order_by=Run.id.desc()).label("n")
    ranked = (
        sa.select(Run.id, Run.job_id, Run.state, Run.started_at, Run.finished_at, position)
        .where(Run.job_id.in_(ids), Run.started_at.is_not(None), Run.finished_at.is_not(None))
        .subquery()
    )
    rows = db.execute(
        sa.select(ranked).where(ranked.c.n <= SPARK_RUNS).order_by(ranked.c.job_id, ranked.c.id)
    ).all()
    durations: dict[str, list] = {}
    for row in rows:
        durations.setdefault(row.job_id, []).append(row)
    return durations


def _current_steps(db: Session, run_ids: list[int]) -> dict[int, str]:
    rows = db.execute(
        sa.select(StepRun.run_id, StepRun.step_name)
        .where(StepRun.run_id.in_(run_ids), StepRun.state == "RUNNING")
        .order_by(StepRun.id)
    ).all()
    return {row.run_id: row.step_name for row in rows}


def sparkline(runs: list) -> list[Bar]:
    """Lay out bars (height by duration, one slot per run) for an inline SVG."""
    if not runs:
        return []
    seconds = [max(0.0, (r.finished_at - r.started_at).total_seconds()) for r in runs]
    longest = max(seconds) or 1.0
    slot = SPARK_WIDTH / SPARK_RUNS
    bars = []
    for index, (run, length) in enumerate(zip(runs, seconds, strict=True)):
        height = max(2.0, round(SPARK_HEIGHT * length / longest, 1))
        took = duration_text(run.started_at, run.finished_at, run.finished_at)
        bars.append(
            Bar(
                x=round(index * slot, 1),
                y=round(SPARK_HEIGHT - height, 1),
                width=round(slot - SPARK_GAP, 1),
                height=height,
                state=run.state.lower(),
                title=f"#{run.id} {run.state} in {took}",
            )
        )
    return bars


def ago(moment: datetime | None, now: datetime) -> str:
    """Say how long ago ``moment`` was, coarsely ("3 min ago")."""
    if moment is None:
        return ""
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds}s ago"


def may_see(job: Job, user: User | None) -> bool:
    return may_see_job(user, job)


def set_enabled(db: Session, job: Job, enabled: bool, user: User | None, ip: str = "") -> None:
    """Switch the job's schedule on or off (an operational switch: no new job version).

    The caller commits, then sends ``jobs_changed`` so the clock re-syncs at once.
    """
    if job.enabled == enabled:
        return
    job.enabled = enabled
    record_event(
        db,
        "job.enable" if enabled else "job.disable",
        user=user,
        target_type="job",
        target_id=job.id,
        ip=ip,
    )
