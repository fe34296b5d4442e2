from flask import Blueprint, redirect, url_for

from app.auth import requires
from app.permissions import JOB_VIEW

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@requires(JOB_VIEW)
def index():
    """Open the home page (the job catalogue until the dashboard is built)."""
    return redirect(url_for("jobs.index"))
