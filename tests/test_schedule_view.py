"""The schedule view lists the week's fires in the viewer's zone and flags crowded hours."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.db import get_database
from app.fires import NAMES_PER_HOUR, collisions, upcoming_fires
from app.models import Job
from tests.engine_helpers import make_job


@pytest.fixture
def week(app):
    make_job(app, "nightly", schedule="30 2 * * *", timezone="Europe/Paris")
    make_job(app, "report", schedule="0 3 * * *", timezone="UTC")  # 04:00/05:00 in Paris
    make_job(app, "backup", schedule="45 1 * * *", timezone="UTC")  # same Paris hour as nightly
    make_job(app, "off", schedule="0 * * * *", enabled=False)
    make_job(app, "manual")


def test_upcoming_fires_of_enabled_jobs_only(app, week):
    now = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    with get_database(app).session_scope() as db:
        plan = upcoming_fires(db, now, days=7)
    assert {f.job_id for f in plan.fires} == {"nightly", "report", "backup"}
    assert len(plan.fires) == 21
    paris = ZoneInfo("Europe/Paris")
    nightly = [f.at.astimezone(paris) for f in plan.fires if f.job_id == "nightly"]
    assert all((t.hour, t.minute) == (2, 30) for t in nightly)
    # in June: backup 01:45 UTC = 03:45 Paris, nightly 02:30 Paris, report 05:00 Paris
    assert collisions(plan.fires, paris) == {}


def test_collisions_flag_hours_with_several_jobs(app):
    make_job(app, "a", schedule="5 9 * * *")
    make_job(app, "b", schedule="50 9 * * *")
    make_job(app, "c", schedule="5 10 * * *")
    now = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)
    with get_database(app).session_scope() as db:
        plan = upcoming_fires(db, now, days=1)
    assert collisions(plan.fires, UTC) == {datetime(2025, 6, 2, 9, tzinfo=UTC): ["a", "b"]}
    # in Kolkata (+05:30) 09:05 and 09:50 UTC fall in 14:00 and 15:00; 09:50 and 10:05 collide
    kolkata = ZoneInfo("Asia/Kolkata")
    assert collisions(plan.fires, kolkata) == {datetime(2025, 6, 2, 15, tzinfo=kolkata): ["b", "c"]}


def hour_rows(html: str) -> list[tuple[str, bool, dict[str, str]]]:
    """(hour shown, flagged as a collision, {job: its fire times in that hour}) per hour row."""
    rows = []
    for flag, body in re.findall(r'<tr class="hour( collision)?">(.*?)</tr>', html, re.S):
        hour = re.search(r'<time datetime="[^"]+">(\d\d:\d\d)</time>', body).group(1)
        jobs = dict(re.findall(r'<li><a href="/runs\?job=[^"]+">([^<]+)</a> ([^<]*)</li>', body))
        rows.append((hour, bool(flag), {job: times.strip() for job, times in jobs.items()}))
    return rows


def test_schedule_page_counts_fires_by_hour_in_the_given_zone_and_flags_collisions(app, as_user):
    make_job(app, "a", schedule="5 9 * * *")
    make_job(app, "b", schedule="50 9 * * *")
    vera = as_user("vera")
    html = vera.get("/schedule?tz=Asia/Tokyo").get_data(as_text=True)
    rows = hour_rows(html)
    assert {hour for hour, _, _ in rows} == {"18:00"}  # UTC+9, no DST: 09:xx UTC is 18:xx
    assert 7 <= len(rows) <= 8  # a week of daily fires (8 hours if now falls between them)
    for _, flagged, jobs in rows:
        assert flagged == (len(jobs) == 2)  # both jobs in the hour: flagged
        assert jobs.get("a", "18:05") == "18:05" and jobs.get("b", "18:50") == "18:50"
    assert sum(flagged for _, flagged, _ in rows) >= 6
    assert "⚠ 2 jobs this hour" in html and "14 fires of enabled jobs" in html
    assert "<details" in html and "<summary>" in html  # names on expansion, keyboard included
    assert 'hx-get="/schedule/zones"' in html  # zone names come when the field is focused
    assert '<option value="Europe/Paris">' in vera.get("/schedule/zones").get_data(as_text=True)
    assert '<a href="/schedule" aria-current="page">Schedule</a>' in html
    utc = vera.get("/schedule").get_data(as_text=True)
    assert {hour for hour, _, _ in hour_rows(utc)} == {"09:00"}
    bad = vera.get("/schedule?tz=Mars/Olympus").get_data(as_text=True)
    assert "unknown timezone" in bad


def test_a_thousand_jobs_on_one_schedule_are_counted_not_listed(app, as_user):
    with get_database(app).session_scope() as db:
        db.add_all(Job(id=f"job-{n:04d}", schedule="0 * * * *") for n in range(1000))
    vera = as_user("vera")
    html = vera.get("/schedule?tz=Europe/Paris").get_data(as_text=True)
    rows = hour_rows(html)
    assert 168 <= len(rows) <= 169 and all(flagged for _, flagged, _ in rows)
    assert f"{1000 * 168} fires of enabled jobs" in html
    hours = re.findall(r'hx-get="(/schedule/hour\?[^"]+)"', html)
    assert len(hours) == len(rows)
    assert "loading…" in html  # crowded hours list their jobs when opened, not in the page
    opened = vera.get(hours[1].replace("&amp;", "&")).get_data(as_text=True)
    names = re.findall(r'<li><a href="/runs\?job=[^"]+">([^<]+)</a> (\d\d:00) </li>', opened)
    assert len(names) == NAMES_PER_HOUR and "and 990 more jobs" in opened
    assert vera.get("/schedule/hour?at=soon").status_code == 400


def test_nothing_scheduled_explains_how_to_schedule(app, as_user):
    make_job(app, "manual")
    html = as_user("eddie").get("/schedule").get_data(as_text=True)
    assert "Nothing scheduled" in html and "Give a job a cron schedule" in html


def test_past_fires_link_to_their_runs(app, as_user):
    from tests.test_history import add_runs

    make_job(app, "a", schedule="5 9 * * *")
    now = datetime.now(UTC)
    (run_id,) = add_runs(
        app,
        [
            {
                "job": "a",
                "queued_at": now - timedelta(hours=2),
                "scheduled_for": now - timedelta(hours=2),
            }
        ],
    )
    html = as_user("vera").get("/schedule").get_data(as_text=True)
    past = html.split('id="schedule-past"')[1]
    assert f'href="/runs/{run_id}"' in past


def test_next_fires_merges_jobs_like_the_full_plan(app, week):
    from app.fires import next_fires

    now = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    with get_database(app).session_scope() as db:
        merged = next_fires(db, now, 5)
        plan = upcoming_fires(db, now, days=2)
    assert merged == plan.fires[:5]
