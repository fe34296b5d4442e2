"""Upcoming fires of the enabled, scheduled jobs: what the clock stored, or computed, bounded.

The clock (APScheduler's SQLAlchemy job store, table ``apscheduler_jobs``) keeps each job's next
fire as a float epoch; reading that column is one cheap query whatever the number of jobs. Where
it has nothing usable (the clock never ran on this database, or is behind), fires are computed
from the same triggers the clock uses — each distinct schedule once, since building a trigger
costs ~0.1 ms and a thousand jobs share a handful of schedules.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session

from app.models import Job
from app.schedules import ScheduleError, build_trigger, next_fire_times

MAX_FIRES_TOTAL = 5000  # fire computations per page, whatever the number of schedules
MAX_FIRES_PER_JOB = 2100  # every 5 minutes for a week; a minutely job is summarised
NAMES_PER_HOUR = 10  # an hour of the week view names at most this many jobs
STORE = sa.table("apscheduler_jobs", sa.column("id", sa.String), sa.column("next_run_time"))
STORE_PREFIX = "job:"  # app.scheduler names each entry "job:<job id>"
_stores_seen: set[str] = set()  # databases known to hold the clock's table (it never goes away)


@dataclass(frozen=True)
class Fire:
    job_id: str
    at: datetime  # aware, UTC
    trigger: str  # cron | interval


@dataclass
class FireGroup:
    """Jobs that share one schedule (expression or interval, and timezone): fires computed once."""

    jobs: list[str]
    kind: str  # cron | interval
    times: list[datetime]  # aware, UTC, in order
    truncated: bool  # fires more often than the bound lists


@dataclass
class FirePlan:
    groups: list[FireGroup]

    @property
    def fires(self) -> list[Fire]:
        """Every fire of every job, in time order (for small plans: a job per fire)."""
        fires = [
            Fire(job_id, at, group.kind)
            for group in self.groups
            for job_id in group.jobs
            for at in group.times
        ]
        return sorted(fires, key=lambda fire: (fire.at, fire.job_id))

    @property
    def truncated(self) -> set[str]:
        return {job_id for group in self.groups if group.truncated for job_id in group.jobs}

    @property
    def total(self) -> int:
        return sum(len(group.jobs) * len(group.times) for group in self.groups)


@dataclass
class HourSlot:
    """One hour of the week view, in the viewer's zone: how many fires, of how many jobs."""

    start: datetime  # aware, in the viewer's zone
    fires: int = 0
    jobs: int = 0
    entries: list[tuple[str, list[datetime]]] = field(default_factory=list)  # named jobs

    @property
    def collides(self) -> bool:
        return self.jobs > 1


class Triggers:
    """Build each distinct schedule's trigger once (per page: intervals count from now)."""

    def __init__(self):
        self._built: dict[tuple, BaseTrigger | None] = {}
        self._first: dict[tuple, datetime | None] = {}

    def get(self, job) -> BaseTrigger | None:
        key = schedule_key(job)
        if key not in self._built:
            try:
                self._built[key] = build_trigger(job.schedule, job.interval, job.timezone)
            except ScheduleError:
                self._built[key] = None  # unusable: the clock leaves it out too
        return self._built[key]

    def first_after(self, job, now: datetime) -> datetime | None:
        key = (*schedule_key(job), now)
        if key not in self._first:
            trigger = self.get(job)
            times = next_fire_times(trigger, 1, after=now) if trigger else []
            self._first[key] = times[0] if times else None
        return self._first[key]


def schedule_key(job) -> tuple:
    return (job.schedule, job.interval, job.timezone)


def scheduled_jobs(db: Session, visible: Iterable[str] | None = None) -> list:
    """Return (id, schedule, interval, timezone) of the enabled, scheduled jobs, by id.

    ``visible``: the job ids the viewer may see (None: all, see app.visibility).
    """
    query = (
        sa.select(Job.id, Job.schedule, Job.interval, Job.timezone)
        .where(
            Job.deleted_at.is_(None),
            Job.enabled.is_(True),
            sa.or_(Job.schedule.is_not(None), Job.interval.is_not(None)),
        )
        .order_by(Job.id)
    )
    jobs = db.execute(query).all()
    if visible is not None:
        allowed = set(visible)
        jobs = [job for job in jobs if job.id in allowed]
    return jobs


def stored_next_fires(db: Session) -> dict[str, datetime]:
    """Return the next fire the clock stored for each job (aware, UTC); empty without a clock."""
    bind = db.get_bind()
    url = str(bind.url)
    if url not in _stores_seen:
        if not sa.inspect(db.connection()).has_table(STORE.name):
            return {}
        _stores_seen.add(url)
    rows = db.execute(sa.select(STORE.c.id, STORE.c.next_run_time)).all()
    return {
        entry_id.removeprefix(STORE_PREFIX): datetime.fromtimestamp(float(moment), UTC)
        for entry_id, moment in rows
        if moment is not None and entry_id.startswith(STORE_PREFIX)
    }


def next_fire_of(job, now: datetime, stored: dict[str, datetime], triggers: Triggers):
    """Return the job's next fire after ``now``: the clock's own if it has one, else computed."""
    moment = stored.get(job.id)
    if moment is not None and moment > now:
        return moment
    return triggers.first_after(job, now)


def upcoming_fires(
    db: Session,
    now: datetime,
    days: float = 7,
    per_job: int = MAX_FIRES_PER_JOB,
    total: int = MAX_FIRES_TOTAL,
    visible: Iterable[str] | None = None,
) -> FirePlan:
    """Return the fires in (now, now + days] of each schedule, at most ``per_job`` for each.

    Jobs sharing a schedule share one computation; with many distinct schedules each gets a
    smaller share of ``total``. Interval jobs count from ``now`` here (the clock counts from
    when it added them), so their times are indicative; an unusable schedule is left out.
    """
    end = now + timedelta(days=days)
    by_schedule: dict[tuple, list] = {}
    for job in scheduled_jobs(db, visible):
        by_schedule.setdefault(schedule_key(job), []).append(job)
    share = min(per_job, max(24, total // max(1, len(by_schedule))))
    triggers, groups = Triggers(), []
    for members in by_schedule.values():
        trigger = triggers.get(members[0])
        if trigger is None:
            continue
        times = [t for t in next_fire_times(trigger, share + 1, after=now) if t <= end]
        kind = "cron" if members[0].schedule else "interval"
        groups.append(
            FireGroup(
                jobs=[job.id for job in members],
                kind=kind,
                times=[t.astimezone(UTC) for t in times[:share]],
                truncated=len(times) > share,
            )
        )
    return FirePlan(groups)


def next_fires(
    db: Session,
    now: datetime,
    count: int,
    days: float = 2,
    visible: Iterable[str] | None = None,
) -> list[Fire]:
    """Return the first ``count`` fires after ``now`` across all jobs (within ``days``).

    A merge: each job's next fire (stored by the clock, or computed), then only the job whose
    fire was taken moves on, so the cost is one query plus ``count`` trigger steps.
    """
    end = now + timedelta(days=days)
    stored, triggers = stored_next_fires(db), Triggers()
    heap = []
    for job in scheduled_jobs(db, visible):
        first = next_fire_of(job, now, stored, triggers)
        if first is not None and first <= end:
            kind = "cron" if job.schedule else "interval"
            heap.append((first.timestamp(), job.id, first, kind, job))
    heapq.heapify(heap)
    fires: list[Fire] = []
    while heap and len(fires) < count:
        _, job_id, at, kind, job = heapq.heappop(heap)
        fires.append(Fire(job_id, at.astimezone(now.tzinfo), kind))
        following = _fire_after(triggers.get(job), at)
        if following and following[0] <= end:
            heapq.heappush(heap, (following[0].timestamp(), job_id, following[0], kind, job))
    return fires


def _fire_after(trigger: BaseTrigger | None, at: datetime) -> list[datetime]:
    """The fire that follows ``at``: an interval steps on from ``at`` itself (the clock's stored
    time), not from when this page built its trigger, or one job would show two fires a few
    seconds apart."""
    if isinstance(trigger, IntervalTrigger):
        return [at + trigger.interval]
    return next_fire_times(trigger, 1, after=at) if trigger else []


def hours_of(plan: FirePlan, zone, names: int = NAMES_PER_HOUR) -> dict[date, list[HourSlot]]:
    """Group the plan's fires by day and hour in ``zone``; each hour names its first jobs."""
    slots: dict[datetime, HourSlot] = {}
    named: dict[datetime, list[tuple[datetime, str, list[datetime]]]] = {}
    for group in plan.groups:
        by_hour: dict[datetime, list[datetime]] = {}
        for moment in group.times:
            local = moment.astimezone(zone)
            by_hour.setdefault(local.replace(minute=0, second=0, microsecond=0), []).append(local)
        for hour, times in by_hour.items():
            slot = slots.setdefault(hour, HourSlot(hour))
            slot.fires += len(group.jobs) * len(times)
            slot.jobs += len(group.jobs)
            candidates = named.setdefault(hour, [])
            candidates += [(times[0], job_id, times) for job_id in group.jobs[:names]]
    days: dict[date, list[HourSlot]] = {}
    for hour in sorted(slots):
        slot = slots[hour]
        chosen = sorted(named[hour], key=lambda entry: (entry[0], entry[1]))[:names]
        slot.entries = [(job_id, times) for _, job_id, times in chosen]
        days.setdefault(hour.date(), []).append(slot)
    return days


def collisions(fires: list[Fire], zone) -> dict[datetime, list[str]]:
    """Hours (start, in ``zone``) in which two or more different jobs fire."""
    jobs_by_hour: dict[datetime, set[str]] = {}
    for fire in fires:
        hour = fire.at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
        jobs_by_hour.setdefault(hour, set()).add(fire.job_id)
    return {hour: sorted(jobs) for hour, jobs in jobs_by_hour.items() if len(jobs) > 1}
