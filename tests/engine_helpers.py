"""Small factories for engine tests: jobs saved through the real job format, waiting on runs."""

from __future__ import annotations

import time

import sqlalchemy as sa

from app.db import get_database
from app.engine.history import load_run_view, run_document
from app.jobspec import apply_job, validate_job
from app.models import FINISHED_STATES, LogLine

FINAL = set(FINISHED_STATES)


def python_step(name: str, code: str, **fields) -> dict:
    return {"name": name, "type": "python", "code": code, **fields}


def make_job(app, job_id: str = "demo", steps: list[dict] | None = None, **fields) -> dict:
    """Validate and save a job the way an import does; return its canonical definition."""
    data = {
        "id": job_id,
        "steps": steps or [python_step("hello", "ctx.log.info('hello')")],
        **fields,
    }
    spec, errors = validate_job(data)
    assert not errors, [f"{e.path}: {e.message}" for e in errors]
    with get_database(app).session_scope() as db:
        apply_job(db, spec, None)
    return spec


def wait_for_run(app, run_id: int, states=FINAL, timeout: float = 20) -> dict:
    """Wait until the run reaches one of ``states``; return its run document."""
    deadline = time.monotonic() + timeout
    while True:
        with get_database(app).session_scope() as db:
            document = run_document(load_run_view(db, run_id))
        if document["state"] in states:
            return document
        assert time.monotonic() < deadline, f"run {run_id} still {document['state']}"
        time.sleep(0.02)


def log_messages(app, run_id: int) -> list[tuple[int, str, str]]:
    with get_database(app).session_scope() as db:
        rows = db.execute(
            sa.select(LogLine.seq, LogLine.level, LogLine.message)
            .where(LogLine.run_id == run_id)
            .order_by(LogLine.seq)
        ).all()
    return [tuple(row) for row in rows]
