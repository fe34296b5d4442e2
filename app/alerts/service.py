"""The alerts of one serving process: an after-run hook and a watcher thread.

The hook runs on the runner's after-run thread: it decides the rules a finished run fires,
records one AlertEvent per rule and channel (GROUPED when the same job and rule alerted that
channel within the grouping window, timed from when that last alert was sent; never for the
once-per-streak rules) and delivers the new ones. The next alert sent counts the GROUPED ones
("+N similar since …"); a GROUPED event waits
with ``next_attempt_at`` set to the end of its window, and when that passes with no alert sent
meanwhile the watcher delivers the last one held, counting the others (the digest). The watcher,
every NOMAFLOW_ALERT_POLL_SECONDS, also alerts runs RUNNING longer than their job's
``long_run_minutes`` (once per run) and retries failed deliveries with doubling backoff, up to
MAX_ATTEMPTS.
Several replicas may watch: an event is delivered by whoever claims it (owned iff one row
changed). A delivery problem is written to the run's log; it never changes the run's state.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from app.alerts.channels import channels_for_job, load_channel
from app.alerts.delivery import DeliveryFailed, deliver
from app.alerts.messages import compose, run_facts
from app.alerts.rules import Firing, fired_rules, long_run_minutes
from app.alerts.signals import notifications_created
from app.db import Database, utcnow
from app.models import ACTIVE_STATES, AlertEvent, Job, LogLine, Run

log = logging.getLogger(__name__)
EXTENSION = "nomaflow.alerts"
MAX_ATTEMPTS = 5
LEASE_SECONDS = 120  # an attempt in flight is not retried by another watcher meanwhile
RETRY_BATCH = 50


class AlertService:
    """Decide, record and deliver alerts for the runs of one runner's database."""

    def __init__(self, runner, settings, watch: bool = True):
        self.database: Database = runner.database
        self.vault = runner.vault
        self.writer = runner.writer
        self.runner = runner
        self.base_url = settings.base_url
        self.poll_seconds = settings.alert_poll_seconds
        self.retry_seconds = settings.alert_retry_seconds
        self.group_seconds = settings.alert_group_seconds
        self.watch = watch
        self._stopping = threading.Event()
        self._log_lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch_loop, name="alerts-watch", daemon=True)

    def start(self) -> None:
        self.runner.after_run_hooks.append(self.after_run)
        if self.watch:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.after_run in self.runner.after_run_hooks:
            self.runner.after_run_hooks.remove(self.after_run)

    # -- after a run -------------------------------------------------------------------------

    def after_run(self, database: Database, vault, run_id: int) -> None:
        """The after-run hook: alert what the finished run fires."""
        with self.database.session_scope() as db:
            run = db.get(Run, run_id)
            job = db.get(Job, run.job_id) if run else None
            if run is None or job is None or not job.alerts:
                return
            event_ids = self._record(db, job, run, fired_rules(db, run, job.alerts))
        for event_id in event_ids:
            self.attempt(event_id)

    def _record(self, db: Session, job: Job, run: Run, firings: list[Firing]) -> list[int]:
        """Add one AlertEvent per rule and channel; return the ids to deliver now."""
        if not firings:
            return []
        alerts = job.alerts or {}
        channels = channels_for_job(db, alerts.get("channels") or [], job.tags or [])
        if not channels:
            return []
        facts = run_facts(db, run, job, self.base_url)
        events = []
        for firing in firings:
            for channel in channels:
                events.append(self._event(db, job, run.id, firing, channel, facts))
        db.flush()
        return [event.id for event in events if event.state == "PENDING"]

    def _event(self, db, job: Job, run_id: int, firing: Firing, channel: str, facts) -> AlertEvent:
        now = utcnow()
        same = (
            AlertEvent.job_id == job.id,
            AlertEvent.rule == firing.rule,
            AlertEvent.channel == channel,
        )
        last = db.scalar(
            sa.select(AlertEvent)
            .where(*same, AlertEvent.state != "GROUPED")
            .order_by(AlertEvent.id.desc())
            .limit(1)
        )
        window = timedelta(seconds=self.group_seconds)
        groups = self.group_seconds and not firing.once_per_streak
        # timed from the sending: a digest goes out long after its event was created
        told_at = (last.sent_at or last.created_at) if last is not None else None
        if groups and told_at is not None and now - told_at < window:
            state, grouped, since, due = "GROUPED", 0, "", told_at + window
        else:
            grouped, since = claim_held(db, same)
            state, due = "PENDING", now
        payload = compose(facts, firing.rule, firing.reason, job.alerts, grouped, since)
        event = AlertEvent(
            job_id=job.id,
            run_id=run_id,
            rule=firing.rule,
            channel=channel,
            state=state,
            payload=payload,
            created_at=now,
            next_attempt_at=due,  # GROUPED: when its window closes (see send_digests)
        )
        db.add(event)
        return event

    # -- delivery ----------------------------------------------------------------------------

    def attempt(self, event_id: int) -> str | None:
        """Deliver one event if this process claims it; return its new state (None: not ours)."""
        with self.database.session_scope() as db:
            event = db.get(AlertEvent, event_id)
            if event is None or event.state not in ("PENDING", "FAILED"):
                return None
            seen = event.attempts
            rule, channel_name, run_id = event.rule, event.channel, event.run_id
            claimed = db.execute(
                sa.update(AlertEvent)
                .where(AlertEvent.id == event_id, AlertEvent.attempts == seen)
                .values(
                    attempts=seen + 1, next_attempt_at=utcnow() + timedelta(seconds=LEASE_SECONDS)
                )
            ).rowcount
        if claimed != 1:
            return None
        attempt = seen + 1
        notified: list[int] = []
        error, final, retry_in = None, False, 0
        try:  # one transaction: in-app rows and SENT together, or neither
            with self.database.session_scope() as db:
                event = db.get(AlertEvent, event_id)
                channel = load_channel(db, self.vault, event.channel)
                notified = deliver(db, self.vault, channel, event.payload)
                event.state, event.sent_at, event.error = "SENT", utcnow(), None
                event.next_attempt_at = None
        except LookupError as problem:  # the channel is gone: retrying cannot help
            error, final = str(problem), True
        except (DeliveryFailed, ValueError) as problem:
            error = str(problem)
        except Exception as problem:  # a bug of ours must not stop the other alerts
            log.exception("alert %s could not be delivered", event_id)
            error = f"internal error: {problem}"
        if error is not None:
            notified = []
            final = final or attempt >= MAX_ATTEMPTS
            retry_in = self.retry_seconds * 2 ** (attempt - 1)
            with self.database.session_scope() as db:
                event = db.get(AlertEvent, event_id)
                event.state, event.error = "FAILED", error[:2000]
                event.next_attempt_at = None if final else utcnow() + timedelta(seconds=retry_in)
        if notified:
            notifications_created.send(None, user_ids=notified)
        if run_id is not None:
            if error is None:
                self.log_on_run(run_id, "INFO", f"alert {rule} sent to channel {channel_name}")
            else:
                then = "gave up" if final else f"retrying in {retry_in}s"
                message = (
                    f"alert {rule} to channel {channel_name} failed "
                    f"(attempt {attempt}/{MAX_ATTEMPTS}, {then}): {error}"
                )
                self.log_on_run(run_id, "WARNING", message)
        return "SENT" if error is None else "FAILED"

    def log_on_run(self, run_id: int, level: str, message: str) -> None:
        """Append a line to a finished run's log (a running run numbers its own lines)."""
        with self._log_lock:
            self.writer.flush()
            with self.database.session_scope() as db:
                state = db.scalar(sa.select(Run.state).where(Run.id == run_id))
                if state is None or state in ACTIVE_STATES:
                    return
                query = sa.select(sa.func.max(LogLine.seq)).where(LogLine.run_id == run_id)
                last = db.scalar(query)
            line = {"run_id": run_id, "step_run_id": None, "step": "", "seq": (last or 0) + 1}
            self.writer.append({**line, "ts": utcnow(), "level": level, "message": message})
            self.writer.flush()

    # -- the watcher -------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            for task in (self.alert_long_runs, self.retry_due, self.send_digests):
                try:
                    task()
                except Exception:  # any error (a lost database, a bug): log it, keep watching
                    log.exception("alerts watcher: %s failed; trying again", task.__name__)

    def alert_long_runs(self) -> None:
        """Alert each RUNNING run that outlasted its job's ``long_run_minutes``, once."""
        now = utcnow()
        due: list[int] = []
        with self.database.session_scope() as db:
            running = db.execute(
                sa.select(Run.id, Run.job_id, Run.started_at).where(Run.state == "RUNNING")
            ).all()
            if not running:
                return
            jobs = {
                job.id: job
                for job in db.scalars(sa.select(Job).where(Job.id.in_({r.job_id for r in running})))
            }
            for run_id, job_id, started_at in running:
                job = jobs.get(job_id)
                minutes = long_run_minutes(job.alerts if job else None)
                if not minutes or started_at is None:
                    continue
                if now - started_at < timedelta(minutes=minutes):
                    continue
                known = sa.select(AlertEvent.id).where(
                    AlertEvent.run_id == run_id, AlertEvent.rule == "long_run"
                )
                if db.scalar(known.limit(1)) is not None:
                    continue
                reason = f"running for more than {_minutes_text(minutes)}"
                due += self._record(db, job, db.get(Run, run_id), [Firing("long_run", reason)])
        for event_id in due:
            self.attempt(event_id)

    def retry_due(self) -> None:
        """Try again the deliveries whose next attempt is due."""
        with self.database.session_scope() as db:
            due = db.scalars(
                sa.select(AlertEvent.id)
                .where(
                    AlertEvent.state.in_(("PENDING", "FAILED")),
                    AlertEvent.next_attempt_at <= utcnow(),
                )
                .order_by(AlertEvent.id)
                .limit(RETRY_BATCH)
            ).all()
        for event_id in due:
            if self._stopping.is_set():
                return
            self.attempt(event_id)

    def send_digests(self) -> None:
        """Deliver the last alert held back in each window that closed with no alert after it."""
        due: list[int] = []
        with self.database.session_scope() as db:
            held = db.scalars(
                sa.select(AlertEvent)
                .where(AlertEvent.state == "GROUPED", AlertEvent.next_attempt_at <= utcnow())
                .order_by(AlertEvent.id.desc())  # newest first: the last of each is delivered
                .limit(RETRY_BATCH)
            ).all()
            seen: set[tuple[str, str, str]] = set()
            for event in held:
                if (event.job_id, event.rule, event.channel) in seen:
                    continue
                seen.add((event.job_id, event.rule, event.channel))
                same = (
                    AlertEvent.job_id == event.job_id,
                    AlertEvent.rule == event.rule,
                    AlertEvent.channel == event.channel,
                )
                count, since = claim_held(db, same, up_to=event.id)
                if not count:  # another watcher, or a new alert, told of them meanwhile
                    continue
                job = db.get(Job, event.job_id)
                old = event.payload
                alerts = job.alerts if job else None
                event.payload = compose(old, old["rule"], old["why"], alerts, count - 1, since)
                event.state, event.next_attempt_at = "PENDING", utcnow()
                due.append(event.id)
        for event_id in due:
            self.attempt(event_id)


def claim_held(db: Session, same: tuple, up_to: int | None = None) -> tuple[int, str]:
    """Take the GROUPED events no alert told of yet; return how many, and since when.

    Clearing ``next_attempt_at`` is the claim: a watcher's digest and a new alert of the same
    job, rule and channel never count the same events twice (owned iff the row changed).
    """
    waiting = (*same, AlertEvent.state == "GROUPED", AlertEvent.next_attempt_at.is_not(None))
    if up_to is not None:
        waiting = (*waiting, AlertEvent.id <= up_to)
    first = db.scalar(sa.select(sa.func.min(AlertEvent.created_at)).where(*waiting))
    if first is None:
        return 0, ""
    taken = db.execute(sa.update(AlertEvent).where(*waiting).values(next_attempt_at=None))
    return taken.rowcount, _short_time(first)


def _short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _minutes_text(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} seconds"
    return f"{minutes:g} minutes"


def start_alerts(app: Flask, runner, watch: bool = True) -> AlertService:
    """Hook alerts onto this process's runner; ``watch`` also starts the watcher thread."""
    service = app.extensions.get(EXTENSION)
    if service is None:
        service = AlertService(runner, app.config["NOMAFLOW"], watch)
        app.extensions[EXTENSION] = service
        service.start()
    return service


def stop_alerts(app: Flask) -> None:
    service = app.extensions.pop(EXTENSION, None)
    if service is not None:
        service.stop()
