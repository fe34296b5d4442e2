"""``/api/v1/runs``: list with filters, read one, its log lines, abort, replay."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.engine.dispatch import DispatchError
from app.engine.history import load_run_view, run_document
from app.engine.service import abort_run, replay_run
from app.models import Job
from app.permissions import JOB_RUN, JOB_VIEW
from app.visibility import may_see_job

from .errors import MAX_ID, ApiError, query_int, read_json_object
from .run_queries import LOG_PAGE, MAX_LOG_PAGE, MAX_RUN_PAGE, RUN_PAGE, find_runs, log_page
from .run_requests import run_accepted, run_url

bp = Blueprint("runs", __name__)


@bp.get("/runs")
@requires(JOB_VIEW)
def list_runs():
    """List runs newest first; ``after`` is the ``next_after`` of the previous page."""
    limit = query_int("limit", RUN_PAGE, 1, MAX_RUN_PAGE)
    after = query_int("after", None, 1, MAX_ID)
    rows, next_after = find_runs(db.session(), current_user, request.args, limit, after)
    runs = [{**row, "url": run_url(row["id"])} for row in rows]
    return {"runs": runs, "next_after": next_after}


@bp.get("/runs/<int:run_id>")
@requires(JOB_VIEW)
def get_run(run_id: int):
    """Return the run document (DESIGN §8): state, parameters, steps with outputs."""
    return run_document(_visible_view(run_id))


@bp.get("/runs/<int:run_id>/logs")
@requires(JOB_VIEW)
def get_logs(run_id: int):
    """Return the log lines after ``after`` (a seq), at most ``limit``; poll with next_after."""
    view = _visible_view(run_id)
    after = query_int("after", 0, 0, MAX_ID)
    limit = query_int("limit", LOG_PAGE, 1, MAX_LOG_PAGE)
    lines, more = log_page(db.session(), run_id, after, limit)
    return {
        "run": run_id,
        "state": view.run.state,
        "lines": lines,
        "next_after": lines[-1]["seq"] if lines else after,
        "more": more,
    }


@bp.post("/runs/<int:run_id>/abort")
@requires(JOB_RUN)
def abort(run_id: int):
    """Abort a queued or running run (409 when it has already ended)."""
    _visible_view(run_id)
    read_json_object()  # no fields, but a body must still be JSON
    db.session().close()
    try:
        abort_run(run_id, current_user, client_ip())
    except DispatchError as error:
        raise ApiError(error.status, error.message, error.fields) from None
    response = jsonify(run_document(load_run_view(db.session(), run_id)))
    response.status_code = 202
    return response


@bp.post("/runs/<int:run_id>/replay")
@requires(JOB_RUN)
def replay(run_id: int):
    """Queue the run again with its parameters; ``{"from_failed_step": true}`` resumes there."""
    _visible_view(run_id)
    body = read_json_object()
    unknown = {key: "unknown field" for key in body if key != "from_failed_step"}
    from_failed = body.get("from_failed_step", False)
    if not isinstance(from_failed, bool):
        unknown["from_failed_step"] = "expected true or false"
    if unknown:
        raise ApiError(422, "The replay request has problems.", unknown)
    db.session().close()
    try:
        run = replay_run(run_id, current_user, from_failed, client_ip())
    except DispatchError as error:
        raise ApiError(error.status, error.message, error.fields) from None
    return run_accepted(run.id)


def _visible_view(run_id: int):
    """The run's view, or 404 when there is none or its job is hidden from this user's role."""
    view = load_run_view(db.session(), run_id) if run_id <= MAX_ID else None
    if view is None or not may_see_job(current_user, db.session().get(Job, view.run.job_id)):
        raise ApiError(404, f"There is no run #{run_id}.", {"run": "no such run"})
    return view
