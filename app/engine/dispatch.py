"""The one door for every trigger: check, apply the overlap policy, queue, wake the runner."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.crypto import SecretsVault
from app.db import Database, utcnow
from app.engine.params import ParamError, mask_params, resolve_params
from app.engine.signals import run_changed, run_finished, run_queued
from app.engine.templating import date_helpers, json_safe, render_value
from app.models import ACTIVE_STATES, Job, Run, StepRun, User

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class DispatchError(ValueError):
    """Nothing was queued; ``fields`` maps each bad input to its problem."""

    def __init__(self, message: str, fields: dict[str, str] | None = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.status = status


def dispatch(
    database: Database,
    vault: SecretsVault,
    job_id: str,
    trigger: str,
    params: dict[str, Any] | None = None,
    user: User | None = None,
    *,
    log_level: str | None = None,
    disabled_steps: list[str] | tuple[str, ...] = (),
    scheduled_for: datetime | None = None,
    replay_of: Run | None = None,
    start_step: str | None = None,
    ip: str = "",
    parent_run_id: int | None = None,
) -> Run:
    """Queue a run of ``job_id`` (or record it SKIPPED by the overlap policy) and return it."""
    with database.session_scope() as db:
        job = _live_job(db, job_id)
        params = _checked_params(job, params)
        level = (log_level or job.log_level or "INFO").upper()
        if level not in LOG_LEVELS:
            raise DispatchError("bad log level", {"log_level": f"expected one of {LOG_LEVELS}"})
        step_names = [s.name for s in job.steps]
        unknown = sorted(set(disabled_steps) - set(step_names))
        if unknown:
            raise DispatchError(
                "unknown steps", {"steps": f"this job has no step {', '.join(unknown)}"}
            )
        if start_step is not None and start_step not in step_names:
            raise DispatchError("unknown step", {"steps": f"no step {start_step!r}"})
        run = Run(
            job_id=job.id,
            job_version=job.version,
            trigger=trigger,
            triggered_by=user.id if user else None,
            params=json_safe(mask_params(job.params, params)),
            params_sealed=vault.seal(json_safe(params)),
            log_level=level,
            disabled_steps=list(disabled_steps),
            scheduled_for=scheduled_for,
            replay_of_id=replay_of.id if replay_of else None,
            start_step=start_step,
            parent_run_id=parent_run_id,  # chained by `then` or started by a call_job step
            state="QUEUED",
        )
        blocking = _overlap_blocker(db, job)
        if blocking is not None:
            run.state = "SKIPPED"
            run.reason = f"overlap policy skip: run #{blocking} of this job is still active"
            run.finished_at = utcnow()
        db.add(run)
        db.flush()
        record_event(
            db,
            "job.trigger",
            user=user,
            username=None if user else trigger,
            target_type="job",
            target_id=job.id,
            ip=ip,
            detail={"run": run.id, "trigger": trigger, "state": run.state},
        )
    run_changed.send(run.id)
    if run.state == "QUEUED":
        run_queued.send(run.id)
    else:
        run_finished.send(run.id, database=database)
    return run


def record_missed(database: Database, job_id: str, scheduled_for: datetime, reason: str) -> Run:
    """Record a fire that will not run (missed beyond the grace time) as a MISSED run."""
    with database.session_scope() as db:
        job = _live_job(db, job_id)
        now = utcnow()
        run = Run(
            job_id=job.id,
            job_version=job.version,
            trigger="cron" if job.schedule else "interval",
            state="MISSED",
            reason=reason,
            scheduled_for=scheduled_for,
            queued_at=now,
            finished_at=now,
            params={},
        )
        db.add(run)
    run_changed.send(run.id)
    run_finished.send(run.id, database=database)
    return run


def request_abort(database: Database, run_id: int, user: User | None = None, ip: str = "") -> Run:
    """Cancel a queued run at once, or ask the process running it to stop (via the database)."""
    with database.session_scope() as db:
        run = db.get(Run, run_id)
        if run is None:
            raise DispatchError(f"no run #{run_id}", status=404)
        if run.state not in ACTIVE_STATES:
            raise DispatchError(f"run #{run_id} already ended {run.state}", status=409)
        now = utcnow()
        changed = db.execute(
            sa.update(Run)
            .where(Run.id == run_id, Run.state == "QUEUED")
            .values(
                state="CANCELED",
                finished_at=now,
                cancel_requested_at=now,
                reason="aborted before it started",
            )
        ).rowcount
        if not changed:
            db.execute(
                sa.update(Run)
                .where(Run.id == run_id, Run.cancel_requested_at.is_(None))
                .values(cancel_requested_at=now)
            )
        record_event(db, "run.abort", user=user, target_type="run", target_id=run_id, ip=ip)
    run_changed.send(run_id)
    if changed:
        run_finished.send(run_id, database=database)
    with database.session_scope() as db:
        return db.get(Run, run_id)


def replay(
    database: Database,
    vault: SecretsVault,
    run_id: int,
    user: User | None = None,
    from_failed_step: bool = False,
    ip: str = "",
) -> Run:
    """Queue a new run with the parameters of a finished one (optionally from its failed step)."""
    with database.session_scope() as db:
        original = db.get(Run, run_id)
        if original is None:
            raise DispatchError(f"no run #{run_id}", status=404)
        if original.state in ACTIVE_STATES:
            raise DispatchError(f"run #{run_id} has not finished yet", status=409)
        start_step = first_failed_step(db, original) if from_failed_step else None
        if from_failed_step and start_step is None:
            raise DispatchError(f"run #{run_id} has no failed step to start from", status=409)
        params = vault.unseal(original.params_sealed) if original.params_sealed else {}
        disabled = list(original.disabled_steps or [])
        level = original.log_level
    return dispatch(
        database,
        vault,
        original.job_id,
        "replay",
        params,
        user,
        log_level=level,
        disabled_steps=disabled,
        replay_of=original,
        start_step=start_step,
        ip=ip,
    )


def first_failed_step(db: Session, run: Run) -> str | None:
    failed = db.scalars(
        sa.select(StepRun.step_name)
        .where(StepRun.run_id == run.id, StepRun.state.in_(("FAILED", "TIMED_OUT")))
        .order_by(StepRun.position, StepRun.attempt)
    ).first()
    return failed


def _live_job(db: Session, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None or job.deleted_at is not None:
        raise DispatchError(f"unknown job {job_id!r}", {"job": "no such job"}, status=404)
    return job


def _checked_params(job: Job, given: dict[str, Any] | None) -> dict[str, Any]:
    helpers = date_helpers(job.timezone)
    try:
        return resolve_params(job.params or [], given, lambda value: render_value(value, helpers))
    except ParamError as error:
        raise DispatchError(f"invalid parameters: {error}", error.fields) from error


def _overlap_blocker(db: Session, job: Job) -> int | None:
    """Return the id of an active run that makes this fire SKIPPED (overlap = skip)."""
    if job.overlap != "skip":
        return None  # queue / parallel: the runner holds the run back until it may start
    return db.scalar(
        sa.select(Run.id)
        .where(Run.job_id == job.id, Run.state.in_(ACTIVE_STATES))
        .order_by(Run.id)
        .limit(1)
    )
