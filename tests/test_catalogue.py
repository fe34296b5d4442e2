"""The job catalogue: rows with last state, next fire and sparkline; search, tags, switches."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from app.db import get_database, utcnow
from app.engine.signals import jobs_changed
from app.models import AuditEvent, Job, Run, StepRun
from tests.conftest import csrf_token
from tests.engine_helpers import make_job, python_step

HX = {"HX-Request": "true"}


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="job-([a-z0-9._-]+)"', html)


def add_run(app, job_id: str, state: str, seconds: float = 1.0, ago: float = 60, **fields) -> int:
    finished = utcnow() - timedelta(seconds=ago)
    with get_database(app).session_scope() as db:
        run = Run(
            job_id=job_id,
            trigger="manual",
            state=state,
            params={},
            started_at=finished - timedelta(seconds=seconds),
            finished_at=None if state in ("QUEUED", "RUNNING") else finished,
            **fields,
        )
        db.add(run)
        db.flush()
        return run.id


@pytest.fixture
def jobs(app):
    make_job(
        app,
        "nightly-copy",
        description="Copy the shop database",
        tags=["etl", "shop"],
        schedule="30 2 * * *",
        timezone="Europe/Paris",
    )
    make_job(
        app, "hourly-pull", description="Pull orders from the API", tags=["api"], interval="1h"
    )
    make_job(app, "ldap-mirror", description="Mirror the directory", tags=["etl"])


def test_catalogue_shows_description_tags_schedule_and_next_fire(app, as_user, jobs):
    page = as_user("vera").get("/jobs").get_data(as_text=True)
    assert row_ids(page) == ["hourly-pull", "ldap-mirror", "nightly-copy"]
    nightly = page.split('id="job-nightly-copy"')[1].split("</tr>")[0]
    assert "Copy the shop database" in nightly
    assert '<span class="chip">etl</span><span class="chip">shop</span>' in nightly
    assert "at 02:30 every day" in nightly
    fire = re.search(r'<time datetime="([^"]+)" title="([^"]+)"[^>]*>([^<]+)</time>', nightly)
    assert fire.group(1).endswith(("+01:00", "+02:00"))  # the job's timezone, with its offset
    assert fire.group(2).endswith("UTC") and "02:30 Europe/Paris" in fire.group(3)
    assert "manual only" in page.split('id="job-ldap-mirror"')[1].split("</tr>")[0]
    assert "never run" in nightly


def test_last_run_state_and_a_sparkline_of_recent_durations(app, as_user, jobs):
    add_run(app, "nightly-copy", "SUCCEEDED", seconds=10, ago=3600)
    add_run(app, "nightly-copy", "FAILED", seconds=5, ago=1800)
    last = add_run(app, "nightly-copy", "SUCCEEDED", seconds=20, ago=120)
    page = as_user("vera").get("/jobs").get_data(as_text=True)
    nightly = page.split('id="job-nightly-copy"')[1].split("</tr>")[0]
    assert f'href="/runs/{last}"' in nightly
    assert '<span class="state state-succeeded">SUCCEEDED</span>' in nightly
    assert re.search(
        r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC" data-relative '
        r'class="muted">2 min ago</time>',
        nightly,
    )
    # one bar (a vertical stroke) per run, oldest left, height by duration, a path per outcome
    paths = dict(re.findall(r'<path class="spark-(\w+)" d="([^"]+)"/>', nightly))
    assert paths == {"succeeded": "M2 20v-10M12 20v-20", "failed": "M7 20v-5"}
    title = f"Last 3 runs: 2 succeeded, 1 not; longest 20s; newest #{last} SUCCEEDED in 20s"
    assert f"<title>{title}</title>" in nightly


def test_catalogue_queries_do_not_grow_with_the_number_of_jobs(app, as_user):
    client = as_user("vera")
    engine = get_database(app).engine
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    counts = []
    for n in (2, 8):
        for i in range(n):
            make_job(app, f"job-{n}-{i}", schedule="0 * * * *")
            add_run(app, f"job-{n}-{i}", "SUCCEEDED")
            add_run(app, f"job-{n}-{i}", "RUNNING")
        statements.clear()
        sa.event.listen(engine, "before_cursor_execute", count)
        client.get("/jobs")
        sa.event.remove(engine, "before_cursor_execute", count)
        counts.append(len(statements))
    assert counts[0] == counts[1]


def test_a_running_job_shows_its_step_and_an_operator_cancels_it(app, as_user, jobs):
    run_id = add_run(app, "ldap-mirror", "RUNNING")
    with get_database(app).session_scope() as db:
        db.add(
            StepRun(
                run_id=run_id,
                step_name="hello",
                step_type="python",
                position=0,
                state="RUNNING",
                started_at=utcnow(),
            )
        )
    otto = as_user("otto")
    row = otto.get("/jobs").get_data(as_text=True).split('id="job-ldap-mirror"')[1]
    assert "on step <code>hello</code>" in row
    assert 'aria-label="Cancel run of ldap-mirror"' in row
    assert "Cancel run of" not in as_user("vera").get("/jobs").get_data(as_text=True)
    response = otto.post(
        f"/jobs/ldap-mirror/runs/{run_id}/cancel",
        headers=HX,
        data={"csrf_token": csrf_token(otto, "/jobs")},
    )
    assert response.status_code == 200
    assert row_ids(response.get_data(as_text=True)) == ["ldap-mirror"]
    assert "cancel requested" in response.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        assert db.get(Run, run_id).cancel_requested_at is not None


def test_search_as_you_type_filters_rows_and_pushes_the_url(as_user, jobs):
    client = as_user("vera")
    response = client.get("/jobs?q=shop", headers=HX)
    html = response.get_data(as_text=True)
    assert row_ids(html) == ["nightly-copy"]  # matched by description and tag
    assert html.startswith('<div id="jobs-catalogue"')  # the region only
    assert response.headers["HX-Push-Url"] == "/jobs?q=shop"
    assert "HX-Request" in response.headers["Vary"]
    assert row_ids(client.get("/jobs?q=PULL", headers=HX).get_data(as_text=True)) == ["hourly-pull"]
    assert row_ids(client.get("/jobs?q=mirror+directory").get_data(as_text=True)) == ["ldap-mirror"]
    assert "No job matches “zzz”" in client.get("/jobs?q=zzz", headers=HX).get_data(as_text=True)


def test_tag_chips_filter_and_the_address_can_be_shared(as_user, jobs):
    client = as_user("vera")
    page = client.get("/jobs?tag=etl").get_data(as_text=True)  # a shared link, full page
    assert row_ids(page) == ["ldap-mirror", "nightly-copy"]
    assert 'class="chip chip-active" aria-current="true">etl</a>' in page
    assert 'value="etl"' in page  # the search keeps the tag
    response = client.get("/jobs?tag=etl&q=shop", headers=HX)
    assert row_ids(response.get_data(as_text=True)) == ["nightly-copy"]
    assert response.headers["HX-Push-Url"] == "/jobs?q=shop&tag=etl"


def test_editor_switches_a_job_off_and_the_clock_is_told(app, as_user, jobs):
    heard = []
    jobs_changed.connect(heard.append, weak=False)
    eddie = as_user("eddie")
    try:
        response = eddie.post(
            "/jobs/nightly-copy/enabled",
            headers=HX,
            data={"enabled": "false", "csrf_token": csrf_token(eddie, "/jobs")},
        )
    finally:
        jobs_changed.disconnect(heard.append)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and row_ids(html) == ["nightly-copy"]
    assert 'role="switch" aria-checked="false"' in html
    assert "paused" in html and "next" not in html  # no next fire while off
    assert heard == [None]
    with get_database(app).session_scope() as db:
        assert db.get(Job, "nightly-copy").enabled is False
        event = db.scalar(sa.select(AuditEvent).where(AuditEvent.action == "job.disable"))
        assert event.target_id == "nightly-copy"


def test_viewer_sees_no_switch_and_gets_403(app, as_user, jobs):
    vera = as_user("vera")
    page = vera.get("/jobs").get_data(as_text=True)
    assert 'role="switch"' not in page and "Run with parameters" not in page
    response = vera.post(
        "/jobs/nightly-copy/enabled",
        data={"enabled": "false", "csrf_token": csrf_token(vera, "/jobs")},
    )
    assert response.status_code == 403
    with get_database(app).session_scope() as db:
        assert db.get(Job, "nightly-copy").enabled is True
    otto_page = as_user("otto").get("/jobs").get_data(as_text=True)
    assert 'role="switch"' not in otto_page  # job:edit, not job:run
    assert 'aria-label="Run nightly-copy with parameters"' in otto_page


def test_a_role_limited_to_tags_sees_only_those_jobs(app, as_user, jobs):
    from app.models import Role

    with get_database(app).session_scope() as db:
        db.scalar(sa.select(Role).where(Role.name == "viewer")).job_tags = ["api"]
    vera = as_user("vera")
    assert row_ids(vera.get("/jobs").get_data(as_text=True)) == ["hourly-pull"]
    assert vera.get("/jobs/nightly-copy/row").status_code == 404


def test_run_now_still_queues_with_defaults(app, as_user):
    make_job(app, "plain", steps=[python_step("hello", "print('hi')")])
    otto = as_user("otto")
    response = otto.post("/jobs/plain/run-now", data={"csrf_token": csrf_token(otto, "/jobs")})
    assert response.status_code == 302 and response.headers["Location"].startswith("/runs/")


def test_a_long_catalogue_comes_in_pages_of_fifty(app, as_user):
    for number in range(55):
        make_job(app, f"job-{number:02d}")
    client = as_user("vera")
    first = client.get("/jobs").get_data(as_text=True)
    assert row_ids(first) == [f"job-{n:02d}" for n in range(50)]
    more = re.search(r'href="([^"]+)" id="jobs-more"', first).group(1).replace("&amp;", "&")
    assert more == "/jobs?after=job-49"
    second = client.get(more).get_data(as_text=True)
    assert row_ids(second) == [f"job-{n:02d}" for n in range(50, 55)]
    assert 'id="jobs-more"' not in second


def fragments_until(live, count: int, deadline: float = 5.0) -> list[str]:
    """Collect pushed fragments until ``count`` arrived or the deadline passed."""
    import time

    received: list[str] = []
    stop = time.monotonic() + deadline
    while len(received) < count and time.monotonic() < stop:
        received += [m["args"][0] for m in live.get_received() if m["name"] == "fragment"]
        time.sleep(0.05)
    return received


def test_a_changed_run_makes_its_catalogue_row_refetch_itself_at_most_once_a_second(
    app, as_user, jobs
):
    from app.engine.signals import run_changed
    from app.live import socketio
    from app.live_catalogue import start_catalogue_push, stop_catalogue_push

    vera = as_user("vera")
    live = socketio.test_client(app, flask_test_client=vera)
    assert live.emit("join", "jobs", callback=True) == {"ok": True, "room": "jobs"}
    live.get_received()
    start_catalogue_push(app)
    try:
        run_id = add_run(app, "nightly-copy", "RUNNING")
        for _ in range(5):  # a burst of changes (steps starting, finishing)
            run_changed.send(run_id)
        pushed = fragments_until(live, 3, deadline=2.5)
    finally:
        stop_catalogue_push(app)
        live.disconnect()
    assert len(pushed) == 2  # the first at once, the rest of the burst once, a second later
    refresh = (
        '<span id="job-nightly-copy-refresh" hx-swap-oob="true" hx-get="/jobs/nightly-copy/row" '
        'hx-trigger="load" hx-target="closest tr" hx-swap="outerHTML"></span>'
    )
    assert all(html.strip() == refresh for html in pushed)  # the job id, nothing else
    row = vera.get("/jobs/nightly-copy/row", headers=HX).get_data(as_text=True)
    assert row_ids(row) == ["nightly-copy"] and "state-running" in row
    assert '<span id="job-nightly-copy-refresh"></span>' in row  # the next push's target


def clock_stores_the_schedules(app) -> None:
    """Let the clock's own sync write APScheduler's job store, without starting the clock."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    from app.crypto import vault
    from app.db import create_database_engine
    from app.scheduler import Clock, LeaderScheduler

    database = get_database(app)
    clock = Clock(database, vault(app), app.config["NOMAFLOW"].instance_path)
    engine = create_database_engine(database.url)
    clock.scheduler = LeaderScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine)}, timezone="UTC"
    )
    clock.scheduler.start(paused=True)
    clock.sync()
    clock.scheduler.shutdown(wait=False)
    engine.dispose()


def test_next_fires_come_from_the_clocks_store_on_every_database(any_db_app):
    from app.fires import STORE
    from tests.conftest import sign_in

    app = any_db_app
    make_job(app, "every-hour", interval="1h")
    make_job(app, "nightly", schedule="30 2 * * *")
    add_run(app, "nightly", "SUCCEEDED", seconds=3)
    clock_stores_the_schedules(app)
    stored = (utcnow() + timedelta(minutes=37)).replace(second=0, microsecond=0)
    with get_database(app).engine.begin() as connection:  # as if the clock added it 23 min ago
        connection.execute(
            sa.update(STORE).where(STORE.c.id == "job:every-hour"),
            {"next_run_time": stored.timestamp()},
        )
    client = app.test_client()
    sign_in(client, "vera")
    page = client.get("/jobs").get_data(as_text=True)
    hourly = page.split('id="job-every-hour"')[1].split("</tr>")[0]
    assert f'<time datetime="{stored.isoformat()}"' in hourly  # the clock's, not now + 1 h
    assert "spark-succeeded" in page.split('id="job-nightly"')[1].split("</tr>")[0]
    upcoming = client.get("/").get_data(as_text=True).split('id="dashboard-upcoming"')[1]
    assert upcoming.index("<code>every-hour</code>") < upcoming.index("</section>")
    assert f'datetime="{stored.isoformat()}"' in upcoming
    hourly_fires = [  # then every hour from the stored time, not also from "now"
        datetime.fromisoformat(moment)
        for moment in re.findall(
            r'<time datetime="([^"]+)"[^>]*>[^<]*</time> <code>every-hour</code>',
            upcoming.split("</section>")[0],
        )
    ]
    assert hourly_fires[0] == stored and len(hourly_fires) > 1
    gaps = {b - a for a, b in zip(hourly_fires, hourly_fires[1:], strict=False)}
    assert gaps == {timedelta(hours=1)}
    assert client.get("/schedule").status_code == 200
