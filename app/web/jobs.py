import sqlalchemy as sa
from flask import Blueprint, render_template

from app import db
from app.auth import requires
from app.models import Job
from app.permissions import JOB_VIEW

bp = Blueprint("jobs", __name__)


@bp.get("/")
@bp.get("/jobs")
@requires(JOB_VIEW)
def index():
    """List the job catalogue (an empty state explains how to add the first job)."""
    jobs = (
        db.session().scalars(sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)).all()
    )
    return render_template("jobs/index.html", jobs=jobs)
