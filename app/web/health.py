from flask import Blueprint, current_app, jsonify

from app import __version__
from app.db import get_database
from app.scheduler import scheduler_role

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Report database reachability and this process's scheduler role (public, no secrets)."""
    database_ok = get_database().is_reachable()
    body = {
        "status": "ok" if database_ok else "degraded",
        "database": "ok" if database_ok else "unreachable",
        "scheduler": scheduler_role(current_app),
        "version": __version__,
    }
    return jsonify(body), 200 if database_ok else 503
