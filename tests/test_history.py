"""The run history page: filters that combine, keyset pages, dates, live rows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.engine.signals import run_changed
from app.live import socketio, start_live_push, stop_live_push
from app.models import Run, User
from app.run_history import RunFilter, filter_clauses
from tests.engine_helpers import make_job

ROW = re.compile(r'<tr id="run-(\d+)-row"')
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def add_runs(app, specs) -> list[int]:
    """Insert runs from dicts (job, state, trigger, user, queued_at); return their ids."""
    with get_database(app).session_scope() as db:
        users = {u.username: u.id for u in db.scalars(sa.select(User))}
        runs = []
        for spec in specs:
            spec = dict(spec)
            user = spec.pop("user", None)
            runs.append(
                Run(
                    job_id=spec.pop("job", "alpha"),
                    state=spec.pop("state", "SUCCEEDED"),
                    trigger=spec.pop("trigger", "cron"),
                    triggered_by=users[user] if user else None,
                    queued_at=spec.pop("queued_at", T0),
                    params={},
                    **spec,
                )
            )
        db.add_all(runs)
        db.flush()
        return [run.id for run in runs]


def ids_on(client, url: str, **headers) -> list[int]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    return [int(i) for i in ROW.findall(response.get_data(as_text=True))]


@pytest.fixture
def jobs(app):
    make_job(app, "alpha")
    make_job(app, "beta")


def test_viewer_sees_history_newest_first_with_links_and_durations(app, as_user, jobs):
    started = T0 + timedelta(seconds=5)
    first, second = add_runs(
        app,
        [
            {"started_at": started, "finished_at": started + timedelta(seconds=75)},
            {"job": "beta", "state": "FAILED", "trigger": "manual", "user": "otto"},
        ],
    )
    page = as_user("vera").get("/runs").get_data(as_text=True)
    assert ids_on(as_user("vera"), "/runs") == [second, first]
    assert f'href="/runs/{first}"' in page
    assert "1m 15s" in page
    assert "by otto" in page
    assert 'id="runs-unfiltered-tbody"' in page


def test_filters_combine(app, as_user, jobs):
    ids = add_runs(
        app,
        [
            {"job": "alpha", "state": "FAILED", "trigger": "manual", "user": "otto"},
            {"job": "alpha", "state": "FAILED", "trigger": "cron"},
            {"job": "alpha", "state": "SUCCEEDED", "trigger": "manual", "user": "otto"},
            {"job": "beta", "state": "FAILED", "trigger": "manual", "user": "otto"},
            {"job": "alpha", "state": "FAILED", "trigger": "manual", "user": "ada"},
        ],
    )
    vera = as_user("vera")
    assert ids_on(vera, "/runs?job=alpha") == [ids[4], ids[2], ids[1], ids[0]]
    assert ids_on(vera, "/runs?job=alpha&state=failed") == [ids[4], ids[1], ids[0]]
    assert ids_on(vera, "/runs?job=alpha&state=FAILED&trigger=manual") == [ids[4], ids[0]]
    url = "/runs?job=alpha&state=FAILED&trigger=manual&user=otto"
    assert ids_on(vera, url) == [ids[0]]
    assert ids_on(vera, "/runs?user=nobody") == []
    page = vera.get("/runs?job=alpha").get_data(as_text=True)
    assert 'id="runs-unfiltered-tbody"' not in page  # live inserts only on the unfiltered page


def test_date_range_is_inclusive_in_utc(app, as_user, jobs):
    day = datetime(2025, 3, 10, tzinfo=UTC)
    ids = add_runs(
        app,
        [
            {"queued_at": day - timedelta(microseconds=1)},  # 9 March, 23:59:59.999999
            {"queued_at": day},
            {"queued_at": day + timedelta(hours=47, minutes=59)},  # 11 March, 23:59
            {"queued_at": day + timedelta(days=2)},  # 12 March, 00:00
        ],
    )
    vera = as_user("vera")
    assert ids_on(vera, "/runs?since=2025-03-10&until=2025-03-11") == [ids[2], ids[1]]
    assert ids_on(vera, "/runs?since=2025-03-11") == [ids[3], ids[2]]
    assert ids_on(vera, "/runs?until=2025-03-09") == [ids[0]]
    page = vera.get("/runs?since=31/12/2024").get_data(as_text=True)
    assert "is not a date" in page
    assert len(ROW.findall(page)) == 4  # the bad field is ignored, not guessed


def test_keyset_pages_never_repeat_or_skip_a_run(app, as_user, jobs):
    specs = [{"job": ("alpha", "beta")[i % 2], "state": "FAILED"} for i in range(173)]
    ids = add_runs(app, specs)
    vera = as_user("vera")
    for query, expected in (("", ids), ("job=beta&", ids[1::2])):
        seen, url = [], f"/runs?{query}"
        while url:
            page = vera.get(url).get_data(as_text=True)
            seen += [int(i) for i in ROW.findall(page)]
            older = re.search(r'href="(/runs\?[^"]*before=\d+[^"]*)" hx-get', page)
            url = older.group(1).replace("&amp;", "&") if older else None
        assert seen == sorted(expected, reverse=True)


def test_htmx_request_gets_only_the_results_region(app, as_user, jobs):
    add_runs(app, [{}])
    response = as_user("vera").get("/runs?state=SUCCEEDED", headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="runs-results"')
    assert "<form" not in html
    assert "HX-Request" in response.headers["Vary"]


def test_queries_use_the_indexes(app):
    """Each filter reads a page from an index that ends with the id, without a sort."""
    database = get_database(app)
    cases = {
        RunFilter(job="alpha"): "ix_runs_job_id_id",
        RunFilter(state="FAILED"): "ix_runs_state_id",
        RunFilter(trigger="manual"): "ix_runs_trigger_id",
        RunFilter(user="otto"): "ix_runs_triggered_by_id",
    }
    with database.engine.connect() as connection:
        for run_filter, index in cases.items():
            query = (
                sa.select(Run.id)
                .where(*filter_clauses(run_filter), Run.id < 1000)
                .order_by(Run.id.desc())
                .limit(51)
            )
            sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            )
            assert index in plan, plan
            assert "TEMP B-TREE" not in plan, plan


def test_a_new_run_is_pushed_to_the_top_and_a_change_replaces_its_row(app, as_user, jobs):
    vera = as_user("vera")
    live = socketio.test_client(app, flask_test_client=vera)
    assert live.emit("join", "runs", callback=True)["ok"]
    start_live_push(app)
    try:
        (run_id,) = add_runs(app, [{"state": "QUEUED"}])
        run_changed.send(run_id)
        inserted = wait_for_fragment(live, f"run-{run_id}-row")
        assert 'hx-swap-oob="afterbegin:#runs-unfiltered-tbody"' in inserted
        with get_database(app).session_scope() as db:
            db.get(Run, run_id).state = "RUNNING"
        run_changed.send(run_id)
        changed = wait_for_fragment(live, f"run-{run_id}-row")
        assert f'<tr id="run-{run_id}-row" class="history-row" hx-swap-oob="true">' in changed
        assert "RUNNING" in changed
    finally:
        stop_live_push(app)
        live.disconnect()


def wait_for_fragment(live, marker: str, timeout: float = 5) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in live.get_received():
            if message["name"] == "fragment" and marker in message["args"][0]:
                return message["args"][0]
        time.sleep(0.02)
    raise AssertionError(f"no fragment with {marker}")
