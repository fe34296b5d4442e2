"""The API's page in the UI: what to call, with curl examples (signed-in users)."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from app.auth import requires
from app.permissions import JOB_VIEW

from .openapi import PATHS, openapi_document

bp = Blueprint("api_docs", __name__)


@bp.get("/help/api")
@requires(JOB_VIEW)
def index():
    """Show the endpoints, curl examples and where to get a token."""
    operations = [
        (method.upper(), path, operation.get("summary", ""))
        for path, item in PATHS.items()
        for method, operation in item.items()
        if method != "parameters"
    ]
    return render_template(
        "api/index.html", operations=operations, base=request.host_url.rstrip("/") + "/api/v1"
    )


@bp.get("/help/api/openapi.json")
@requires(JOB_VIEW)
def openapi():
    """Return the OpenAPI document to a signed-in browser (the API itself takes tokens only)."""
    return openapi_document()
