"""The home page: what runs now, what failed, what fires next, how the clock is doing."""

from datetime import timedelta

from flask import Blueprint, current_app, render_template
from flask_login import current_user

from app import db
from app.auth import requires
from app.dashboard_data import (
    failures_since,
    last_scheduled_fire,
    queue_depth,
    running_now,
    runs_per_hour,
    success_rates,
)
from app.db import utcnow
from app.engine.service import EXTENSION as RUNNER
from app.fires import next_fires
from app.permissions import CONNECTOR_VIEW, JOB_VIEW
from app.scheduler import scheduler_role
from app.visibility import visible_job_ids

bp = Blueprint("dashboard", __name__)
UPCOMING = 10
CHART_HEIGHT = 60


@bp.get("/")
@requires(JOB_VIEW)
def index():
    """Show the dashboard."""
    session, now = db.session(), utcnow()
    visible = visible_job_ids(session, current_user)  # a tag-limited role: its jobs only
    hours = runs_per_hour(session, now, job_ids=visible)
    return render_template(
        "dashboard/index.html",
        now=now,
        running=running_now(session, job_ids=visible),
        failures=failures_since(session, now - timedelta(hours=24), job_ids=visible),
        upcoming=next_fires(session, now, UPCOMING, visible=visible),
        rates=success_rates(session, now - timedelta(days=7), job_ids=visible),
        hours=hours,
        peak=max([count for _, count in hours] + [1]),
        chart_height=CHART_HEIGHT,
        role=scheduler_role(current_app),
        queued=queue_depth(session, job_ids=visible),
        last_fire=last_scheduled_fire(session, job_ids=visible),
        pools=sql_pools() if current_user.can(CONNECTOR_VIEW) else None,  # names connectors
        runner_here=current_app.extensions.get(RUNNER) is not None,
    )


def sql_pools() -> list:
    """The connection pools of the SQL connectors this process's runner has used."""
    runner = current_app.extensions.get(RUNNER)
    return runner.connectors.pool_usage() if runner is not None else []


@bp.get("/dashboard/running")
@requires(JOB_VIEW)
def running():
    """Return the running-now region (the page polls it)."""
    visible = visible_job_ids(db.session(), current_user)
    running = running_now(db.session(), job_ids=visible)
    return render_template("dashboard/_running.html", running=running)
