"""Upcoming fires of every enabled, scheduled job, from the same triggers the clock uses."""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import Job
from app.schedules import ScheduleError, build_trigger, next_fire_times

MAX_FIRES_TOTAL = 5000  # bounds the page's work with a thousand scheduled jobs
MAX_FIRES_PER_JOB = 500  # a "* * * * *" job would give 10,080 fires a week; the view is bounded


@dataclass(frozen=True)
class Fire:
    job_id: str
    at: datetime  # aware, UTC
    trigger: str  # cron | interval


@dataclass
class FirePlan:
    fires: list[Fire]  # in time order
    truncated: set[str]  # jobs that fire more often than the per-job bound shows


def scheduled_jobs(db: Session) -> list[Job]:
    return list(
        db.scalars(
            sa.select(Job)
            .where(
                Job.deleted_at.is_(None),
                Job.enabled.is_(True),
                sa.or_(Job.schedule.is_not(None), Job.interval.is_not(None)),
            )
            .order_by(Job.id)
        )
    )


def upcoming_fires(
    db: Session,
    now: datetime,
    days: float = 7,
    per_job: int = MAX_FIRES_PER_JOB,
    total: int = MAX_FIRES_TOTAL,
) -> FirePlan:
    """Return every fire in (now, now + days], at most ``per_job`` for each job.

    Interval jobs count from ``now`` here (the clock counts from when it added them), so their
    times are indicative; a job with an unusable schedule is left out, as the clock does.
    """
    end = now + timedelta(days=days)
    fires: list[Fire] = []
    truncated: set[str] = set()
    jobs = scheduled_jobs(db)
    # each fire costs a trigger computation: with many jobs, fewer fires of each are shown
    per_job = min(per_job, max(10, total // max(1, len(jobs))))
    for job in jobs:
        try:
            trigger = build_trigger(job.schedule, job.interval, job.timezone)
        except ScheduleError:
            continue
        times = next_fire_times(trigger, per_job + 1, after=now)
        within = [t for t in times if t <= end]
        if len(within) > per_job:
            truncated.add(job.id)
            within = within[:per_job]
        kind = "cron" if job.schedule else "interval"
        fires += [Fire(job.id, t.astimezone(now.tzinfo), kind) for t in within]
    fires.sort(key=lambda fire: (fire.at, fire.job_id))
    return FirePlan(fires, truncated)


def next_fires(db: Session, now: datetime, count: int, days: float = 2) -> list[Fire]:
    """Return the first ``count`` fires after ``now`` across all jobs (within ``days``).

    A merge: one next fire per job, then only the job whose fire was taken moves on, so the
    cost is one trigger step per job plus ``count``, not ``count`` per job.
    """
    end = now + timedelta(days=days)
    heap = []
    for job in scheduled_jobs(db):
        try:
            trigger = build_trigger(job.schedule, job.interval, job.timezone)
        except ScheduleError:
            continue
        first = next_fire_times(trigger, 1, after=now)
        if first and first[0] <= end:
            kind = "cron" if job.schedule else "interval"
            heap.append((first[0].timestamp(), job.id, first[0], kind, trigger))
    heapq.heapify(heap)
    fires: list[Fire] = []
    while heap and len(fires) < count:
        _, job_id, at, kind, trigger = heapq.heappop(heap)
        fires.append(Fire(job_id, at.astimezone(now.tzinfo), kind))
        following = next_fire_times(trigger, 1, after=at)
        if following and following[0] <= end:
            heapq.heappush(heap, (following[0].timestamp(), job_id, following[0], kind, trigger))
    return fires


def collisions(fires: list[Fire], zone) -> dict[datetime, list[str]]:
    """Hours (start, in ``zone``) in which two or more different jobs fire."""
    jobs_by_hour: dict[datetime, set[str]] = {}
    for fire in fires:
        hour = fire.at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
        jobs_by_hour.setdefault(hour, set()).add(fire.job_id)
    return {hour: sorted(jobs) for hour, jobs in jobs_by_hour.items() if len(jobs) > 1}


def fires_per_job(fires: list[Fire]) -> Counter:
    return Counter(fire.job_id for fire in fires)
