"""The job catalogue and the Run-with-parameters form."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.builtin_jobs import MAINTENANCE_JOB
from app.catalogue import (
    all_tags,
    catalogue_row,
    catalogue_rows,
    load_jobs,
    matches,
    may_see,
    set_enabled,
    visible_cards,
)
from app.db import utcnow
from app.engine.dispatch import LOG_LEVELS, DispatchError
from app.engine.params import coerce
from app.engine.service import abort_run, trigger_job
from app.engine.signals import jobs_changed
from app.engine.templating import date_helpers, json_safe, render_value
from app.models import Connector, Job, Run
from app.permissions import JOB_EDIT, JOB_RUN, JOB_VIEW
from app.presets import PresetError, delete_preset, get_preset, save_preset
from app.visibility import live_job

bp = Blueprint("jobs", __name__)
PAGE_SIZE = 50


@bp.get("/jobs")
@requires(JOB_VIEW)
def index():
    """List the job catalogue, filtered by search text and tag (htmx gets the region only)."""
    query, tag = request.args.get("q", "").strip(), request.args.get("tag", "").strip()
    after = request.args.get("after", "")
    cards = visible_cards(db.session(), current_user)  # id, description, tags: a light read
    matching = [card for card in cards if card.id > after and matches(card, query, tag)]
    shown = load_jobs(db.session(), [card.id for card in matching[:PAGE_SIZE]])
    more_url = None
    if len(matching) > PAGE_SIZE:  # pages by id: a thousand jobs stay a light page
        more_url = _filter_url(query, tag, after=matching[PAGE_SIZE - 1].id)
    context = {
        "rows": catalogue_rows(db.session(), shown, utcnow()),
        "more_url": more_url,
        "tags": all_tags(cards),
        "q": query,
        "tag": tag,
        "filter_url": _filter_url,
    }
    if request.headers.get("HX-Request"):
        response = make_response(render_template("jobs/_catalogue.html", **context))
        response.headers["HX-Push-Url"] = _filter_url(query, tag)  # a shareable address
    else:
        only_builtin = all(card.id == MAINTENANCE_JOB["id"] for card in cards)
        page = render_template(
            "jobs/index.html", any_jobs=bool(cards), only_builtin=only_builtin, **context
        )
        response = make_response(page)
    response.vary.add("HX-Request")
    return response


@bp.get("/jobs/<job_id>/row")
@requires(JOB_VIEW)
def row(job_id: str):
    """Return one catalogue row (live refresh after a run of the job changed)."""
    return _render_row(_visible_job(job_id))


@bp.post("/jobs/<job_id>/enabled")
@requires(JOB_EDIT)
def set_enabled_(job_id: str):
    """Switch the job's schedule on or off; the clock re-syncs at once."""
    job = _visible_job(job_id)
    set_enabled(db.session(), job, request.form.get("enabled") == "true", current_user, client_ip())
    db.session().commit()
    jobs_changed.send(None)
    if request.headers.get("HX-Request"):
        return _render_row(job)
    return redirect(url_for("jobs.index"))


@bp.post("/jobs/<job_id>/runs/<int:run_id>/cancel")
@requires(JOB_RUN)
def cancel(job_id: str, run_id: int):
    """Abort the job's active run from the catalogue and return its row."""
    job = _visible_job(job_id)
    run = db.session().get(Run, run_id)
    if run is None or run.job_id != job.id:  # another job's run: maybe another team's
        abort(404)
    try:
        abort_run(run_id, current_user, client_ip())
    except DispatchError as error:
        if error.status == 404:
            abort(404)
    db.session().expire_all()
    if request.headers.get("HX-Request"):
        return _render_row(job)
    return redirect(url_for("jobs.index"))


@bp.post("/jobs/<job_id>/run-now")
@requires(JOB_RUN)
def run_now(job_id: str):
    """Queue a manual run with the default parameters and open its page."""
    _visible_job(job_id)
    try:
        run = trigger_job(job_id, "manual", {}, current_user, ip=client_ip())
    except DispatchError as error:
        fields = "; ".join(f"{k}: {v}" for k, v in error.fields.items())
        flash(f"{job_id} was not started: {fields or error.message}", "warning")
        return _go_to(url_for("jobs.index"))
    return _go_to(url_for("runs.detail", run_id=run.id))


def _go_to(location: str):
    """Redirect; an htmx button (the catalogue's Run now) is told to load the page instead."""
    if request.headers.get("HX-Request"):
        response = make_response("", 204)
        response.headers["HX-Redirect"] = location
        return response
    return redirect(location)


@bp.get("/jobs/<job_id>/run")
@requires(JOB_RUN)
def run_form(job_id: str):
    """Show the Run-with-parameters form: defaults, a preset's values or a past run's."""
    job = _visible_job(job_id)
    values = _default_values(job)
    log_level, disabled, source_run = job.log_level, [], None
    preset_name = request.args.get("preset", "")
    from_run = request.args.get("from_run", type=int)
    if preset_name:
        preset = get_preset(job, preset_name) or abort(404)
        values.update({k: _display(job, k, v) for k, v in preset["params"].items()})
        log_level = preset["log_level"] or log_level
        disabled = preset["disabled_steps"]
    elif from_run:
        run = db.session().get(Run, from_run)
        if run is None or run.job_id != job.id:
            abort(404)
        secrets = _secret_names(job)
        given = {k: v for k, v in (run.params or {}).items() if k not in secrets}
        values.update({k: _display(job, k, v) for k, v in given.items() if _declared(job, k)})
        log_level, disabled, source_run = run.log_level, list(run.disabled_steps or []), run
    return _render_form(
        job, values, log_level, disabled, {}, source_run=source_run, preset=preset_name
    )


@bp.post("/jobs/<job_id>/run")
@requires(JOB_RUN)
def run(job_id: str):
    """Queue a run with the form's values and open its live page; 422 keeps the values."""
    job = _visible_job(job_id)
    params, log_level, disabled = _read_form(job)
    try:
        fired = trigger_job(
            job.id,
            "manual",
            params,
            current_user,
            log_level=log_level,
            disabled_steps=disabled,
            ip=client_ip(),
        )
    except DispatchError as error:
        if error.status == 404:
            abort(404)
        values = {**_default_values(job), **_form_values(job)}
        problem = None if error.fields else error.message
        return _render_form(job, values, log_level, disabled, error.fields, problem, 422)
    return redirect(url_for("runs.detail", run_id=fired.id))


@bp.post("/jobs/<job_id>/presets")
@requires(JOB_RUN)
def save_preset_(job_id: str):
    """Save the form's values (never its secrets) as a named preset."""
    job = _visible_job(job_id)
    params, log_level, disabled = _read_form(job)
    name = request.form.get("preset_name", "").strip()
    try:
        save_preset(db.session(), job, name, params, log_level, disabled, current_user, client_ip())
    except PresetError as error:
        db.session().rollback()
        values = {**_default_values(job), **_form_values(job)}
        return _render_form(job, values, log_level, disabled, error.fields, None, 422)
    db.session().commit()
    flash(f"Preset “{name}” saved (secret parameters are never stored).", "info")
    return redirect(url_for("jobs.run_form", job_id=job.id, preset=name))


@bp.post("/jobs/<job_id>/presets/<name>/delete")
@requires(JOB_RUN)
def delete_preset_(job_id: str, name: str):
    """Delete a preset and go back to the form."""
    job = _visible_job(job_id)
    if not delete_preset(db.session(), job, name, current_user, client_ip()):
        abort(404)
    db.session().commit()
    flash(f"Preset “{name}” deleted.", "info")
    return redirect(url_for("jobs.run_form", job_id=job.id))


def _visible_job(job_id: str) -> Job:
    job = live_job(db.session(), job_id)  # exactly this id (MariaDB compares without case)
    if job is None or not may_see(job, current_user):
        abort(404)
    return job


def _render_row(job: Job):
    return render_template("jobs/_row.html", row=catalogue_row(db.session(), job, utcnow()))


def _filter_url(query: str, tag: str, after: str = "") -> str:
    args = urlencode({k: v for k, v in (("q", query), ("tag", tag), ("after", after)) if v})
    return url_for("jobs.index") + (f"?{args}" if args else "")


def _render_form(
    job, values, log_level, disabled, errors, problem=None, status=200, source_run=None, preset=""
):
    connectors = db.session().scalars(sa.select(Connector.name).order_by(Connector.name)).all()
    page = render_template(
        "jobs/run_form.html",
        job=job,
        values=values,
        log_level=log_level,
        log_levels=LOG_LEVELS,
        disabled=set(disabled),
        errors=errors,
        problem=problem,
        source_run=source_run,
        preset=preset,
        connectors=connectors,
        presets=sorted(job.presets or {}),
    )
    return page, status


def _declared(job: Job, name: str) -> dict[str, Any] | None:
    return next((p for p in job.params or [] if p["name"] == name), None)


def _secret_names(job: Job) -> set[str]:
    return {p["name"] for p in job.params or [] if p["type"] == "secret"}


def _default_values(job: Job) -> dict[str, Any]:
    """Return each parameter's default as the form shows it (templates rendered now)."""
    helpers = date_helpers(job.timezone)
    values: dict[str, Any] = {}
    for param in job.params or []:
        if param["type"] == "secret" or param.get("default") in (None, ""):
            continue
        try:
            value = json_safe(render_value(param["default"], helpers))
        except Exception:  # a broken template default: show it; dispatch names the problem
            value = param["default"]
        values[param["name"]] = _display(job, param["name"], value)
    return values


def _display(job: Job, name: str, value: Any) -> Any:
    """Turn a stored value into what its input shows (datetime-local has no timezone)."""
    param = _declared(job, name)
    if param is None or param["type"] == "secret":
        return ""
    if param["type"] == "bool":
        try:
            return coerce(param, value)
        except ValueError:
            return False
    if param["type"] == "datetime":
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
        return moment.replace(tzinfo=None).isoformat(timespec="seconds")
    if param["type"] == "date" and isinstance(value, date):
        return value.isoformat()
    return "" if value is None else str(value)


def _form_values(job: Job) -> dict[str, Any]:
    """Return what the form sent, for showing it again (secrets are never sent back)."""
    values: dict[str, Any] = {}
    for param in job.params or []:
        field = f"param.{param['name']}"
        if param["type"] == "bool":
            values[param["name"]] = field in request.form
        elif param["type"] != "secret":
            values[param["name"]] = request.form.get(field, "")
    return values


def _read_form(job: Job) -> tuple[dict[str, Any], str | None, list[str]]:
    """Return (params, log level, steps left out) from the posted form."""
    params: dict[str, Any] = {}
    for param in job.params or []:
        field = f"param.{param['name']}"
        if param["type"] == "bool":
            params[param["name"]] = "true" if field in request.form else "false"
        elif request.form.get(field, "") != "":
            params[param["name"]] = request.form[field]
    kept = set(request.form.getlist("step"))
    disabled = [step.name for step in job.steps if step.enabled and step.name not in kept]
    return params, request.form.get("log_level") or None, disabled
