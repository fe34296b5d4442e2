"""The job catalogue read model: jobs with their last run, recent durations and next fire.

A page costs the same few queries whatever the number of jobs: the id, description and tags of
every live job (filtered here: tags are JSON), the page's jobs, their newest runs (one UNION ALL
of an index range per job), the clock's stored next fires, and the step a running job is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.engine.history import duration_text
from app.fires import Triggers, next_fire_of, stored_next_fires
from app.models import Job, Run, StepRun, User
from app.visibility import may_see_job, may_see_tags

SPARK_RUNS = 20
SPARK_WIDTH, SPARK_HEIGHT = 100, 20
RUN_COLUMNS = (Run.id, Run.job_id, Run.state, Run.queued_at, Run.started_at, Run.finished_at,
               Run.cancel_requested_at)  # fmt: skip


@dataclass
class Sparkline:
    """Recent durations as one SVG path per outcome (a few hundred bytes a row)."""

    paths: dict[str, str]  # state (lower case) -> path data of its bars
    title: str
    count: int


@dataclass
class CatalogueRow:
    job: Job
    last_run: object | None = None  # a row of RUN_COLUMNS
    current_step: str | None = None
    next_fire: datetime | None = None
    spark: Sparkline | None = None

    @property
    def next_fire_utc(self) -> datetime | None:
        return self.next_fire.astimezone(UTC) if self.next_fire else None


@dataclass(frozen=True)
class JobCard:
    """What searching and tag filters look at, for every live job."""

    id: str
    description: str
    tags: tuple[str, ...]


def visible_cards(db: Session, user: User | None) -> list[JobCard]:
    """Return id, description and tags of the live jobs this user may see, by id."""
    query = sa.select(Job.id, Job.description, Job.tags).where(Job.deleted_at.is_(None))
    rows = db.execute(query.order_by(Job.id))
    return [
        JobCard(job_id, description or "", tuple(tags or ()))
        for job_id, description, tags in rows
        if may_see_tags(user, tags)
    ]


def matches(card: JobCard | Job, query: str, tag: str) -> bool:
    """Does the job match the search text (id, description, tags) and the tag filter?"""
    if tag and tag not in (card.tags or ()):
        return False
    words = query.lower().split()
    haystack = " ".join([card.id, card.description or "", *(card.tags or ())]).lower()
    return all(word in haystack for word in words)


def all_tags(cards: list[JobCard]) -> list[str]:
    return sorted({tag for card in cards for tag in card.tags})


def load_jobs(db: Session, ids: list[str]) -> list[Job]:
    """Return the full jobs with these ids, in the order given."""
    jobs = {job.id: job for job in db.scalars(sa.select(Job).where(Job.id.in_(ids)))}
    return [jobs[job_id] for job_id in ids if job_id in jobs]


def catalogue_rows(db: Session, jobs: list[Job], now: datetime) -> list[CatalogueRow]:
    """Return one row per job, in the order given."""
    if not jobs:
        return []
    recent = _recent_runs(db, [job.id for job in jobs])
    running = [runs[0].id for runs in recent.values() if runs[0].state == "RUNNING"]
    steps = _current_steps(db, running) if running else {}
    scheduled = [job for job in jobs if job.enabled and (job.schedule or job.interval)]
    stored = stored_next_fires(db) if scheduled else {}
    triggers = Triggers()
    rows = []
    for job in jobs:
        runs = recent.get(job.id, [])
        last = runs[0] if runs else None
        fire = next_fire_of(job, now, stored, triggers) if job in scheduled else None
        finished = [run for run in reversed(runs) if run.started_at and run.finished_at]
        rows.append(
            CatalogueRow(
                job=job,
                last_run=last,
                current_step=steps.get(last.id) if last else None,
                next_fire=fire.astimezone(_zone(job.timezone)) if fire else None,
                spark=sparkline(finished[-SPARK_RUNS:]),
            )
        )
    return rows


def catalogue_row(db: Session, job: Job, now: datetime) -> CatalogueRow:
    return catalogue_rows(db, [job], now)[0]


def _zone(name: str):
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return UTC


def _recent_runs(db: Session, ids: list[str]) -> dict[str, list]:
    """Return each job's newest SPARK_RUNS + 1 runs, newest first, in one statement.

    A UNION ALL of one ``job_id = ? ORDER BY id DESC LIMIT n`` per job: each an index range
    (ix_runs_job_id_id) however long the job's history; a window over every run of the page's
    jobs would read them all.
    """
    parts = [
        sa.select(*RUN_COLUMNS)
        .where(Run.job_id == job_id)
        .order_by(Run.id.desc())
        .limit(SPARK_RUNS + 1)
        .subquery()
        .select()
        for job_id in ids
    ]
    query = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    runs: dict[str, list] = {}
    for run in db.execute(query):
        runs.setdefault(run.job_id, []).append(run)
    for job_runs in runs.values():
        job_runs.sort(key=lambda run: run.id, reverse=True)
    return runs


def _current_steps(db: Session, run_ids: list[int]) -> dict[int, str]:
    rows = db.execute(
        sa.select(StepRun.run_id, StepRun.step_name)
        .where(StepRun.run_id.in_(run_ids), StepRun.state == "RUNNING")
        .order_by(StepRun.id)
    ).all()
    return {row.run_id: row.step_name for row in rows}


def sparkline(runs: list) -> Sparkline | None:
    """Lay out one bar per run (height by duration, oldest left) as path data per outcome."""
    if not runs:
        return None
    seconds = [max(0.0, (r.finished_at - r.started_at).total_seconds()) for r in runs]
    longest = max(seconds) or 1.0
    slot = SPARK_WIDTH / SPARK_RUNS
    paths: dict[str, list[str]] = {}
    for index, (run, length) in enumerate(zip(runs, seconds, strict=True)):
        height = max(2, round(SPARK_HEIGHT * length / longest))
        x = round(index * slot + slot / 2 - 0.5)  # a vertical stroke in the middle of its slot
        paths.setdefault(run.state.lower(), []).append(f"M{x} {SPARK_HEIGHT}v-{height}")
    newest, slowest = runs[-1], runs[seconds.index(max(seconds))]
    took = duration_text(newest.started_at, newest.finished_at, newest.finished_at)
    longest_text = duration_text(slowest.started_at, slowest.finished_at, slowest.finished_at)
    failed = sum(run.state != "SUCCEEDED" for run in runs)
    title = (
        f"Last {len(runs)} runs: {len(runs) - failed} succeeded, {failed} not; "
        f"longest {longest_text}; newest #{newest.id} {newest.state} in {took}"
    )
    return Sparkline({state: "".join(d) for state, d in paths.items()}, title, len(runs))


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
