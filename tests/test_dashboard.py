"""The dashboard shows what the runs table says, for a crafted set of runs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from app.db import utcnow
from app.engine.service import start_runner, stop_runner
from tests.engine_helpers import make_job, wait_for_run
from tests.test_history import add_runs
from tests.test_sql_query import add_sql_connector, query_step, trigger


def test_dashboard_numbers_match_the_database(app, as_user):
    make_job(app, "alpha", schedule="0 * * * *")
    make_job(app, "beta")
    now = utcnow()
    started = now - timedelta(minutes=3)
    running, *_ = add_runs(
        app,
        [
            {"state": "RUNNING", "trigger": "manual", "queued_at": now, "started_at": started},
            {"state": "QUEUED", "queued_at": now},
            {"state": "QUEUED", "job": "beta", "trigger": "manual", "queued_at": now},
            {"state": "FAILED", "queued_at": now - timedelta(hours=2)},
            {"state": "TIMED_OUT", "job": "beta", "queued_at": now - timedelta(hours=5)},
            {"state": "FAILED", "queued_at": now - timedelta(hours=30)},  # not in the last 24 h
            {"state": "SUCCEEDED", "queued_at": now - timedelta(hours=1)},
            {"state": "SUCCEEDED", "queued_at": now - timedelta(days=3)},
            {"state": "SUCCEEDED", "job": "beta", "queued_at": now - timedelta(days=8)},  # too old
        ],
    )
    html = as_user("vera").get("/").get_data(as_text=True)
    section = lambda name: html.split(f'id="dashboard-{name}"')[1].split("</section>")[0]  # noqa: E731
    assert f'href="/runs/{running}"' in section("running")
    assert re.search(r'Running now <span class="count">1</span>', html)
    assert re.search(r'Failures in the last 24 h <span class="count">2</span>', html)
    assert section("failures").count("<tr>") == 1 + 2  # header + two failures
    assert '<dd id="dashboard-queued">2</dd>' in html
    # alpha: 2 succeeded of 4 finished (the 30-hour-old failure counts: 7 days); beta: 0 of 1
    assert "50%" in section("rate-alpha") and ">4<" in section("rate-alpha")
    assert "0%" in section("rate-beta") and ">1<" in section("rate-beta")
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', html)]
    assert len(counts) == 24 and sum(counts) == 6 and counts[-1] == 3
    assert section("upcoming").count("<code>alpha</code>") == 10  # hourly: the next ten
    assert "disabled" in section("heartbeat")  # tests never start the clock
    assert "none yet" not in section("heartbeat")  # the cron runs above are fires


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)  # closes the connector pools


def test_the_pools_of_the_sql_connectors_a_job_used_show_with_their_use(
    app, runner, as_user, tmp_path
):
    add_sql_connector(app, "warehouse", f"sqlite:///{tmp_path / 'warehouse.db'}")
    otto = as_user("otto")
    pools = lambda: otto.get("/").get_data(as_text=True).split('id="dashboard-pools"')[1]  # noqa: E731
    assert "No SQL connector has been used by this process since it started" in pools()
    make_job(app, "count", steps=[query_step("one", "SELECT 1", connector="warehouse")])
    assert wait_for_run(app, trigger(app, "count").id)["state"] == "SUCCEEDED"
    row = pools().split('id="dashboard-pool-warehouse"')[1].split("</tr>")[0]
    figures = dict(re.findall(r'data-figure="([a-z-]+)">(\d+)', row))
    assert figures == {"checked-out": "0", "size": "5", "overflow": "0"}  # SQLite's QueuePool
    assert '<meter min="0" max="15" high="5" optimum="0" value="0">' in row  # 5 + 10 overflow
    with runner.connectors.sql_engine("warehouse").connect():  # as a running step holds one
        row = pools().split('id="dashboard-pool-warehouse"')[1].split("</tr>")[0]
        assert 'data-figure="checked-out">1<' in row and 'value="1"' in row
    assert 'id="dashboard-pools"' not in as_user("vera").get("/").get_data(as_text=True)


def test_home_is_the_dashboard_and_nav_marks_it(as_user):
    html = as_user("vera").get("/").get_data(as_text=True)
    assert '<a href="/" aria-current="page">Dashboard</a>' in html
    assert html.index(">Dashboard<") < html.index(">Jobs<") < html.index(">Runs<")
    assert html.index(">Runs<") < html.index(">Schedule<")


def test_running_region_is_its_own_partial(app, as_user):
    make_job(app, "alpha")
    add_runs(app, [{"state": "RUNNING", "queued_at": utcnow()}])
    html = as_user("vera").get("/dashboard/running").get_data(as_text=True)
    assert html.lstrip().startswith('<section id="dashboard-running"')


def test_an_unexpected_error_is_a_500_page_in_the_layout_with_an_incident_id(app, as_user, caplog):
    def broken():
        raise RuntimeError("the disk is on fire")

    app.add_url_rule("/broken", "broken", broken)
    vera = as_user("vera")
    response = vera.get("/broken")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "500 · Server error" in html and "aria-current" not in html.split("<main")[1]
    assert '<a href="/jobs"' in html  # the usual top bar: the same layout
    incident = re.search(r'<code id="error-incident">([0-9a-f]{8})</code>', html).group(1)
    assert "the disk is on fire" not in html  # details stay in the server log
    logged = [r for r in caplog.records if f"incident {incident}" in r.getMessage()]
    assert logged and "the disk is on fire" in str(logged[0].exc_info[1])


def test_a_500_whose_layout_fails_too_is_still_a_page_with_the_incident_id(app, as_user):
    database_gone = []

    def broken():
        database_gone.append(True)
        raise RuntimeError("the database went away")

    def layout_needs_the_database():
        if database_gone:
            raise RuntimeError("still gone")  # as the bell and the signed-in user would
        return {}

    app.add_url_rule("/broken", "broken", broken)
    app.context_processor(layout_needs_the_database)
    response = as_user("vera").get("/broken")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "500 · Server error" in html and re.search(r"Incident [0-9a-f]{8} is in the", html)
