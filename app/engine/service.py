"""The engine as the web layer and the CLI use it: one runner per serving process."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from app.alerts.service import start_alerts, stop_alerts
from app.crypto import vault
from app.db import get_database
from app.engine import dispatch as doors
from app.engine.chaining import start_chained_jobs
from app.engine.runner import Runner
from app.models import Run, User
from app.settings_store import pool_size

EXTENSION = "nomaflow.runner"


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = None


def start_runner(app: Flask, claim_queued: bool = True) -> Runner:
    """Start this process's runner (process edge only: serve, wsgi, `nomaflow run`).

    ``claim_queued=False`` (``nomaflow run``) executes only what this process dispatches and
    leaves the queue and the recovery of dead processes' runs to the servers.
    """
    if app.extensions.get(EXTENSION) is None:
        settings = app.config["NOMAFLOW"]
        with get_database(app).session_scope() as db:
            size = pool_size(db, settings).value  # env, nomaflow.toml, then the saved setting
        runner = Runner(get_database(app), vault(app), settings, size)
        runner.after_run_hooks.append(start_chained_jobs)  # [[jobs.then]]
        # hooked before the runner starts: runs it finds INTERRUPTED at start alert too
        start_alerts(app, runner, watch=claim_queued)  # after-run hook + long-run watcher
        app.extensions[EXTENSION] = runner
        runner.start(claim_queued)
    return app.extensions[EXTENSION]


def stop_runner(app: Flask) -> None:
    runner = app.extensions.get(EXTENSION)
    if runner is not None:
        runner.stop()  # runs ending during the stop still alert, then the watcher goes
        stop_alerts(app)
        app.extensions[EXTENSION] = None


def trigger_job(
    job_id: str,
    trigger: str,
    params: dict[str, Any] | None = None,
    user: User | None = None,
    **options: Any,
) -> Run:
    """Dispatch a run through the one door with this app's database and keys."""
    return doors.dispatch(get_database(), vault(), job_id, trigger, params, user, **options)


def abort_run(run_id: int, user: User | None = None, ip: str = "") -> Run:
    run = doors.request_abort(get_database(), run_id, user, ip)
    runner = current_app.extensions.get(EXTENSION)
    if runner is not None:
        runner.abort_locally(run_id)  # no need to wait for the database poll here
    return run


def replay_run(
    run_id: int, user: User | None = None, from_failed_step: bool = False, ip: str = ""
) -> Run:
    return doors.replay(get_database(), vault(), run_id, user, from_failed_step, ip)
