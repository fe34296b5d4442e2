"""Admin → Settings: retention used by the maintenance run, runner pool size and where it comes
from, the default timezone of new jobs, and every process's scheduler role."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.builtin_jobs import MAINTENANCE_JOB, ensure_builtin_jobs
from app.crypto import vault
from app.db import get_database, utcnow
from app.engine.dispatch import dispatch
from app.engine.service import start_runner, stop_runner
from app.models import AuditEvent, Job, Run, Setting
from app.scheduler import start_clock, stop_clock
from tests.conftest import csrf_token, sign_in
from tests.engine_helpers import make_job, wait_for_run
from tests.test_history import add_runs


def post_setting(client, section: str, **values):
    data = {"csrf_token": csrf_token(client, "/settings"), **values}
    return client.post(f"/settings/{section}", data=data)


def test_retention_saved_here_is_what_the_maintenance_run_prunes_by(app, as_user):
    ensure_builtin_jobs(get_database(app))
    make_job(app, "nightly")
    ada = as_user("ada")
    saved = post_setting(ada, "retention", keep_days="10", keep_failed_days="20", keep_runs="0")
    assert saved.status_code == 302
    page = ada.get("/settings").get_data(as_text=True)
    assert 'name="keep_days" type="number" min="0" inputmode="numeric" value="10"' in page
    now = utcnow()
    ok_old, ok_recent, failed_mid, failed_old = add_runs(
        app,
        [  # the defaults (90 / 180 days) would keep all four
            {"job": "nightly", "state": "SUCCEEDED", "finished_at": now - timedelta(days=15)},
            {"job": "nightly", "state": "SUCCEEDED", "finished_at": now - timedelta(days=5)},
            {"job": "nightly", "state": "FAILED", "finished_at": now - timedelta(days=15)},
            {"job": "nightly", "state": "FAILED", "finished_at": now - timedelta(days=25)},
        ],
    )
    start_runner(app)
    try:
        run = dispatch(get_database(app), vault(app), MAINTENANCE_JOB["id"], "manual")
        assert wait_for_run(app, run.id)["state"] == "SUCCEEDED"
    finally:
        stop_runner(app)
    with get_database(app).session_scope() as db:
        left = set(db.scalars(sa.select(Run.id).where(Run.job_id == "nightly")))
        assert db.get(Job, MAINTENANCE_JOB["id"]).version == 2  # the change is a job version
        audited = db.scalar(
            sa.select(AuditEvent.detail).where(AuditEvent.action == "settings.update")
        )
    assert left == {ok_recent, failed_mid}
    assert audited["retention"][1] == {"keep_days": 10, "keep_failed_days": 20, "keep_runs": 0}


def test_default_timezone_fills_the_new_job_form_and_a_bad_one_is_refused(as_user):
    ada = as_user("ada")
    assert post_setting(ada, "timezone", default_timezone="Europe/Paris").status_code == 302
    new_job = ada.get("/jobs/new").get_data(as_text=True)
    assert 'name="timezone" type="text" value="Europe/Paris"' in new_job
    refused = post_setting(ada, "timezone", default_timezone="Mars/Olympus")
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    field = html.split('id="setting-default_timezone"')[1].split("</div>")[0]
    assert "not an IANA timezone name" in field and 'value="Mars/Olympus"' in html
    assert 'value="Europe/Paris"' in ada.get("/jobs/new").get_data(as_text=True)


def test_pool_size_is_stored_shown_with_its_source_and_used_at_next_start(app, as_user):
    ada = as_user("ada")
    page = ada.get("/settings").get_data(as_text=True)
    assert "<strong>4</strong> — from default" in page
    assert post_setting(ada, "runner", pool_size="0").status_code == 422
    assert post_setting(ada, "runner", pool_size="7").status_code == 302
    page = ada.get("/settings").get_data(as_text=True)
    assert "<strong>7</strong> — from saved setting" in page
    assert "Takes effect when Nomaflow next starts." in page
    runner = start_runner(app)
    try:
        assert runner.pool_size == 7
    finally:
        stop_runner(app)


def test_the_environment_wins_over_the_saved_pool_size(make_app, as_user):
    app = make_app(runner_pool_size="3")
    with get_database(app).session_scope() as db:
        db.add(Setting(key="runner.pool_size", value=9))

    client = app.test_client()
    sign_in(client, "ada")
    page = client.get("/settings").get_data(as_text=True)
    assert "<strong>3</strong> — from environment" in page
    assert "NOMAFLOW_RUNNER_POOL_SIZE" in page


@pytest.fixture
def clocked_app(make_app):
    app = make_app(scheduler_enabled="true")
    yield app
    stop_clock(app)
    stop_runner(app)


def test_scheduler_status_lists_each_process_with_its_role(clocked_app):

    runner = start_runner(clocked_app)
    clock = start_clock(clocked_app)
    assert clock.ready.wait(10)
    with get_database(clocked_app).session_scope() as db:  # a standby replica elsewhere
        seen = (utcnow() - timedelta(seconds=3)).isoformat()
        db.add(Setting(key="node:replica-2/77", value={"seen": seen, "role": "standby"}))
    deadline = time.monotonic() + 10
    while True:
        with get_database(clocked_app).session_scope() as db:
            beat = db.get(Setting, f"node:{runner.node}")
            if beat is not None and beat.value.get("role") == "leader":
                break
        assert time.monotonic() < deadline, "the heartbeat never said leader"
        time.sleep(0.1)
    client = clocked_app.test_client()
    sign_in(client, "ada")
    html = client.get("/settings").get_data(as_text=True)
    table = html.split('id="processes-table"')[1].split("</table>")[0]
    rows = table.split("<tr")[2:]
    assert runner.node in rows[0] and "leader" in rows[0] and "(this process)" in rows[0]
    assert "replica-2/77" in rows[1] and "standby" in rows[1]
    assert '<strong id="this-process-role">leader</strong>' in html
    assert 'href="/settings/channels"' in html


def test_viewers_and_operators_cannot_open_or_change_settings(app, as_user):
    for name in ("vera", "otto", "eddie"):
        client = as_user(name)
        assert client.get("/settings").status_code == 403
        token = csrf_token(client, "/jobs")
        for section, field in (("retention", "keep_days"), ("runner", "pool_size"),
                               ("timezone", "default_timezone")):  # fmt: skip
            answer = client.post(f"/settings/{section}", data={"csrf_token": token, field: "5"})
            assert answer.status_code == 403
    with get_database(app).session_scope() as db:
        assert db.scalar(sa.select(Setting).where(Setting.key.like("runner.%"))) is None
