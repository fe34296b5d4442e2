"""The clock in this process: cron with seconds fires on time; edits resync; downtime handled."""

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.db import get_database, utcnow
from app.engine.service import start_runner, stop_runner
from app.engine.signals import jobs_changed
from app.models import Job, Run
from app.scheduler import start_clock, stop_clock
from tests.engine_helpers import make_job


@pytest.fixture
def clocked_app(make_app):
    app = make_app(scheduler_enabled="true")
    yield app
    stop_clock(app)
    stop_runner(app)


def wait_for_leader(clock, timeout=10):
    assert clock.ready.wait(timeout), "the clock never became leader"
    assert clock.role == "leader"


def runs_of(app, job_id):
    with get_database(app).session_scope() as db:
        return db.execute(
            sa.select(Run.id, Run.trigger, Run.state, Run.scheduled_for, Run.queued_at, Run.reason)
            .where(Run.job_id == job_id)
            .order_by(Run.id)
        ).all()


def test_cron_with_a_seconds_field_fires_on_time(clocked_app):
    make_job(clocked_app, "every-2s", schedule="* * * * * */2", overlap="parallel")
    start_runner(clocked_app)
    clock = start_clock(clocked_app)
    assert start_clock(clocked_app) is clock  # started twice: one clock, no double fire
    wait_for_leader(clock)
    time.sleep(5.2)
    runs = runs_of(clocked_app, "every-2s")
    assert len(runs) >= 2
    for run in runs:
        assert run.trigger == "cron"
        assert run.scheduled_for.second % 2 == 0 and run.scheduled_for.microsecond == 0
        assert (run.queued_at - run.scheduled_for).total_seconds() < 1  # on time
    assert len({run.scheduled_for for run in runs}) == len(runs)  # never twice for one time


def test_disabling_or_deleting_a_job_takes_its_schedule_away_at_once(clocked_app):
    make_job(clocked_app, "ticking", interval="1s")
    clock = start_clock(clocked_app)
    wait_for_leader(clock)
    assert [j.id for j in clock.scheduler.get_jobs()] == ["job:ticking"]
    with get_database(clocked_app).session_scope() as db:
        db.get(Job, "ticking").enabled = False
    jobs_changed.send(None)
    deadline = time.monotonic() + 3
    while clock.scheduler.get_jobs():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_fire_missed_within_grace_runs_once_as_catch_up(clocked_app):
    due = (utcnow() - timedelta(minutes=2)).replace(second=0, microsecond=0)
    make_job(clocked_app, "daily", schedule=f"{due.minute} {due.hour} * * *", grace_seconds=300)
    _simulate_downtime(clocked_app, "job:daily", due)
    start_runner(clocked_app)
    start_clock(clocked_app)
    runs = _wait_for_runs(clocked_app, "daily")
    assert [(r.trigger, r.scheduled_for) for r in runs] == [("catch-up", due)]


def test_a_fire_missed_beyond_grace_is_recorded_missed(clocked_app):
    due = (utcnow() - timedelta(hours=2)).replace(second=0, microsecond=0)
    make_job(clocked_app, "nightly", schedule=f"{due.minute} {due.hour} * * *", grace_seconds=60)
    _simulate_downtime(clocked_app, "job:nightly", due)
    start_clock(clocked_app)
    runs = _wait_for_runs(clocked_app, "nightly")
    assert [(r.state, r.scheduled_for) for r in runs] == [("MISSED", due)]
    assert "missed: the scheduler was not running" in runs[0].reason


def _simulate_downtime(app, entry_id, due):
    """Run the clock once, then stop it with the entry's next fire set to ``due`` (past)."""
    clock = start_clock(app)
    wait_for_leader(clock)
    clock.scheduler.pause()
    clock.scheduler.modify_job(entry_id, next_run_time=due)
    stop_clock(app)


def _wait_for_runs(app, job_id, timeout=10):
    deadline = time.monotonic() + timeout
    while not runs_of(app, job_id):
        assert time.monotonic() < deadline, "no run was recorded"
        time.sleep(0.05)
    time.sleep(0.3)  # and no second one
    return runs_of(app, job_id)
