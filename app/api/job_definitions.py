"""Jobs through the API: the same checks and the same save path as the editor and TOML import.

A job's JSON is its canonical definition (app/jobspec.py): the shape of a TOML ``[[jobs]]``
table, with every field present and ``null`` for "not set". A body may leave fields out or send
``null``: both mean the default, as in a TOML file.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from sqlalchemy.orm import Session

# the import's checks of what a definition names (other jobs, connectors of the right kind)
from app.alerts.channels_io import unknown_channels
from app.job_forms import python_code_problems
from app.job_graph import graph_errors
from app.jobs_io import connector_problems
from app.jobspec import SpecError, apply_job, job_definition, validate_job
from app.models import Job, User
from app.permissions import PYTHON_EDIT
from app.visibility import may_see_job, may_see_tags, restricted_tags, stored_job

from .errors import ApiError

FORM_STEP_FIELD = re.compile(r"^steps-(\d+)\.config\.(.+)$")


def job_document(job: Job) -> dict[str, Any]:
    return job_definition(job)


def save_job(
    db: Session, body: dict[str, Any], user: User, job_id: str | None = None, ip: str = ""
) -> tuple[Job, str]:
    """Validate ``body`` and create the job (``job_id`` None) or update ``job_id``.

    Return the saved job and "created" / "updated" / "unchanged"; raise ApiError (409 when
    creating an id that exists or belongs to a job the user may not see, 422 naming each bad
    field, 403 for Python code without python:edit). The caller commits.
    """
    data = _without_nulls(body)
    if job_id is not None:
        if data.get("id", job_id) != job_id:
            raise ApiError(422, "A job's id cannot change.", {"id": "the id of a job is fixed"})
        data["id"] = job_id
    spec, errors = validate_job(copy.deepcopy(data))
    fields = fields_of(errors)
    existing = stored_job(db, spec["id"]) if spec is not None else None  # exactly this id
    live = existing is not None and existing.deleted_at is None
    before = [job_definition(existing)] if live and may_see_job(user, existing) else []
    if spec is not None:  # the jobs and connectors it names exist, and it makes no cycle
        # a reference the stored definition already makes is kept (an admin's chain)
        fields = {**fields_of(graph_errors(db, {0: spec}, user, before)), **fields}
        named = connector_problems(db, {0: spec}, []) + unknown_channels(db, {0: spec}, set())
        for line in named:  # "jobs[0] x › steps[0] y › …: …", "jobs[0] x › alerts › channels: …"
            path, _, problem = line.partition(": ")
            fields.setdefault(_field_of_path(path), problem)
    if fields:
        raise ApiError(422, "The job definition has problems.", fields)
    if job_id is None and existing is not None and not may_see_job(user, existing):
        # ids are global; another team's job (even deleted) is neither confirmed nor revived
        raise ApiError(409, "This id is not available.", {"id": "this id is not available"})
    if job_id is None and live:
        raise ApiError(409, f"A job named {spec['id']!r} already exists.", {"id": "taken"})
    if not may_see_tags(user, spec["tags"]):
        tags = ", ".join(sorted(restricted_tags(user) or ()))
        raise ApiError(422, "Your role manages only some tags.", {"tags": f"add one of: {tags}"})
    if not user.can(PYTHON_EDIT):
        denied = python_code_problems(spec, before)
        if denied:
            message = "You need python:edit to add or change Python code."
            raise ApiError(403, message, _api_fields(denied))
    outcome = apply_job(db, spec, user, ip)
    return stored_job(db, spec["id"]), outcome


def fields_of(errors: list[SpecError]) -> dict[str, str]:
    """Map SpecErrors to ``{"steps[1].code": "problem"}``; the first message of a field wins."""
    fields: dict[str, str] = {}
    for error in errors:
        fields.setdefault(_field_of_path(error.path), error.message)
    return fields


def _field_of_path(path: str) -> str:
    """``jobs[0] demo › steps[1] load › target › table`` -> ``steps[1].target.table``."""
    parts = path.split(" › ")[1:]
    if not parts:
        return "body"
    return ".".join(part.split(" ", 1)[0] if "[" in part else part for part in parts)


def _api_fields(form_fields: dict[str, str]) -> dict[str, str]:
    fields = {}
    for key, problem in form_fields.items():
        match = FORM_STEP_FIELD.match(key)
        fields[f"steps[{match.group(1)}].{match.group(2)}" if match else key] = problem
    return fields


def _without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """JSON null means "not set", as a key left out of a TOML table (in the job, its retry and
    alerts, and each param, step and chained job; a step's own values are kept as sent)."""

    def strip(table: Any) -> Any:
        if not isinstance(table, dict):
            return table
        return {k: v for k, v in table.items() if v is not None}

    data = strip(body)
    for key in ("retry", "alerts"):
        data[key] = strip(data.get(key))
    for key in ("params", "steps", "then"):
        if isinstance(data.get(key), list):
            data[key] = [strip(item) for item in data[key]]
    if isinstance(data.get("steps"), list):
        for step in data["steps"]:
            if isinstance(step, dict) and isinstance(step.get("retry"), dict):
                step["retry"] = strip(step["retry"])
    return {k: v for k, v in data.items() if v is not None}
