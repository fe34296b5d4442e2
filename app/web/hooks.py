"""Trigger URLs: ``POST /hooks/<job_id>`` starts a job with its own token; a page manages it.

The trigger answers JSON like the API (app/api/errors.py) and never looks at the session: it is
a public endpoint (app/auth.py) that authenticates itself with the job's token, sent as
``Authorization: Bearer`` (preferred) or, for systems that can only set a URL, as ``?token=``
(URLs end up in proxy and server logs). An unknown or deleted job, a job without a hook and a
wrong token get one same 401, so job ids and which jobs have hooks cannot be probed.

Managing a hook needs job:edit and job:run: a hook starts runs, so it is a way to run the job.
"""

from __future__ import annotations

from flask import Blueprint, abort, render_template, request, url_for
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge

from app import db
from app.api.errors import (
    MAX_BODY_BYTES,
    MAX_ID,
    ApiError,
    error_response,
    query_int,
    read_json_object,
)
from app.api.run_requests import MAX_WAIT_SECONDS, run_accepted
from app.audit import record_event
from app.auth import client_ip, requires
from app.engine.dispatch import DispatchError
from app.engine.service import trigger_job
from app.hooks import disable_hook, hook_enabled, hook_job, issue_hook_token
from app.models import Job
from app.permissions import JOB_EDIT, JOB_RUN
from app.tokens import bearer_value
from app.visibility import live_job, may_see_job

bp = Blueprint("hooks", __name__)
REFUSED = "invalid trigger token"  # one answer for every refusal: nothing to probe


@bp.post("/hooks/<job_id>")
def trigger(job_id: str):
    """Queue a run of the job with the JSON body as its parameters (202, or 200 with ?wait)."""
    request.max_content_length = MAX_BODY_BYTES
    try:
        return _trigger(job_id)
    except RequestEntityTooLarge:
        return error_response(ApiError(413, f"The body is larger than {MAX_BODY_BYTES} bytes."))
    except ApiError as error:
        response, status = error_response(error)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="nomaflow-hook"'
        return response, status


@bp.get("/jobs/<job_id>/trigger-url")
@requires(JOB_EDIT)
def manage(job_id: str):
    """Show whether the job has a trigger URL, with buttons to enable, rotate or disable it."""
    _require_run_permission()
    return _render(_editable_job(job_id))


@bp.post("/jobs/<job_id>/trigger-url")
@requires(JOB_EDIT)
def change(job_id: str):
    """Enable or rotate (shows the new token once), or disable the trigger URL."""
    _require_run_permission()
    job = _editable_job(job_id)
    session = db.session()
    action = request.form.get("action", "")
    secret = None
    if action in ("enable", "rotate"):
        secret = issue_hook_token(session, job, current_user, client_ip())
    elif action == "disable":
        disable_hook(session, job, current_user, client_ip())
    else:
        abort(400, description="Choose enable, rotate or disable.")
    session.commit()
    return _render(job, secret=secret)


def _trigger(job_id: str):
    session = db.session()
    secret = bearer_value(request.headers.get("Authorization")) or request.args.get("token")
    job = hook_job(session, job_id, secret)
    if job is None:
        raise ApiError(401, REFUSED)
    job_id = job.id
    wait = min(query_int("wait", 0, 0, MAX_ID), MAX_WAIT_SECONDS)
    params = read_json_object()
    prefix = job.hook_token_prefix
    session.close()
    try:
        run = trigger_job(job_id, "api", params, None, ip=client_ip())
    except DispatchError as error:
        raise ApiError(error.status, error.message, error.fields) from None
    session = db.session()
    record_event(
        session,
        "hook.trigger",
        username="hook",
        target_type="job",
        target_id=job_id,
        ip=client_ip(),
        detail={"run": run.id, "token_prefix": prefix},
    )
    session.commit()
    return run_accepted(run.id, wait)


def _require_run_permission() -> None:
    """A hook starts runs: managing one needs job:run too (``requires`` checked job:edit)."""
    if not current_user.can(JOB_RUN):
        abort(403, description=f"You need the {JOB_RUN} permission for this.")


def _editable_job(job_id: str) -> Job:
    job = live_job(db.session(), job_id)
    if job is None or not may_see_job(current_user, job):
        abort(404, description=f"There is no job {job_id!r}.")
    return job


def _render(job: Job, secret: str | None = None):
    url = url_for("hooks.trigger", job_id=job.id, _external=True)
    return render_template(
        "hooks/manage.html",
        job=job,
        tab="trigger",
        enabled=hook_enabled(job),
        url=url,
        secret=secret,
    )
