"""`nomaflow run / trigger / runs ...`: runs from the command line (DESIGN §8)."""

from __future__ import annotations

import json
import sys

import click
import sqlalchemy as sa

from app.cli_support import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NO_DATABASE, app_or_exit, fail

PARAM_HELP = "a parameter as NAME=VALUE (repeatable)"


def _params_or_exit(pairs: tuple[str, ...]) -> dict[str, str]:
    from app.engine.params import parse_cli_params

    try:
        return parse_cli_params(list(pairs))
    except ValueError as error:
        fail(str(error), EXIT_BAD_INPUT)


def _dispatch_or_exit(app, job: str, trigger: str, params: dict, log_level: str | None):
    from app.engine.dispatch import DispatchError
    from app.engine.service import trigger_job
    from app.startup import unreachable_message

    try:
        with app.app_context():
            return trigger_job(job, trigger, params, log_level=log_level)
    except DispatchError as error:
        details = "; ".join(f"{k}: {v}" for k, v in error.fields.items()) or error.message
        fail(f"{job}: {details}", EXIT_BAD_INPUT)
    except sa.exc.OperationalError as error:
        fail(unreachable_message(app.config["NOMAFLOW"].database_url, error), EXIT_NO_DATABASE)


@click.command("run")
@click.argument("job")
@click.option("--param", "params", multiple=True, help=PARAM_HELP)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def run_command(job: str, params: tuple[str, ...], log_level: str | None) -> None:
    """Run JOB in this process and stream its log; the exit code is the outcome."""
    from app.engine.logs import format_line
    from app.engine.service import start_runner, stop_runner
    from app.engine.signals import log_appended

    app = app_or_exit()
    given = _params_or_exit(params)
    runner = start_runner(app, claim_queued=False)
    run = _dispatch_or_exit(app, job, "manual", given, log_level)
    if run.state != "QUEUED":
        click.echo(f"run #{run.id} {run.state}: {run.reason}", err=True)
        stop_runner(app)
        sys.exit(EXIT_FAILED)

    def echo_lines(run_id, lines=(), **_kw):
        if run_id == run.id:
            for line in lines:
                click.echo(format_line(line["seq"], line["ts"], line["level"], line["message"]))

    log_appended.connect(echo_lines)
    try:
        state = runner.execute_now(run.id)
    finally:
        log_appended.disconnect(echo_lines)
        stop_runner(app)
    click.echo(f"run #{run.id} {state}", err=True)
    sys.exit(0 if state == "SUCCEEDED" else EXIT_FAILED)


@click.command("trigger")
@click.argument("job")
@click.option("--param", "params", multiple=True, help=PARAM_HELP)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def trigger_command(job: str, params: tuple[str, ...], log_level: str | None) -> None:
    """Queue a run of JOB for the server (through the database); print the run id."""
    app = app_or_exit()
    run = _dispatch_or_exit(app, job, "manual", _params_or_exit(params), log_level)
    click.echo(run.id)
    if run.state != "QUEUED":
        click.echo(f"run #{run.id} {run.state}: {run.reason}", err=True)


@click.group("runs")
def runs_group() -> None:
    """Look at and abort runs."""


@runs_group.command("list")
@click.option("--job")
@click.option("--state")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
def runs_list(job: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List the newest runs."""
    from app.db import get_database, utcnow
    from app.engine.history import duration_text, list_runs, load_run_view, run_document

    app = app_or_exit()
    with get_database(app).session_scope() as db:
        runs = list_runs(db, job=job, state=state, limit=limit)
        if as_json:
            documents = [run_document(load_run_view(db, r.id)) for r in runs]
            click.echo(json.dumps(documents, indent=2))
            return
        now = utcnow()
        for r in runs:
            took = duration_text(r.started_at, r.finished_at, now)
            click.echo(
                f"#{r.id:<7} {r.job_id:<30} {r.state:<11} {r.trigger:<9} "
                f"{r.queued_at:%Y-%m-%d %H:%M:%S} {took}"
            )


@runs_group.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--log", "with_log", is_flag=True, help="print the whole log too")
def runs_show(run_id: int, as_json: bool, with_log: bool) -> None:
    """Show a run, its steps and (with --log) its log."""
    from app.db import get_database
    from app.engine.history import load_run_view, log_lines, run_document
    from app.engine.logs import format_line

    app = app_or_exit()
    with get_database(app).session_scope() as db:
        view = load_run_view(db, run_id)
        if view is None:
            fail(f"no run #{run_id}", EXIT_BAD_INPUT)
        document = run_document(view)
        if as_json:
            if with_log:
                document["log"] = [
                    {
                        "seq": line.seq,
                        "ts": line.ts.isoformat(),
                        "level": line.level,
                        "message": line.message,
                    }
                    for line in log_lines(db, run_id)
                ]
            click.echo(json.dumps(document, indent=2))
            return
        click.echo(
            f"run #{run_id} of {document['job']}: {document['state']}"
            + (f" ({document['reason']})" if document["reason"] else "")
        )
        click.echo(
            f"  trigger {document['trigger']}, queued {document['queued_at']}, "
            f"finished {document['finished_at'] or '-'}"
        )
        for step in document["steps"]:
            click.echo(
                f"  {step['name']:<24} {step['state']:<10} attempts {step['attempts']}"
                + (f"  {step['error']}" if step["error"] else "")
            )
        if with_log:
            for line in log_lines(db, run_id):
                click.echo(format_line(line.seq, line.ts, line.level, line.message))


@runs_group.command("abort")
@click.argument("run_id", type=int)
def runs_abort(run_id: int) -> None:
    """Abort a run from any process: the request travels through the database."""
    from app.db import get_database
    from app.engine.dispatch import DispatchError, request_abort

    app = app_or_exit()
    try:
        run = request_abort(get_database(app), run_id)
    except DispatchError as error:
        fail(error.message, EXIT_BAD_INPUT if error.status == 404 else EXIT_FAILED)
    if run.state == "CANCELED":
        click.echo(f"run #{run_id} CANCELED")
    else:
        click.echo(f"run #{run_id}: abort requested; the process running it stops it")


def register(main: click.Group) -> None:
    main.add_command(run_command)
    main.add_command(trigger_command)
    main.add_command(runs_group)
