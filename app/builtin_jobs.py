"""Jobs Nomaflow brings along: the retention job always, demo jobs when asked (make run)."""

from __future__ import annotations

import logging
from pathlib import Path
from string import Template

import sqlalchemy as sa

from app.crypto import SecretsVault
from app.db import Database
from app.engine.signals import jobs_changed
from app.jobs_io import import_jobs
from app.jobspec import apply_job, validate_job
from app.models import Job

log = logging.getLogger(__name__)
DEMO_FILE = Path(__file__).resolve().parent / "demo_jobs.toml"
MAINTENANCE_JOB = {
    "id": "nomaflow-maintenance",
    "description": (
        "Built in: deletes finished runs and their logs past the retention time. Edit the "
        "prune step's keep_days, keep_failed_days and keep_runs to change it."
    ),
    "tags": ["nomaflow"],
    "schedule": "17 3 * * *",
    "timezone": "UTC",
    "steps": [
        {
            "name": "prune",
            "type": "maintenance",
            "keep_days": 90,
            "keep_failed_days": 180,
            "keep_runs": 20,
        },
    ],
}


def ensure_builtin_jobs(
    database: Database,
    demo: bool = False,
    instance_path: Path | None = None,
    served_at: str = "http://127.0.0.1:5000",
    vault: SecretsVault | None = None,
) -> None:
    """Create the maintenance job once (a deleted one stays deleted); add demos to a new install.

    The demo jobs keep their SQLite files in ``<instance>/demo/`` and probe ``served_at``.
    """
    with database.session_scope() as db:
        if db.get(Job, MAINTENANCE_JOB["id"]) is None:
            spec, errors = validate_job(MAINTENANCE_JOB)
            assert not errors, errors  # a built-in definition is checked by the tests
            apply_job(db, spec, None)
            log.info("created the built-in job %s", MAINTENANCE_JOB["id"])
        if demo and _only_builtin_jobs(db):
            text = demo_jobs_text(instance_path or Path("instance"), served_at)
            result = import_jobs(db, text, vault=vault)
            if result.errors:
                raise RuntimeError(f"demo jobs do not import: {result.errors}")
            log.info("created the demo jobs: %s", ", ".join(result.outcomes))
    jobs_changed.send(None)


def demo_jobs_text(instance_path: Path, served_at: str) -> str:
    """The demo job file with this installation's folder and address filled in."""
    demo_folder = Path(instance_path).resolve() / "demo"
    demo_folder.mkdir(parents=True, exist_ok=True)
    return Template(DEMO_FILE.read_text()).substitute(
        DEMO_FOLDER=demo_folder.as_posix(), SERVED_AT=served_at.rstrip("/")
    )


def _only_builtin_jobs(db) -> bool:
    ids = set(db.scalars(sa.select(Job.id)))
    return ids <= {MAINTENANCE_JOB["id"]}
