"""``/api/v1/jobs``: list, read, create, update, delete jobs, and start runs of them."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, jsonify, request
from flask_login import current_user
from sqlalchemy.orm import selectinload

from app import db
from app.auth import client_ip, requires
from app.engine.signals import jobs_changed
from app.job_versions import delete_job as delete_job_softly
from app.models import Job
from app.permissions import JOB_DELETE, JOB_EDIT, JOB_RUN, JOB_VIEW
from app.visibility import live_job, may_see_job

from .errors import MAX_ID, ApiError, query_int, read_json_object
from .job_definitions import job_document, save_job
from .run_requests import MAX_WAIT_SECONDS, RunRequest, start_run

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@requires(JOB_VIEW)
def list_jobs():
    """List the live jobs this token's user may see, by id."""
    query = sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)
    jobs = db.session().scalars(query.options(selectinload(Job.steps)))
    return {"jobs": [job_document(job) for job in jobs if may_see_job(current_user, job)]}


@bp.post("/jobs")
@requires(JOB_EDIT)
def create_job():
    """Create a job from its definition (the shape of a TOML [[jobs]] table)."""
    job, _ = save_job(db.session(), read_json_object(empty_ok=False), current_user, ip=client_ip())
    db.session().commit()
    jobs_changed.send(None)
    response = jsonify(job_document(job))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return response


@bp.get("/jobs/<job_id>")
@requires(JOB_VIEW)
def get_job(job_id: str):
    """Return one job's definition."""
    return job_document(_visible_job(job_id))


@bp.put("/jobs/<job_id>")
@requires(JOB_EDIT)
def update_job(job_id: str):
    """Replace a job's definition; a change writes a new job version."""
    _visible_job(job_id)
    body = read_json_object(empty_ok=False)
    job, outcome = save_job(db.session(), body, current_user, job_id, ip=client_ip())
    db.session().commit()
    if outcome != "unchanged":
        jobs_changed.send(None)
    return job_document(job)


@bp.delete("/jobs/<job_id>")
@requires(JOB_DELETE)
def delete_job(job_id: str):
    """Soft-delete the job, as the editor does: it leaves the clock, its runs stay readable."""
    delete_job_softly(db.session(), _visible_job(job_id), current_user, client_ip(), via="api")
    db.session().commit()
    jobs_changed.send(None)
    return "", 204


@bp.post("/jobs/<job_id>/runs")
@requires(JOB_RUN)
def create_run(job_id: str):
    """Queue a run: 202 with its id and URL; ``?wait=S`` answers 200 with the finished run."""
    job_id = _visible_job(job_id).id
    wait = min(query_int("wait", 0, 0, MAX_ID), MAX_WAIT_SECONDS)
    run_request = RunRequest.from_body(read_json_object())
    key = request.headers.get("Idempotency-Key")
    return start_run(
        job_id,
        run_request,
        current_user,
        idempotency_key=key,
        wait_seconds=wait,
        ip=client_ip(),
    )


def _visible_job(job_id: str) -> Job:
    """The live job with exactly this id, or 404 (also when the user's role may not see it)."""
    job = live_job(db.session(), job_id)
    if job is None or not may_see_job(current_user, job):
        raise ApiError(404, f"There is no job {job_id!r}.", {"job": "no such job"})
    return job
