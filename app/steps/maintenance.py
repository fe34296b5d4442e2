"""The ``maintenance`` step: prune old runs with their steps and log lines (the retention)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from app.db import Database, utcnow
from app.models import Job, LogLine, Run, StepRun
from app.steps.base import ConfigField, StepCanceled, StepContext, StepType

FAILED_STATES = ("FAILED", "TIMED_OUT", "INTERRUPTED", "PARTIAL", "MISSED")
BATCH = 500
DEFAULTS = {"keep_days": 90, "keep_failed_days": 180, "keep_runs": 20}


class MaintenanceStep(StepType):
    kind = "maintenance"
    label = "Maintenance (retention)"
    fields = (
        ConfigField("keep_days", "int", help="delete finished runs older than this (90)"),
        ConfigField("keep_failed_days", "int", help="failed runs are kept this long (180)"),
        ConfigField("keep_runs", "int", help="always keep the newest N runs of each job (20)"),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        for name in DEFAULTS:
            value = config.get(name)
            if value is not None and (not isinstance(value, int) or value < 0):
                problems[name] = "expected a whole number >= 0"
        return problems

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, int]:
        settings = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        ctx.log.info(
            "pruning finished runs older than {keep_days} days (failed: {keep_failed_days}), "
            "keeping the newest {keep_runs} of each job".format(**settings)
        )
        pruned = prune_runs(ctx.database, **settings, is_cancelled=ctx.is_cancelled)
        ctx.log.info(
            f"deleted {pruned['runs']} runs, {pruned['step_runs']} step runs and "
            f"{pruned['log_lines']} log lines"
        )
        ctx.metrics["rows"] = pruned["runs"]
        return pruned


def prune_runs(
    database: Database,
    keep_days: int,
    keep_failed_days: int,
    keep_runs: int,
    is_cancelled=lambda: False,
) -> dict[str, int]:
    """Delete old finished runs in small transactions; return the counts deleted."""
    now = utcnow()
    cutoff, failed_cutoff = now - timedelta(days=keep_days), now - timedelta(days=keep_failed_days)
    counts = {"runs": 0, "step_runs": 0, "log_lines": 0}
    with database.session_scope() as db:
        protected_from = _newest_kept_ids(db, keep_runs)
    after_id = 0  # keyset: protected runs are passed over, not read again
    while True:
        if is_cancelled():
            raise StepCanceled("aborted")
        with database.session_scope() as db:
            ids, after_id = _expired_run_ids(db, cutoff, failed_cutoff, protected_from, after_id)
            if after_id is None:
                return counts
            if not ids:
                continue
            # replays and children keep existing; they just stop pointing at a pruned run
            db.execute(sa.update(Run).where(Run.replay_of_id.in_(ids)).values(replay_of_id=None))
            db.execute(sa.update(Run).where(Run.parent_run_id.in_(ids)).values(parent_run_id=None))
            counts["log_lines"] += db.execute(
                sa.delete(LogLine).where(LogLine.run_id.in_(ids))
            ).rowcount
            counts["step_runs"] += db.execute(
                sa.delete(StepRun).where(StepRun.run_id.in_(ids))
            ).rowcount
            counts["runs"] += db.execute(sa.delete(Run).where(Run.id.in_(ids))).rowcount


def _newest_kept_ids(db, keep_runs: int) -> dict[str, int]:
    """Per job, the smallest id among its newest ``keep_runs`` runs (those are never pruned)."""
    if keep_runs <= 0:
        return {}
    kept = {}
    for job_id in db.scalars(sa.select(Job.id)):
        boundary = db.scalar(
            sa.select(Run.id)
            .where(Run.job_id == job_id)
            .order_by(Run.id.desc())
            .offset(keep_runs - 1)
            .limit(1)
        )
        kept[job_id] = boundary if boundary is not None else 0  # fewer runs: keep them all
    return kept


def _expired_run_ids(db, cutoff, failed_cutoff, protected_from: dict[str, int], after_id: int):
    """Return the next batch of prunable ids and the last id looked at (None: no more)."""
    expired = sa.or_(
        sa.and_(Run.state.in_(FAILED_STATES), Run.finished_at < failed_cutoff),
        sa.and_(Run.state.in_(("SUCCEEDED", "CANCELED", "SKIPPED")), Run.finished_at < cutoff),
    )
    rows = db.execute(
        sa.select(Run.id, Run.job_id)
        .where(expired, Run.id > after_id)
        .order_by(Run.id)
        .limit(BATCH)
    ).all()
    if not rows:
        return [], None
    ids = [r for r, job_id in rows if r < protected_from.get(job_id, float("inf"))]
    return ids, rows[-1][0]
