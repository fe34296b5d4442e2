"""The clock: APScheduler in this process, started only while this process is the leader.

``start_clock`` is called at the process edge (``nomaflow serve``, wsgi.py), never by
``create_app()``, so tests and CLI commands never fire schedules by accident. Only schedules
live in APScheduler's job store; a fire goes straight through ``dispatch`` into the runs table.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from flask import Flask

from app.crypto import SecretsVault
from app.db import Database, create_database_engine, utcnow
from app.engine.dispatch import DispatchError, dispatch, record_missed
from app.engine.signals import jobs_changed
from app.leader import LeaderElection, lock_for
from app.models import Job, Run
from app.schedules import ScheduleError, build_trigger, next_fire_times

log = logging.getLogger(__name__)
EXTENSION = "nomaflow.clock"
SYNC_SECONDS = 5  # picks up jobs changed by another process (CLI import, another replica)
_active_clock: Clock | None = None


class LeaderScheduler(BackgroundScheduler):
    """APScheduler that looks at due fires only while running.

    On shutdown APScheduler 3 wakes its loop once more after the executors are gone, which
    would fail the due fires and move them on; left alone they stay due for the next leader.
    """

    def _process_jobs(self):
        if self.state != STATE_RUNNING:
            return None
        return super()._process_jobs()


def fire_job(job_id: str) -> None:
    """Fire a job's schedule (APScheduler calls this by its textual reference)."""
    if _active_clock is not None:
        _active_clock.fire(job_id)


class Clock:
    """Leader election plus the APScheduler instance it starts and stops."""

    def __init__(self, database: Database, vault: SecretsVault, instance_path):
        self.database, self.vault = database, vault
        self.scheduler: LeaderScheduler | None = None
        self.started_at: datetime | None = None
        self.ready = threading.Event()  # set once the leader's scheduler is synced and running
        self._engine: sa.Engine | None = None
        self._sync_now = threading.Event()
        self._stopping = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self.election = LeaderElection(
            lock_for(database.url, instance_path), self._start_scheduler, self._stop_scheduler
        )

    @property
    def role(self) -> str:
        return self.election.role

    def start(self) -> None:
        self.election.start()

    def stop(self) -> None:
        self._stopping.set()
        self.election.stop()

    def fire(self, job_id: str) -> None:
        with self.database.session_scope() as db:
            job = db.get(Job, job_id)
            if job is None or job.deleted_at is not None or not job.enabled:
                return
            trigger_kind = "cron" if job.schedule else "interval"
            entry = self.scheduler.get_job(f"job:{job_id}") if self.scheduler else None
            trigger = (
                entry.trigger if entry else build_trigger(job.schedule, job.interval, job.timezone)
            )
            scheduled = _last_fire_time(trigger, job.grace_seconds, utcnow())
            duplicate = db.scalar(
                sa.select(Run.id).where(Run.job_id == job_id, Run.scheduled_for == scheduled)
            )
        if duplicate is not None:  # fired twice for one time (restart race): keep one run
            return
        if self.started_at is not None and scheduled < self.started_at:
            trigger_kind = "catch-up"  # due while no scheduler ran, within the grace time
        try:
            dispatch(self.database, self.vault, job_id, trigger_kind, scheduled_for=scheduled)
        except DispatchError as error:
            log.error("schedule of %s could not queue a run: %s", job_id, error)

    def sync(self) -> None:
        """Make APScheduler's entries match the enabled, scheduled jobs in the database."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        with self.database.session_scope() as db:
            jobs = db.scalars(
                sa.select(Job).where(
                    Job.deleted_at.is_(None),
                    Job.enabled.is_(True),
                    sa.or_(Job.schedule.is_not(None), Job.interval.is_not(None)),
                )
            ).all()
        wanted = {f"job:{job.id}": job for job in jobs}
        for entry in scheduler.get_jobs():
            if entry.id not in wanted:
                scheduler.remove_job(entry.id)
        current = {entry.id: entry.name for entry in scheduler.get_jobs()}
        for entry_id, job in wanted.items():
            signature = f"{job.schedule}|{job.interval}|{job.timezone}|{job.grace_seconds}"
            if current.get(entry_id) == signature:
                continue  # unchanged: keep its next fire time, so downtime shows as catch-up
            try:
                trigger = build_trigger(job.schedule, job.interval, job.timezone)
            except ScheduleError as error:
                log.error("job %s has an unusable schedule: %s", job.id, error)
                continue
            scheduler.add_job(
                "app.scheduler:fire_job",
                trigger,
                args=[job.id],
                id=entry_id,
                name=signature,
                replace_existing=True,
                misfire_grace_time=job.grace_seconds,
                coalesce=True,  # after downtime run a missed fire once, not N times
                max_instances=1,
            )

    def _start_scheduler(self) -> None:
        global _active_clock
        # our own engine, disposed after shutdown: APScheduler's would warn at exit (TOOLING §5)
        self._engine = create_database_engine(self.database.url)
        self.scheduler = LeaderScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._engine)}, timezone="UTC"
        )
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        _active_clock = self
        self.started_at = utcnow()
        self.scheduler.start(paused=True)  # sync before due fires are looked at
        self.sync()
        self.scheduler.resume()
        jobs_changed.connect(self._on_jobs_changed, weak=False)
        self._sync_thread = threading.Thread(target=self._sync_loop, name="clock-sync", daemon=True)
        self._sync_thread.start()
        self.ready.set()

    def _stop_scheduler(self) -> None:
        global _active_clock
        self.ready.clear()
        jobs_changed.disconnect(self._on_jobs_changed)
        _active_clock = None
        self._sync_now.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _on_jobs_changed(self, *_args, **_kw) -> None:
        self._sync_now.set()

    def _sync_loop(self) -> None:
        while self.scheduler is not None and not self._stopping.is_set():
            self._sync_now.wait(SYNC_SECONDS)
            self._sync_now.clear()
            try:
                self.sync()
            except Exception:  # keep the clock alive; the next round retries
                log.exception("schedule sync failed")

    def _on_missed(self, event) -> None:
        job_id = event.job_id.removeprefix("job:")
        late = utcnow() - event.scheduled_run_time
        when = f"{event.scheduled_run_time:%Y-%m-%d %H:%M:%S %Z}"
        reason = (
            f"missed: the scheduler was not running at {when} "
            f"({late.total_seconds() / 60:.0f} min ago, beyond the grace time)"
        )
        try:
            record_missed(self.database, job_id, event.scheduled_run_time, reason)
        except DispatchError as error:
            log.warning("could not record a missed fire of %s: %s", job_id, error)


def _last_fire_time(trigger, grace_seconds: int, now: datetime) -> datetime:
    """The trigger's latest fire time at or before now: the fire being handled."""
    after = now - timedelta(seconds=grace_seconds + 60)
    last = None
    while True:  # bounded: each round moves forward, and stops at now
        fires = [f for f in next_fire_times(trigger, 100, after) if f <= now]
        if not fires:
            return last or now
        last = fires[-1]
        if len(fires) < 100:
            return last
        after = last


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = None


def start_clock(app: Flask) -> Clock | None:
    """Start leader election for this process unless NOMAFLOW_SCHEDULER_ENABLED=false."""
    from app.crypto import vault
    from app.db import get_database

    settings = app.config["NOMAFLOW"]
    runner = app.extensions.get("nomaflow.runner")  # its heartbeat tells this process's role
    if runner is not None:
        runner.clock_role = lambda: scheduler_role(app)
    if not settings.scheduler_enabled:
        log.info("scheduler role: disabled (NOMAFLOW_SCHEDULER_ENABLED=false)")
        return None
    if app.extensions.get(EXTENSION) is not None:  # started twice (reloader, tests): keep one
        return app.extensions[EXTENSION]
    clock = Clock(get_database(app), vault(app), settings.instance_path)
    app.extensions[EXTENSION] = clock
    clock.start()
    return clock


def stop_clock(app: Flask) -> None:
    clock = app.extensions.get(EXTENSION)
    if clock is not None:
        clock.stop()
        app.extensions[EXTENSION] = None


def scheduler_role(app: Flask) -> str:
    """Return ``leader``, ``standby`` or ``disabled`` (this process runs no clock)."""
    clock = app.extensions.get(EXTENSION)
    return clock.role if clock is not None else "disabled"
