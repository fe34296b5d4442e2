"""The audit log page: filters that combine, shareable URLs, keyset pages newest first."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from app.audit import record_event
from app.audit_search import AuditFilter, find_events, known_actions
from app.db import get_database
from app.models import AuditEvent

ROW = re.compile(r'<tr id="audit-(\d+)">')
DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def ids_on(client, url: str, **headers) -> list[int]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [int(i) for i in ROW.findall(response.get_data(as_text=True))]


@pytest.fixture
def events(app):
    """A small log: who did what to which target, on three days; returns the ids by name."""
    specs = {
        "trigger": ("otto", "job.trigger", "job", "nightly", DAY - timedelta(days=2)),
        "edit": ("eddie", "job.update", "job", "nightly", DAY - timedelta(days=1)),
        "other_job": ("eddie", "job.update", "job", "weekly", DAY - timedelta(days=1)),
        "user": ("ada", "user.create", "user", "nightly", DAY),  # a user named like the job
        "login": ("ada", "login", "user", "ada", DAY),
    }
    made = {}
    with get_database(app).session_scope() as db:
        for name, (username, action, target_type, target_id, at) in specs.items():
            event = record_event(
                db, action, username=username, target_type=target_type, target_id=target_id
            )
            event.at = at
            db.flush()
            made[name] = event.id
    return made


def test_filters_combine_and_the_url_keeps_them(as_user, events):
    ada = as_user("ada")
    assert ids_on(ada, "/admin/audit?user=eddie") == [events["other_job"], events["edit"]]
    assert ids_on(ada, "/admin/audit?action=job.*") == [
        events["other_job"],
        events["edit"],
        events["trigger"],
    ]
    assert ids_on(ada, "/admin/audit?action=job.trigger") == [events["trigger"]]
    assert ids_on(ada, "/admin/audit?target=job:nightly") == [events["edit"], events["trigger"]]
    assert ids_on(ada, "/admin/audit?target=nightly") == [
        events["user"],
        events["edit"],
        events["trigger"],
    ]
    assert ids_on(ada, "/admin/audit?since=2026-03-09&until=2026-03-09") == [
        events["other_job"],
        events["edit"],
    ]
    assert ids_on(ada, "/admin/audit?user=eddie&target=job:weekly") == [events["other_job"]]
    page = ada.get("/admin/audit?action=job.*&user=eddie").get_data(as_text=True)
    assert '<option value="job.*" selected>job (all)</option>' in page
    assert "<option selected>eddie</option>" in page
    assert '<option value="user.create" >user.create</option>' in page  # every known action


def test_htmx_gets_the_results_only_and_bad_dates_are_named(as_user, events):
    ada = as_user("ada")
    partial = ada.get("/admin/audit?user=ada", headers={"HX-Request": "true"})
    html = partial.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="audit-results"')
    assert "HX-Request" in partial.headers["Vary"]
    bad = ada.get("/admin/audit?since=yesterday").get_data(as_text=True)
    assert "since: &#39;yesterday&#39; is not a date like 2025-01-31" in bad
    assert "No events match these filters." in ada.get("/admin/audit?user=nobody").get_data(
        as_text=True
    )


def test_pages_by_id_newest_first_and_the_older_link_keeps_the_filter(app, as_user):
    with get_database(app).session_scope() as db:
        for n in range(230):
            record_event(db, "job.trigger", username="otto", target_type="job", target_id=f"j{n}")
            record_event(db, "login", username="vera", target_type="user", target_id="vera")
    ada = as_user("ada")
    response = ada.get("/admin/audit?action=job.trigger")
    first = [int(i) for i in ROW.findall(response.get_data(as_text=True))]
    assert len(first) == 100 and first == sorted(first, reverse=True)
    older = re.search(r'href="([^"]+)"[^>]*rel="next"', response.get_data(as_text=True)).group(1)
    older = older.replace("&amp;", "&")
    assert "action=job.trigger" in older and f"before={first[-1]}" in older
    second = ids_on(ada, older)
    third = ids_on(ada, f"/admin/audit?action=job.trigger&before={second[-1]}")
    assert len(second) == 100 and max(second) < min(first)
    assert len(third) == 30
    last_page = ada.get(f"/admin/audit?action=job.trigger&before={second[-1]}")
    assert 'rel="next"' not in last_page.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        names = {db.get(AuditEvent, i).action for i in first + second + third}
    assert names == {"job.trigger"}


def test_only_user_admins_read_the_audit_log(as_user):
    for name in ("vera", "otto", "eddie"):
        assert as_user(name).get("/admin/audit").status_code == 403


def test_known_actions_and_families_read_the_same_on_every_database(any_db_app):
    with get_database(any_db_app).session_scope() as db:
        for action in ("login", "job.trigger", "job.update", "login", "user.create", "job_x.y"):
            record_event(db, action, username="x", target_type="job", target_id="a")
    with get_database(any_db_app).session_scope() as db:
        actions = known_actions(db)
        family = [e.action for e in find_events(db, AuditFilter(action="job.*")).events]
    assert actions == ["job.trigger", "job.update", "job_x.y", "login", "user.create"]
    assert family == ["job.update", "job.trigger"]  # "_" in job_x is not a wildcard
