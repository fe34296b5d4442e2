"""The REST API ``/api/v1`` (DESIGN §8): bearer tokens only, JSON in and out, CSRF-exempt.

app/auth.py lets an ``/api/`` request in on its ``Authorization: Bearer`` token (never on the
session cookie) and makes the token's owner the current user, so ``requires`` and the tag
visibility of app/visibility.py apply as in the UI. Every error is
``{"error", "message", "fields"}`` (app/api/errors.py).
"""

from __future__ import annotations

from flask import Blueprint, Flask, request
from werkzeug.exceptions import HTTPException

from app.auth import requires
from app.http_security import csrf

from . import docs, jobs, runs
from .errors import MAX_BODY_BYTES, ApiError, error_response, http_error_response
from .openapi import openapi_document

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.register_blueprint(jobs.bp)
bp.register_blueprint(runs.bp)


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = MAX_BODY_BYTES  # 413 (JSON) past it, read or not


@bp.get("/openapi.json")
@requires(None)
def openapi():
    """Return the OpenAPI 3.0.3 document of this API."""
    return openapi_document()


bp.register_error_handler(ApiError, error_response)
bp.register_error_handler(HTTPException, http_error_response)


def register_api(app: Flask) -> None:
    """Register the API, its UI page, the tokens page and the trigger URLs."""
    from app.web import hooks, tokens

    app.register_blueprint(bp)
    for blueprint in (bp, jobs.bp, runs.bp):
        csrf.exempt(blueprint)  # bearer tokens only: a cross-site form has none to send
    app.register_blueprint(docs.bp)
    app.register_blueprint(tokens.bp)
    app.register_blueprint(hooks.bp)
    csrf.exempt(hooks.trigger)  # authenticated by the job's own token, never by a cookie
