"""The schedule view: every enabled job's fires over the next days, hour by hour."""

from datetime import timedelta
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from flask import Blueprint, render_template, request
from flask_login import current_user

from app import db
from app.auth import requires
from app.db import utcnow
from app.fires import hours_of, upcoming_fires
from app.models import Run
from app.permissions import JOB_VIEW
from app.schedules import ScheduleError, parse_timezone
from app.visibility import visible_job_ids

bp = Blueprint("schedule", __name__)
DAYS = 7
PAST_LIMIT = 500
ZONES = sorted(available_timezones())


@bp.get("/schedule")
@requires(JOB_VIEW)
def index():
    """Show the next 7 days by day and hour in the viewer's zone; flag crowded hours."""
    zone_name = request.args.get("tz", "").strip() or "UTC"
    error = None
    try:
        zone = parse_timezone(zone_name)
    except ScheduleError as problem:
        error, zone_name, zone = problem.message, "UTC", ZoneInfo("UTC")
    session, now = db.session(), utcnow()
    visible = visible_job_ids(session, current_user)  # a tag-limited role: its jobs only
    plan = upcoming_fires(session, now, days=DAYS, visible=visible)
    days = hours_of(plan, zone)
    past = session.execute(  # the last day's scheduled runs, linked (ix_runs_queued_at)
        sa.select(Run.id, Run.job_id, Run.state, Run.scheduled_for)
        .where(Run.queued_at >= now - timedelta(days=1), Run.scheduled_for.is_not(None))
        .where(*([] if visible is None else [Run.job_id.in_(sorted(visible))]))
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
        crowded=sum(slot.collides for slots in days.values() for slot in slots),
        truncated=sorted(plan.truncated),
        past=past,
        total=plan.total,
    )
