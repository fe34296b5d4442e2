import sqlalchemy as sa
from flask import Blueprint, render_template

from app import db
from app.auth import requires
from app.models import Run
from app.permissions import JOB_VIEW

bp = Blueprint("runs", __name__)
PAGE_SIZE = 50


@bp.get("/runs")
@requires(JOB_VIEW)
def index():
    """List the newest runs first."""
    runs = db.session().scalars(sa.select(Run).order_by(Run.id.desc()).limit(PAGE_SIZE)).all()
    return render_template("runs/index.html", runs=runs)
