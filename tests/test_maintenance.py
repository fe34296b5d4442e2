"""Built-in jobs: the retention job prunes old runs and reports it; demo jobs run offline."""

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from app.builtin_jobs import MAINTENANCE_JOB, ensure_builtin_jobs
from app.crypto import vault
from app.db import get_database, utcnow
from app.engine.dispatch import dispatch
from app.engine.service import start_runner, stop_runner
from app.models import Job, LogLine, Run, StepRun
from tests.engine_helpers import log_messages, make_job, wait_for_run


@pytest.fixture
def runner(app):
    yield start_runner(app)
    stop_runner(app)


def job_ids(app):
    with get_database(app).session_scope() as db:
        return sorted(db.scalars(sa.select(Job.id).where(Job.deleted_at.is_(None))))


def test_the_maintenance_job_is_created_once_and_a_deleted_one_stays_deleted(app):
    ensure_builtin_jobs(get_database(app))
    ensure_builtin_jobs(get_database(app))
    assert job_ids(app) == ["nomaflow-maintenance"]
    with get_database(app).session_scope() as db:
        db.get(Job, "nomaflow-maintenance").deleted_at = utcnow()
    ensure_builtin_jobs(get_database(app))
    assert job_ids(app) == []


def test_demo_jobs_come_only_with_a_new_installation_and_all_succeed(app, runner):
    instance = app.config["NOMAFLOW"].instance_path
    server = make_server("127.0.0.1", 0, app, threaded=True)  # demo-healthz probes it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served_at = f"http://127.0.0.1:{server.server_port}"
    try:
        make_job(app, "mine")
        ensure_builtin_jobs(get_database(app), True, instance, served_at, vault(app))
        assert job_ids(app) == ["mine", "nomaflow-maintenance"]  # not added next to real jobs

        with get_database(app).session_scope() as db:
            db.execute(sa.delete(Job).where(Job.id == "mine"))
        ensure_builtin_jobs(get_database(app), True, instance, served_at, vault(app))
        demos = [j for j in job_ids(app) if j.startswith("demo-")]
        assert demos == ["demo-copy", "demo-flaky", "demo-healthz", "demo-heartbeat", "demo-hello"]
        documents = {}
        for job_id, params in (
            ("demo-hello", {"who": "newcomer", "count": "2"}),
            ("demo-heartbeat", {}),
            ("demo-flaky", {}),
            ("demo-copy", {}),
            ("demo-healthz", {}),
        ):
            run = dispatch(get_database(app), vault(app), job_id, "manual", params)
            documents[job_id] = wait_for_run(app, run.id, timeout=30)
            assert documents[job_id]["state"] == "SUCCEEDED", (job_id, documents[job_id])
    finally:
        server.shutdown()
    flaky = [m for _, _, m in log_messages(app, documents["demo-flaky"]["id"])]
    assert any("retrying in 2.0s" in m for m in flaky)  # demo-flaky shows retry at work
    copy = {s["name"]: s["output"] for s in documents["demo-copy"]["steps"]}
    assert copy["copy-customers"]["target_rows"] == 4
    assert copy["count"]["records"] == [{"n": 4}]
    assert (instance / "demo" / "reporting.db").exists()
    probe = documents["demo-healthz"]["steps"][0]["output"]
    assert probe["status"] == 200 and probe["json"]["database"] == "ok"


def add_run(db, job_id, state, days_old, lines=3):
    finished = utcnow() - timedelta(days=days_old)
    run = Run(
        job_id=job_id,
        trigger="cron",
        state=state,
        params={},
        queued_at=finished,
        started_at=finished,
        finished_at=finished,
    )
    db.add(run)
    db.flush()
    db.add(StepRun(run_id=run.id, step_name="s", step_type="python", position=0, state=state))
    for seq in range(1, lines + 1):
        db.add(LogLine(run_id=run.id, seq=seq, level="INFO", message=f"line {seq}"))
    return run.id


def test_retention_prunes_old_runs_keeps_recent_failed_and_newest_per_job(app, runner):
    ensure_builtin_jobs(get_database(app))
    make_job(app, "busy")
    make_job(app, "rare")
    with get_database(app).session_scope() as db:
        old_busy = [add_run(db, "busy", "SUCCEEDED", 120) for _ in range(25)]
        rare_old = add_run(db, "rare", "SUCCEEDED", 400)  # its job's only runs: kept
        failed_recent = add_run(db, "busy", "FAILED", 100)
        failed_ancient = add_run(db, "busy", "FAILED", 200)
        fresh = add_run(db, "busy", "SUCCEEDED", 1)
        replay = Run(
            job_id="busy",
            trigger="replay",
            state="SUCCEEDED",
            params={},
            replay_of_id=old_busy[0],
            finished_at=utcnow(),
        )
        db.add(replay)
    with get_database(app).session_scope() as db:  # keep_runs counts the newest 20 per job
        newest_busy = db.scalars(
            sa.select(Run.id).where(Run.job_id == "busy").order_by(Run.id.desc()).limit(20)
        ).all()
    run = dispatch(get_database(app), vault(app), MAINTENANCE_JOB["id"], "manual")
    document = wait_for_run(app, run.id)
    assert document["state"] == "SUCCEEDED"
    with get_database(app).session_scope() as db:
        left = set(db.scalars(sa.select(Run.id)))
        lines_left = db.scalar(
            sa.select(sa.func.count()).select_from(LogLine).where(LogLine.run_id.in_(old_busy))
        )
        assert db.get(Run, replay.id).replay_of_id is None
    expected_deleted = (set(old_busy) | {failed_ancient}) - set(newest_busy)
    assert left.isdisjoint(expected_deleted)
    assert {rare_old, failed_recent, fresh, run.id} <= left
    assert document["steps"][0]["output"] == {
        "runs": len(expected_deleted),
        "step_runs": len(expected_deleted),
        "log_lines": 3 * len(expected_deleted),
    }
    assert lines_left == 3 * len(set(old_busy) & set(newest_busy))
    assert f"deleted {len(expected_deleted)} runs" in " ".join(
        m for _, _, m in log_messages(app, run.id)
    )
