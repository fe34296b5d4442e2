"""``nomaflow jobs``: import, export and list job definitions as TOML (DESIGN §8).

Imports from app.cli and the domain happen inside the commands: app.cli registers this group
at its end, and `nomaflow --help` should not load the whole app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import sqlalchemy as sa
from sqlalchemy.orm import Session

DRY_RUN_WORDS = {"created": "would create", "updated": "would update", "unchanged": "unchanged"}


@click.group()
def jobs() -> None:
    """Import, export and list job definitions."""


@contextmanager
def _database_session() -> Iterator[Session]:
    """Give a session that commits at the end; exit 3 when the database cannot be reached.

    The session carries the installation's keys as ``info["vault"]`` (secrets in job files).
    """
    from app.cli import EXIT_NO_DATABASE, app_or_exit, fail
    from app.crypto import vault
    from app.db import get_database
    from app.startup import unreachable_message

    app = app_or_exit()
    try:
        with get_database(app).session_scope() as db_session:
            db_session.info["vault"] = vault(app)
            yield db_session
    except sa.exc.OperationalError as error:
        fail(unreachable_message(app.config["NOMAFLOW"].database_url, error), EXIT_NO_DATABASE)


@jobs.command("import")
@click.argument("file", metavar="FILE.toml")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change.")
def import_command(file: str, dry_run: bool) -> None:
    """Create or update every job of a TOML file, or none when anything is wrong."""
    from app.cli import EXIT_BAD_INPUT, fail
    from app.jobs_io import import_jobs

    text = _read_text(file)
    with _database_session() as db_session:
        result = import_jobs(db_session, text, dry_run=dry_run, vault=db_session.info["vault"])
    if result.errors:
        for error in result.errors:
            click.echo(error, err=True)
        count = len(result.errors)
        fail(f"{file}: {count} problem{'s' if count > 1 else ''}; nothing imported", EXIT_BAD_INPUT)
    for job_id, outcome in result.outcomes.items():
        click.echo(f"{DRY_RUN_WORDS[outcome] if dry_run else outcome:<13} {job_id}")
    if not result.outcomes:
        click.echo(f"no jobs in {file}")
    if dry_run:
        click.echo("dry run: nothing was written")


def _read_text(file: str) -> str:
    from app.cli import EXIT_BAD_INPUT, fail

    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"cannot read {file}: not UTF-8 text", EXIT_BAD_INPUT)
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror or error}", EXIT_BAD_INPUT)


@jobs.command("export")
@click.argument("job_ids", nargs=-1, metavar="[JOB]...")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")
def export_command(job_ids: tuple[str, ...], output: str | None) -> None:
    """Print jobs (default: all) as TOML that imports back unchanged."""
    from app.cli import EXIT_BAD_INPUT, fail
    from app.jobs_io import export_jobs

    with _database_session() as db_session:
        try:
            text = export_jobs(db_session, list(job_ids) or None, vault=db_session.info["vault"])
        except LookupError as error:
            fail(str(error), EXIT_BAD_INPUT)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}", EXIT_BAD_INPUT)
    click.echo(f"wrote {output}", err=True)


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def list_command(as_json: bool) -> None:
    """List the jobs: id, schedule in words, enabled, tags and steps."""
    from sqlalchemy.orm import selectinload

    from app.models import Job

    query = sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)
    with _database_session() as db_session:
        documents = [
            {
                "id": job.id,
                "description": job.description,
                "tags": job.tags or [],
                "enabled": job.enabled,
                "schedule": job.schedule,
                "interval": job.interval,
                "timezone": job.timezone,
                "steps": [step.name for step in job.steps],
            }
            for job in db_session.scalars(query.options(selectinload(Job.steps)))
        ]
    if as_json:
        click.echo(json.dumps(documents, indent=2))
    elif not documents:
        click.echo("no jobs yet: nomaflow jobs import FILE.toml")
    else:
        _echo_table(documents)


def _echo_table(documents: list[dict]) -> None:
    from app.schedules import describe_schedule

    rows = [("ID", "SCHEDULE", "ENABLED", "TAGS", "STEPS")]
    for job in documents:
        words = describe_schedule(job["schedule"], job["interval"])
        if job["schedule"] and job["timezone"] != "UTC":
            words += f" ({job['timezone']})"
        tags = ", ".join(job["tags"]) or "-"
        enabled = "yes" if job["enabled"] else "no"
        rows.append((job["id"], words, enabled, tags, str(len(job["steps"]))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
