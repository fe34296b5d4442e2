"""Admin → Settings: retention, runner pool size, default timezone, scheduler status."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.builtin_jobs import MAINTENANCE_JOB
from app.db import utcnow
from app.engine.runner import node_name
from app.permissions import SETTINGS_ADMIN
from app.scheduler import scheduler_role
from app.settings_store import (
    POOL_SIZE_ENV,
    RETENTION_FIELDS,
    SettingError,
    default_timezone,
    pool_size,
    processes,
    retention,
    set_default_timezone,
    set_pool_size,
    set_retention,
    timezones,
)

bp = Blueprint("admin_settings", __name__, url_prefix="/settings")


@bp.get("")
@requires(SETTINGS_ADMIN)
def index():
    """Show the settings and every process's scheduler role."""
    return _page()


@bp.post("/retention")
@requires(SETTINGS_ADMIN)
def update_retention():
    """Save how long finished runs are kept (the maintenance job's prune step)."""
    values = {name: request.form.get(name, "") for name in RETENTION_FIELDS}
    return _save(
        lambda session: set_retention(session, values, actor=current_user, ip=client_ip()),
        "Retention saved: the next maintenance run uses it.",
        values,
    )


@bp.post("/runner")
@requires(SETTINGS_ADMIN)
def update_runner():
    """Save the runner pool size (used from the next start)."""
    values = {"pool_size": request.form.get("pool_size", "")}
    return _save(
        lambda session: set_pool_size(
            session, values["pool_size"], actor=current_user, ip=client_ip()
        ),
        "Pool size saved: it takes effect when Nomaflow next starts.",
        values,
    )


@bp.post("/timezone")
@requires(SETTINGS_ADMIN)
def update_timezone():
    """Save the timezone new jobs start with."""
    values = {"default_timezone": request.form.get("default_timezone", "")}
    return _save(
        lambda session: set_default_timezone(
            session, values["default_timezone"], actor=current_user, ip=client_ip()
        ),
        "Default timezone saved: new jobs start with it.",
        values,
    )


def _save(change, notice: str, values: dict[str, str]):
    session = db.session()
    try:
        changed = change(session)
    except SettingError as error:
        session.rollback()
        return _page(values, {error.field: error.message}), 422
    session.commit()
    flash(notice if changed else "Nothing changed.", "success" if changed else "info")
    return redirect(url_for("admin_settings.index"))


def _page(posted: dict[str, str] | None = None, errors: dict[str, str] | None = None):
    session = db.session()
    settings = current_app.config["NOMAFLOW"]
    kept = retention(session)
    pool = pool_size(session, settings)
    values = {
        **{name: (kept or {}).get(name, "") for name in RETENTION_FIELDS},
        "pool_size": pool.stored if pool.stored is not None else pool.value,
        "default_timezone": default_timezone(session),
        **(posted or {}),
    }
    return render_template(
        "admin/settings.html",
        values=values,
        errors=errors or {},
        retention_available=kept is not None,
        maintenance_job=MAINTENANCE_JOB["id"],
        pool=pool,
        pool_env=POOL_SIZE_ENV,
        timezones=timezones(),
        processes=processes(session, utcnow()),
        this_node=node_name(settings.node_name),
        this_role=scheduler_role(current_app),
    )
