"""The schedule view: every enabled job's fires over the next days, hour by hour."""

from datetime import datetime, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from flask import Blueprint, abort, make_response, render_template, request
from flask_login import current_user

from app import db
from app.auth import requires
from app.db import utcnow
from app.fires import HourSlot, hours_of, upcoming_fires
from app.models import Run
from app.permissions import JOB_VIEW
from app.schedules import ScheduleError, parse_timezone
from app.visibility import visible_job_ids

bp = Blueprint("schedule", __name__)
DAYS = 7
PAST_LIMIT = 500
INLINE_JOBS = 3  # an hour with more jobs lists them when opened
ZONES = sorted(available_timezones())


@bp.get("/schedule")
@requires(JOB_VIEW)
def index():
    """Show the next 7 days by day and hour in the viewer's zone; flag crowded hours."""
    zone_name, zone, error = _zone(request.args.get("tz", ""))
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
        error=error,
        days=days,
        crowded=sum(slot.collides for slots in days.values() for slot in slots),
        truncated=sorted(plan.truncated),
        past=past,
        total=plan.total,
        INLINE_JOBS=INLINE_JOBS,
        tz_query="" if zone_name == "UTC" else f"&tz={quote(zone_name)}",
    )


@bp.get("/schedule/zones")
@requires(JOB_VIEW)
def zones():
    """The IANA zone names for the zone field's suggestions (fetched on first focus)."""
    response = make_response(render_template("schedule/_zones.html", zones=ZONES))
    response.cache_control.max_age = 3600
    response.cache_control.private = True
    return response


@bp.get("/schedule/hour")
@requires(JOB_VIEW)
def hour():
    """The jobs firing in one hour of the week view (``at``: the hour's start, epoch seconds)."""
    _, zone, _ = _zone(request.args.get("tz", ""))
    try:
        start = datetime.fromtimestamp(int(request.args.get("at", "")), zone)
    except (ValueError, OverflowError, OSError):
        abort(400, description="at: expected the hour's start in seconds since the epoch")
    session = db.session()
    visible = visible_job_ids(session, current_user)
    days = hours_of(upcoming_fires(session, utcnow(), days=DAYS, visible=visible), zone)
    slot = next((s for s in days.get(start.date(), []) if s.start == start), None)
    return render_template("schedule/_hour_jobs.html", slot=slot or HourSlot(start))


def _zone(name: str):
    """The viewer's zone (name, ZoneInfo, error); an unknown name falls back to UTC."""
    try:
        return name.strip() or "UTC", parse_timezone(name.strip() or "UTC"), None
    except ScheduleError as problem:
        return "UTC", ZoneInfo("UTC"), problem.message
