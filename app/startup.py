"""What a serving process does once before it takes requests (nomaflow serve, wsgi.py)."""

from __future__ import annotations

import atexit
import sys

import sqlalchemy as sa
from flask import Flask

from app.builtin_jobs import ensure_builtin_jobs
from app.crypto import vault
from app.db import get_database
from app.engine.service import start_runner, stop_runner
from app.live import start_live_push, stop_live_push
from app.scheduler import start_clock, stop_clock
from app.schema import current_revision, head_revision
from app.users import bootstrap_admin


class StartupError(Exception):
    """The process cannot serve; the message says what to do. ``exit_code`` follows DESIGN §8."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def describe_database(url: str) -> str:
    """Return the URL with its password hidden, for messages."""
    return sa.make_url(url).render_as_string(hide_password=True)


def unreachable_message(url: str, error: Exception) -> str:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return f"cannot reach the database at {describe_database(url)}: {reason}"


def check_database(app: Flask) -> None:
    """Fail unless the database answers and is migrated to the newest revision."""
    url = app.config["NOMAFLOW"].database_url
    try:
        revision = current_revision(url)
    except sa.exc.SQLAlchemyError as exc:
        raise StartupError(unreachable_message(url, exc), 3) from exc
    if revision != head_revision():
        raise StartupError(
            f"the database at {describe_database(url)} is at revision {revision or 'none'}, "
            f"not {head_revision()}: run `nomaflow db upgrade`",
            1,
        )


def create_first_admin(app: Flask, out=sys.stdout) -> None:
    """Create the ``admin`` account on an empty database and say how to sign in, once."""
    settings = app.config["NOMAFLOW"]
    with get_database(app).session_scope() as db_session:
        created = bootstrap_admin(db_session, settings.admin_password)
    if created is None:
        return
    _user, generated = created
    if generated:
        print(
            f"First start: created user 'admin' with password: {generated}\n"
            "  (shown only this once; change it under Admin → Users)",
            file=out,
            flush=True,
        )
    else:
        print(
            "First start: created user 'admin' with the password from NOMAFLOW_ADMIN_PASSWORD.",
            file=out,
            flush=True,
        )


def prepare_server(app: Flask, out=sys.stdout, served_at: str = "http://127.0.0.1:5000") -> None:
    """Check the database, create the first admin, start the runner, live pushes and clock.

    ``served_at`` is where this process answers (the demo smoke test probes its /healthz).
    """
    settings = app.config["NOMAFLOW"]
    check_database(app)
    create_first_admin(app, out)
    ensure_builtin_jobs(
        get_database(app),
        demo=settings.demo_jobs,
        instance_path=settings.instance_path,
        served_at=served_at,
        vault=vault(app),
    )
    start_runner(app)
    start_live_push(app)
    start_clock(app)
    atexit.register(stop_server, app)


def stop_server(app: Flask) -> None:
    """Stop the clock first (no new fires), then the runner (it flushes the logs)."""
    stop_clock(app)
    stop_runner(app)
    stop_live_push(app)
