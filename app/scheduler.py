"""The clock: APScheduler in this process, started only while this process is the leader.

``start_clock`` is called at the process edge (``nomaflow serve``, wsgi.py), never by
``create_app()``, so tests and CLI commands never fire schedules by accident.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from app.db import create_database_engine
from app.leader import LeaderElection, lock_for

log = logging.getLogger(__name__)
EXTENSION = "nomaflow.clock"


class Clock:
    """Leader election plus the APScheduler instance it starts and stops."""

    def __init__(self, database_url: str, instance_path):
        self.database_url = database_url
        self.scheduler: BackgroundScheduler | None = None
        self._engine: sa.Engine | None = None
        self.election = LeaderElection(
            lock_for(database_url, instance_path), self._start_scheduler, self._stop_scheduler
        )

    @property
    def role(self) -> str:
        return self.election.role

    def start(self) -> None:
        self.election.start()

    def stop(self) -> None:
        self.election.stop()

    def _start_scheduler(self) -> None:
        # our own engine, disposed after shutdown: APScheduler's would warn at exit (TOOLING §5)
        self._engine = create_database_engine(self.database_url)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._engine)},
            timezone="UTC",
            # coalesce: after downtime run a missed fire once, not N times
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        self.scheduler.start()

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = None


def start_clock(app: Flask) -> Clock | None:
    """Start leader election for this process unless NOMAFLOW_SCHEDULER_ENABLED=false."""
    settings = app.config["NOMAFLOW"]
    if not settings.scheduler_enabled:
        log.info("scheduler role: disabled (NOMAFLOW_SCHEDULER_ENABLED=false)")
        return None
    if app.extensions.get(EXTENSION) is not None:  # started twice (reloader, tests): keep one
        return app.extensions[EXTENSION]
    clock = Clock(settings.database_url, settings.instance_path)
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
