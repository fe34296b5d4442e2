"""Which alert rules a finished run fires, from the job's ``[jobs.alerts]`` and its history.

Outcomes, as a user reads them:

* failure — FAILED, TIMED_OUT and PARTIAL (a step failed even if the run went on) are
  failures. With ``after_failures = N`` exactly one alert goes out, on the Nth failure in a row
  (``after_failures`` alone switches failure alerts on); without it ``on_failure`` alerts on
  every failure (grouping keeps repeats quiet). A CANCELED run was stopped by someone: it never
  alerts, and neither breaks nor extends a streak (nor do SKIPPED, MISSED, INTERRUPTED).
* recovery — the first SUCCEEDED run after at least one failure (at least N with
  ``after_failures``).
* too_fast — SUCCEEDED in less than ``min_duration_seconds`` (the silent no-op).
* missed — MISSED, SKIPPED or INTERRUPTED, with ``on_missed``.
* success — every SUCCEEDED run, with ``on_success`` (a recovery says it already: not both).
* long_run is found while the run still runs (app/alerts/service.py watches RUNNING runs).

The Nth failure (with ``after_failures``) and recovery fire once per streak by construction, so
they are never grouped: a job failing again after a recovery always says so. Grouping is for
the rules that fire on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import Run

FAILURE_STATES = ("FAILED", "TIMED_OUT", "PARTIAL")
STREAK_STATES = (*FAILURE_STATES, "SUCCEEDED")  # the runs that make or break a streak
MISSED_STATES = ("MISSED", "SKIPPED", "INTERRUPTED")
STREAK_SCAN = 1000  # a recovery names the streak it ends, up to this many runs back


@dataclass(frozen=True)
class Firing:
    """One rule that fires for a run, with the words that say why."""

    rule: str
    reason: str
    failures: int = 0  # failures in a row, counting this run (failure) or before it (recovery)
    once_per_streak: bool = False  # fires once per failure streak: never grouped


def failures_in_a_row(db: Session, job_id: str, before_id: int, limit: int) -> int:
    """Count the job's failed runs just before run ``before_id`` (up to ``limit``)."""
    states = db.scalars(
        sa.select(Run.state)
        .where(Run.job_id == job_id, Run.id < before_id, Run.state.in_(STREAK_STATES))
        .order_by(Run.id.desc())
        .limit(limit)
    ).all()
    count = 0
    for state in states:
        if state == "SUCCEEDED":
            break
        count += 1
    return count


def fired_rules(db: Session, run: Run, alerts: dict[str, Any] | None) -> list[Firing]:
    """Return the rules the finished ``run`` fires under the job's alert settings."""
    if not alerts:
        return []
    state = run.state
    threshold = alerts.get("after_failures")
    firings: list[Firing] = []
    if state in FAILURE_STATES and (alerts.get("on_failure") or threshold):
        earlier = failures_in_a_row(db, run.job_id, run.id, limit=(threshold or 1) + 1)
        count = earlier + 1
        if threshold and count == threshold:
            firings.append(Firing("failure", f"{count} failures in a row", count, True))
        elif not threshold:
            firings.append(Firing("failure", f"the run ended {state}", count))
    elif state == "SUCCEEDED":
        recovered = False
        if alerts.get("on_recovery"):
            needed = threshold or 1
            earlier = failures_in_a_row(db, run.job_id, run.id, limit=STREAK_SCAN)
            if earlier >= needed:
                recovered = True
                plural = "failure" if earlier == 1 else "failures"
                reason = f"succeeded after {earlier} {plural} in a row"
                firings.append(Firing("recovery", reason, earlier, True))
        minimum = alerts.get("min_duration_seconds")
        if minimum and run.started_at and run.finished_at:
            took = (run.finished_at - run.started_at).total_seconds()
            if took < minimum:
                reason = f"finished in {took:.1f}s, under the minimum of {minimum}s"
                firings.append(Firing("too_fast", reason))
        if alerts.get("on_success") and not recovered:
            firings.append(Firing("success", "the run succeeded"))
    elif state in MISSED_STATES and alerts.get("on_missed"):
        firings.append(Firing("missed", f"the run was {state}"))
    return firings


def long_run_minutes(alerts: dict[str, Any] | None) -> float | None:
    value = (alerts or {}).get("long_run_minutes")
    return float(value) if isinstance(value, int | float) and value > 0 else None
