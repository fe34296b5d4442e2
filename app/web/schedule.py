"""The schedule view: every enabled job's fires over the next days."""

from datetime import timedelta
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from flask import Blueprint, render_template, request

from app import db
from app.auth import requires
from app.db import utcnow
from app.fires import collisions, upcoming_fires
from app.models import Run
from app.permissions import JOB_VIEW
from app.schedules import ScheduleError, parse_timezone

bp = Blueprint("schedule", __name__)
DAYS = 7
PER_JOB = 200  # per job and week; more frequent jobs are summarised, not listed fire by fire
PAST_LIMIT = 500
ZONES = sorted(available_timezones())


@bp.get("/schedule")
@requires(JOB_VIEW)
def index():
    """List every fire of the next 7 days by day in the viewer's zone; flag crowded hours."""
    zone_name = request.args.get("tz", "").strip() or "UTC"
    error = None
    try:
        zone = parse_timezone(zone_name)
    except ScheduleError as problem:
        error, zone_name, zone = problem.message, "UTC", ZoneInfo("UTC")
    session, now = db.session(), utcnow()
    plan = upcoming_fires(session, now, days=DAYS, per_job=PER_JOB)
    crowded = collisions(plan.fires, zone)
    days: dict = {}
    for fire in plan.fires:
        local = fire.at.astimezone(zone)
        hour = local.replace(minute=0, second=0, microsecond=0)
        days.setdefault(local.date(), []).append((fire, local, hour in crowded))
    past = session.execute(  # the last day's scheduled runs, linked (ix_runs_queued_at)
        sa.select(Run.id, Run.job_id, Run.state, Run.scheduled_for)
        .where(Run.queued_at >= now - timedelta(days=1), Run.scheduled_for.is_not(None))
        .order_by(Run.scheduled_for.desc())
        .limit(PAST_LIMIT)
    ).all()
    return render_template(
        "schedule/index.html",
        zone=zone,
        zone_name=zone_name,
        zones=ZONES,
        error=error,
        days=days,
        crowded=crowded,
        truncated=sorted(plan.truncated),
        past=past,
        total=len(plan.fires),
    )
