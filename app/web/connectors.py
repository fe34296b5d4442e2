import sqlalchemy as sa
from flask import Blueprint, render_template

from app import db
from app.auth import requires
from app.models import Connector
from app.permissions import CONNECTOR_VIEW

bp = Blueprint("connectors", __name__)


@bp.get("/connectors")
@requires(CONNECTOR_VIEW)
def index():
    """List connectors by name (secrets are never read here)."""
    connectors = db.session().scalars(sa.select(Connector).order_by(Connector.name)).all()
    return render_template("connectors/index.html", connectors=connectors)
