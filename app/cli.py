"""The ``nomaflow`` command (DESIGN §8). Exit codes: 0 ok, 1 failed, 2 bad input, 3 no database."""

from __future__ import annotations

import click
import sqlalchemy as sa

from app.cli_support import (  # noqa: F401  (re-exported for the command modules)
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_NO_DATABASE,
    app_or_exit,
    fail,
    settings_or_exit,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nomaflow")
def main() -> None:
    """Nomaflow: one catalogue of jobs, one scheduler, one history of runs."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Run the server: UI, Socket.IO, scheduler and runner in this process."""
    from app.live import socketio
    from app.startup import StartupError, prepare_server, stop_server

    app = app_or_exit()
    try:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        prepare_server(app, served_at=f"http://{shown}:{port}")
    except StartupError as error:
        fail(str(error), error.exit_code)
    _quiet_werkzeug()
    click.echo(f"Nomaflow is serving on http://{shown}:{port}/ (Ctrl+C stops it)", err=False)
    try:
        socketio.run(
            app,
            host=host,
            port=port,
            allow_unsafe_werkzeug=True,
            use_reloader=False,
            request_handler=_request_handler(),
        )
    finally:
        stop_server(app)


def _request_handler():
    """Werkzeug's request handler, with TCP_NODELAY and a clean end of websockets.

    The live channel writes small websocket frames in bursts (a log event, a fragment, an ack);
    with Nagle's algorithm on, each frame after the first waits for the browser's delayed ACK
    (40 ms on Linux, up to 200 ms on Windows): see bench/engine.py. When a websocket ends,
    engineio raises ConnectionError; without closing the connection there, Werkzeug reads the
    client's last websocket frame as the next HTTP request and logs an ERROR "code 400".
    """
    from werkzeug.serving import WSGIRequestHandler

    class RequestHandler(WSGIRequestHandler):
        disable_nagle_algorithm = True  # honoured by socketserver.StreamRequestHandler.setup

        def connection_dropped(self, error, environ=None) -> None:
            self.close_connection = True

    return RequestHandler


def _quiet_werkzeug() -> None:
    """Drop per-request access lines and the dev-server banners; keep warnings and errors.

    The threaded Werkzeug server is how `nomaflow serve` runs a small team's instance; wsgi.py
    under gunicorn is the documented alternative.
    """
    import logging

    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_log.setLevel(logging.WARNING)
    werkzeug_log.addFilter(lambda record: "production" not in record.getMessage())


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database to the newest (or the given) revision."""
    from app.schema import current_revision, upgrade_database
    from app.startup import describe_database, unreachable_message

    settings = settings_or_exit()
    try:
        upgrade_database(settings.database_url, revision)
        now = current_revision(settings.database_url)
    except sa.exc.OperationalError as error:
        fail(unreachable_message(settings.database_url, error), EXIT_NO_DATABASE)
    click.echo(f"database {describe_database(settings.database_url)} is at revision {now}")


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("name")
@click.option("--role", required=True, help="admin, editor, operator or viewer")
@click.option("--password", default=None, help="generated and printed when left out")
def user_create(name: str, role: str, password: str | None) -> None:
    """Create a user with a role."""
    from app.db import get_database
    from app.startup import unreachable_message
    from app.users import UserError, create_user

    app = app_or_exit()
    try:
        with get_database(app).session_scope() as db_session:
            new_user, generated = create_user(db_session, name, role, password)
    except UserError as error:
        fail(f"{error.field}: {error.message}", EXIT_BAD_INPUT)
    except sa.exc.OperationalError as error:
        fail(unreachable_message(app.config["NOMAFLOW"].database_url, error), EXIT_NO_DATABASE)
    click.echo(f"created user {new_user.username!r} with role {role!r}")
    if generated:
        click.echo(f"password: {generated}")


@main.command()
def check() -> None:
    """Check config, database, migrations and the scheduler setting."""
    from app.schema import current_revision, head_revision
    from app.startup import describe_database, unreachable_message

    settings = settings_or_exit()
    click.echo(f"config     ok (instance folder {settings.instance_path})")
    try:
        revision = current_revision(settings.database_url)
    except sa.exc.SQLAlchemyError as error:
        fail(unreachable_message(settings.database_url, error), EXIT_NO_DATABASE)
    click.echo(f"database   ok ({describe_database(settings.database_url)})")
    head = head_revision()
    scheduler = (
        "enabled (leader or standby once serving)"
        if settings.scheduler_enabled
        else ("disabled (NOMAFLOW_SCHEDULER_ENABLED=false)")
    )
    if revision != head:
        click.echo(f"migrations behind: at {revision or 'none'}, newest is {head}")
        click.echo(f"scheduler  {scheduler}")
        fail("run `nomaflow db upgrade`", EXIT_FAILED)
    click.echo(f"migrations ok (revision {revision})")
    click.echo(f"scheduler  {scheduler}")


def _register_commands() -> None:
    from app import cli_connectors, cli_jobs, cli_runs, cli_tokens

    main.add_command(cli_jobs.jobs)
    cli_runs.register(main)
    cli_connectors.register(main)
    main.add_command(cli_tokens.tokens)


_register_commands()

if __name__ == "__main__":
    main()
