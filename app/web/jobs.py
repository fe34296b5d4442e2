import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.builtin_jobs import MAINTENANCE_JOB
from app.engine.dispatch import DispatchError
from app.engine.service import trigger_job
from app.models import Job
from app.permissions import JOB_RUN, JOB_VIEW

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@requires(JOB_VIEW)
def index():
    """List the job catalogue (an empty state explains how to add the first job)."""
    jobs = (
        db.session().scalars(sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)).all()
    )
    only_builtin = all(job.id == MAINTENANCE_JOB["id"] for job in jobs)
    return render_template("jobs/index.html", jobs=jobs, only_builtin=only_builtin)


@bp.post("/jobs/<job_id>/run")
@requires(JOB_RUN)
def run_now(job_id: str):
    """Queue a manual run with the default parameters and open its page."""
    try:
        run = trigger_job(job_id, "manual", {}, current_user, ip=client_ip())
    except DispatchError as error:
        fields = "; ".join(f"{k}: {v}" for k, v in error.fields.items())
        flash(f"{job_id} was not started: {fields or error.message}", "warning")
        return redirect(url_for("jobs.index"))
    return redirect(url_for("runs.detail", run_id=run.id))
