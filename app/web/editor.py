"""The job editor: create, edit, reorder steps, versions (routes under /jobs/<id>/...).

The form is a plain POST form that works without script: buttons named ``op`` add, move or
remove rows and draw the form again (nothing is saved until Save), so reordering and deleting
steps work from the keyboard and deleting asks first. Only the cron preview uses htmx.
"""

from __future__ import annotations

import copy
from zoneinfo import available_timezones

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from jinja2 import TemplateNotFound
from markupsafe import Markup

from app import db
from app.alerts.channels_io import unknown_channels
from app.auth import client_ip, requires
from app.engine.signals import jobs_changed
from app.job_forms import (
    ROW,
    errors_by_field,
    form_to_job,
    job_to_form,
    python_code_problems,
    step_config,
)
from app.job_graph import graph_errors
from app.job_versions import (
    definition_toml,
    delete_job,
    diff_definitions,
    get_version,
    list_versions,
    restore_version,
)
from app.jobspec import (
    BACKOFFS,
    LOG_LEVELS,
    ON_FAILURE,
    OVERLAP_POLICIES,
    PARAM_TYPES,
    apply_job,
    job_definition,
    validate_job,
)
from app.models import Connector, Job
from app.permissions import JOB_DELETE, JOB_EDIT, PYTHON_EDIT
from app.schedules import (
    ScheduleError,
    build_trigger,
    describe_schedule,
    next_fire_times,
    parse_timezone,
)
from app.settings_store import default_timezone
from app.steps import STEP_TYPES
from app.visibility import live_job, may_see_job, may_see_tags, restricted_tags, stored_job

bp = Blueprint("editor", __name__)

PREVIEW_FIRES = 5
NEW_JOB: dict = {"id": "", "enabled": True, "timezone": "UTC", "params": [], "steps": []}


@bp.get("/jobs/new")
@requires(JOB_EDIT)
def new():
    """Show an empty job form, or a copy of ``?duplicate=<id>`` under a new id."""
    source_id = request.args.get("duplicate", "")
    definition = copy.deepcopy(NEW_JOB)
    definition["timezone"] = default_timezone(db.session())  # Admin → Settings
    if source_id:
        source = _live_job(source_id)
        definition = job_definition(source)
        definition["id"] = _free_copy_id(source.id)
    return _render_form(None, job_to_form(definition), definition, {}, duplicate_of=source_id)


@bp.post("/jobs/new")
@requires(JOB_EDIT)
def create():
    """Apply an edit button, or validate and save a new job."""
    return _handle_post(None)


@bp.get("/jobs/<job_id>/edit")
@requires(JOB_EDIT)
def edit(job_id: str):
    """Show the job's form with its current definition."""
    definition = job_definition(_live_job(job_id))
    return _render_form(job_id, job_to_form(definition), definition, {})


@bp.post("/jobs/<job_id>/edit")
@requires(JOB_EDIT)
def update(job_id: str):
    """Apply an edit button, or validate and save the job (a new version when it changed)."""
    _live_job(job_id)
    return _handle_post(job_id)


@bp.get("/jobs/schedule-preview")
@requires(JOB_EDIT)
def schedule_preview():
    """Return the schedule preview: the next fires in the job's timezone and in words."""
    return render_template("editor/_schedule_preview.html", **_preview(request.args))


@bp.get("/jobs/<job_id>/toml")
@requires(JOB_EDIT)
def raw_toml(job_id: str):
    """Show the job as the TOML an export writes (read-only)."""
    job = _live_job(job_id)
    return render_template(
        "editor/toml.html", job=job, tab="toml", toml=definition_toml(job_definition(job))
    )


@bp.get("/jobs/<job_id>/versions")
@requires(JOB_EDIT)
def versions(job_id: str):
    """List the job's versions; pick two to compare, or one to restore."""
    job = _live_job(job_id)
    rows = list_versions(db.session(), job_id)
    return render_template("editor/versions.html", job=job, tab="versions", versions=rows)


@bp.get("/jobs/<job_id>/versions/diff")
@requires(JOB_EDIT)
def diff(job_id: str):
    """Show what changed between two versions (``?from=1&to=3``)."""
    job = _live_job(job_id)
    try:
        old_number = int(request.args.get("from", ""))
        new_number = int(request.args.get("to", ""))
    except ValueError:
        abort(400, description="Choose two versions to compare.")
    old = get_version(db.session(), job_id, old_number) or abort(404)
    new = get_version(db.session(), job_id, new_number) or abort(404)
    lines = diff_definitions(
        old.definition, new.definition, (f"version {old_number}", f"version {new_number}")
    )
    return render_template(
        "editor/diff.html",
        job=job,
        tab="versions",
        lines=lines,
        old=old_number,
        new=new_number,
        versions=list_versions(db.session(), job_id),
    )


@bp.post("/jobs/<job_id>/versions/<int:version>/restore")
@requires(JOB_EDIT)
def restore(job_id: str, version: int):
    """Make an old version current again (saved as a new version)."""
    job = _live_job(job_id)
    session = db.session()
    old = get_version(session, job_id, version) or abort(404)
    current = [job_definition(job)]
    if not current_user.can(PYTHON_EDIT) and python_code_problems(old.definition, current):
        message = "Restoring this version changes Python code: you need python:edit for this."
        abort(403, description=message)
    if not may_see_tags(current_user, old.definition.get("tags")):
        allowed = ", ".join(sorted(restricted_tags(current_user)))
        abort(403, description=f"Your role may only edit jobs tagged {allowed}.")
    try:
        outcome = restore_version(session, job_id, version, current_user, ip=client_ip())
    except ValueError as error:
        session.rollback()
        flash(f"Version {version} cannot be restored: {error}", "warning")
        return redirect(url_for("editor.versions", job_id=job_id))
    session.commit()
    if outcome == "unchanged":
        flash(f"Version {version} is the current definition: nothing to restore.", "info")
    else:
        jobs_changed.send(None)
        flash(f"Restored version {version} as version {job.version}.", "success")
    return redirect(url_for("editor.versions", job_id=job_id))


@bp.get("/jobs/<job_id>/delete")
@requires(JOB_DELETE)
def confirm_delete(job_id: str):
    """Ask before deleting the job."""
    return render_template("editor/delete.html", job=_live_job(job_id))


@bp.post("/jobs/<job_id>/delete")
@requires(JOB_DELETE)
def delete(job_id: str):
    """Soft-delete the job: it leaves the catalogue and the clock; its runs stay readable."""
    delete_job(db.session(), _live_job(job_id), current_user, client_ip())
    db.session().commit()
    jobs_changed.send(None)
    flash(f"Deleted job {job_id}. Its runs stay in the history.", "success")
    return redirect(url_for("jobs.index"))


def _live_job(job_id: str) -> Job:
    job = live_job(db.session(), job_id)  # exactly this id (MariaDB compares without case)
    if job is None or not may_see_job(current_user, job):
        abort(404, description=f"There is no job {job_id!r}.")
    return job


def _free_copy_id(job_id: str) -> str:
    taken = set(db.session().scalars(sa.select(Job.id).where(Job.id.like(f"{job_id}-copy%"))))
    candidate, number = f"{job_id}-copy", 2
    while candidate in taken:
        candidate, number = f"{job_id}-copy-{number}", number + 1
    return candidate


def _handle_post(job_id: str | None):
    draft, problems = form_to_job(request.form)
    if job_id is not None:
        draft["id"] = job_id  # the id is fixed once the job exists
    values = _posted_values(draft)
    op = request.form.get("op", "save")
    duplicate_of = request.form.get("duplicate_of", "")
    if op != "save":
        confirm_remove = _apply_op(op, draft)
        values = _posted_values(draft)
        return _render_form(
            job_id, values, draft, {}, confirm_remove=confirm_remove, duplicate_of=duplicate_of
        )
    spec, errors = validate_job(copy.deepcopy(draft))
    stored = live_job(db.session(), job_id) if job_id else None  # its references are kept
    before = [job_definition(stored)] if may_see_job(current_user, stored) else []
    if spec is not None:  # the jobs it names exist, and it makes no cycle
        errors += graph_errors(db.session(), {0: spec}, current_user, before)
    fields = {**errors_by_field(errors), **problems}
    for line in unknown_channels(db.session(), {0: spec}, set()) if spec else []:
        fields.setdefault("alerts_channels", line.partition(": ")[2])  # deleted meanwhile
    session = db.session()
    if job_id is None and draft["id"]:
        existing = stored_job(session, draft["id"])  # exactly this id (MariaDB: any case)
        if existing is not None and not may_see_job(current_user, existing):
            fields["id"] = "this id is not available"  # another team's job: neither confirmed
        elif existing is not None and existing.deleted_at is None:
            fields["id"] = f"a job named {draft['id']!r} already exists"
    if not may_see_tags(current_user, (spec or draft).get("tags")):  # a team edits its own
        allowed = ", ".join(sorted(restricted_tags(current_user)))
        fields["tags"] = f"your role may only edit jobs tagged {allowed}"
    if fields:
        return _render_form(job_id, values, draft, fields, duplicate_of=duplicate_of), 422
    if not current_user.can(PYTHON_EDIT):
        source = session.get(Job, duplicate_of) if duplicate_of else None
        if source is not None and source.deleted_at is None:
            before.append(job_definition(source))
        denied = python_code_problems(spec, before)
        if denied:
            return _render_form(job_id, values, draft, denied, duplicate_of=duplicate_of), 403
    outcome = apply_job(session, spec, current_user, ip=client_ip())
    session.commit()
    saved = session.get(Job, spec["id"])
    if outcome == "unchanged":
        flash(f"No changes to {spec['id']}.", "info")
    else:
        jobs_changed.send(None)
        verb = "Created" if outcome == "created" else "Saved"
        flash(f"{verb} job {spec['id']} (version {saved.version}).", "success")
    if job_id is None:
        return redirect(url_for("jobs.index"))
    return redirect(url_for("editor.edit", job_id=job_id))


def _posted_values(draft: dict) -> dict[str, str]:
    """The job's scalar fields as posted (kept as typed), rows renumbered from the draft."""
    rows = {key: value for key, value in job_to_form(draft).items() if ROW.match(key)}
    scalars = {key: value for key, value in request.form.items() if not ROW.match(key)}
    return {**scalars, **rows}


def _apply_op(op: str, draft: dict) -> int | None:
    """Change the draft for one edit button; return a step index waiting for delete's confirm."""
    action, _, number = op.rpartition("-")
    if op == "add-step":
        kind = request.form.get("new_step_type", "")
        if kind in _offered_step_types():
            draft["steps"].append(_new_step(draft["steps"], kind))
        return None
    if op == "add-param":
        draft["params"].append({"name": "", "type": "string", "required": False, "help": ""})
        return None
    if not number.isdigit():
        return None
    index = int(number)
    rows = draft["params"] if action == "remove-param" else draft["steps"]
    if not 0 <= index < len(rows):
        return None
    if action == "step-up" and index > 0:
        rows[index - 1], rows[index] = rows[index], rows[index - 1]
    elif action == "step-down" and index < len(rows) - 1:
        rows[index + 1], rows[index] = rows[index], rows[index + 1]
    elif action == "remove-step":
        return index  # asks first
    elif action in ("confirm-remove-step", "remove-param"):
        del rows[index]
    return None


def _new_step(steps: list[dict], kind: str) -> dict:
    names = {step.get("name") for step in steps}
    number = len(steps) + 1
    while f"step-{number}" in names:
        number += 1
    return {"name": f"step-{number}", "type": kind, "enabled": True}


def _offered_step_types() -> list[str]:
    kinds = [kind for kind in STEP_TYPES if kind != "maintenance"]  # built-in job only
    if not current_user.can(PYTHON_EDIT):
        kinds.remove("python")
    return kinds


def _render_form(job_id, values, draft, errors, confirm_remove=None, duplicate_of=""):
    job = db.session().get(Job, job_id) if job_id else None
    steps = draft.get("steps") or []
    return render_template(
        "editor/form.html",
        job=job,
        tab="edit",
        values=values,
        steps=steps,
        param_count=len(draft.get("params") or []),
        errors=errors,
        general_errors=_general_errors(errors),
        confirm_remove=confirm_remove,
        duplicate_of=duplicate_of,
        step_types=_offered_step_types(),
        new_step_type=request.form.get("new_step_type", ""),
        step_labels={kind: t.label or kind for kind, t in STEP_TYPES.items()},
        step_config_html=lambda index, step: _step_config_html(index, step, errors),
        timezones=sorted(available_timezones()),
        choices={
            "overlap": OVERLAP_POLICIES,
            "log_level": LOG_LEVELS,
            "param_type": PARAM_TYPES,
            "backoff": BACKOFFS,
            "on_failure": ON_FAILURE,
        },
        **_preview(values),
    )


def _general_errors(errors: dict[str, str]) -> list[str]:
    """Errors no field shows (one list at the top of the form also names every problem)."""
    return [f"{key or 'job'}: {message}" for key, message in errors.items()]


def _step_config_html(index: int, step: dict, errors: dict[str, str]) -> Markup:
    """Render the step type's editor partial, its ``config.x`` fields named for row ``index``."""
    kind = step.get("type") or ""
    prefix = f"steps-{index}.config."
    problems = {key[len(prefix) :]: msg for key, msg in errors.items() if key.startswith(prefix)}
    template = f"steps/_{kind}_editor.html"
    try:
        current_app.jinja_env.get_template(template)
    except TemplateNotFound:
        template = "editor/_step_config.html"
    step_type = STEP_TYPES.get(kind)
    html = render_template(
        template,
        config=step_config(step),
        problems=problems,
        step_id=index,
        kind=kind,
        step_type=step_type,
        locked=kind == "python" and not current_user.can(PYTHON_EDIT),
        **_connector_names(kind),
    )
    # the partials are written for a form of one step; this form holds many
    return Markup(html.replace('name="config.', f'name="{prefix}'))


def _connector_names(kind: str) -> dict:
    def named(connector_kind: str) -> list[str]:
        query = sa.select(Connector.name).where(Connector.kind == connector_kind)
        return list(db.session().scalars(query.order_by(Connector.name)))

    if kind == "http":
        return {"connectors": named("http")}
    if kind in ("sql_query", "sql_copy"):
        return {"connectors": named("sql")}
    if kind == "ldap_sync":
        return {"ldap_connectors": named("ldap"), "sql_connectors": named("sql")}
    return {}


def _preview(values) -> dict:
    """The next fires and the words for the posted schedule fields, or the problem."""
    kind = values.get("schedule_kind") or "none"
    schedule = (values.get("schedule") or "").strip() if kind == "cron" else ""
    interval = (values.get("interval") or "").strip() if kind == "interval" else ""
    timezone = (values.get("timezone") or "").strip() or "UTC"
    preview = {"preview_kind": kind, "fires": [], "words": "", "preview_error": ""}
    if kind != "none" and not (schedule or interval):
        preview["preview_error"] = (
            "Type a cron expression." if kind == "cron" else "Type an interval (15m, 2h, 1d)."
        )
        return preview
    if kind == "none":
        preview["words"] = "manual only"
        return preview
    try:
        parse_timezone(timezone)
        trigger = build_trigger(schedule or None, interval or None, timezone)
    except ScheduleError as error:
        preview["preview_error"] = f"{error.field}: {error.message}"
        return preview
    preview["words"] = describe_schedule(schedule or None, interval or None)
    preview["fires"] = next_fire_times(trigger, PREVIEW_FIRES) if trigger else []
    preview["timezone"] = timezone
    return preview
