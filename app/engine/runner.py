"""The runner: claims queued runs (owned iff one row changed) and executes them in a pool."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import sqlalchemy as sa

from app.connectors.runtime import Connectors
from app.crypto import SecretsVault
from app.db import Database, utcnow
from app.engine.execution import EngineSettings, RunExecution
from app.engine.logs import LogWriter
from app.engine.signals import run_changed, run_finished, run_queued
from app.models import Job, Run, Setting, StepRun

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.5
IDLE_POLL_SECONDS = 1.0
RECOVER_SECONDS = 10.0  # how often a server looks for runs left RUNNING by dead processes
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_STALE_SECONDS = 30.0  # another host's process silent this long is taken for dead


def node_name(configured: str | None = None) -> str:
    """This process's name in ``runs.node``: host (or NOMAFLOW_NODE_NAME) and pid."""
    return f"{configured or socket.gethostname()}/{os.getpid()}"


def claim_run(database: Database, run_id: int, node: str) -> bool:
    """Take a queued run for this process; True iff this process now owns it."""
    with database.session_scope() as db:
        changed = db.execute(
            sa.update(Run)
            .where(Run.id == run_id, Run.state == "QUEUED")
            .values(state="RUNNING", node=node, started_at=utcnow())
        ).rowcount
    if changed == 1:
        run_changed.send(run_id)
    return changed == 1


def next_claimable_runs(database: Database, limit: int = 20) -> list[int]:
    """Queued runs, oldest first, whose job's overlap policy lets them start now."""
    with database.session_scope() as db:
        queued = db.execute(
            sa.select(Run.id, Run.job_id).where(Run.state == "QUEUED").order_by(Run.id).limit(limit)
        ).all()
        if not queued:
            return []
        job_ids = {job_id for _, job_id in queued}
        running = dict(
            db.execute(
                sa.select(Run.job_id, sa.func.count())
                .where(Run.state == "RUNNING", Run.job_id.in_(job_ids))
                .group_by(Run.job_id)
            ).all()
        )
        policies = {
            j.id: (j.overlap, j.max_parallel)
            for j in db.scalars(sa.select(Job).where(Job.id.in_(job_ids)))
        }
    claimable = []
    for run_id, job_id in queued:
        overlap, max_parallel = policies.get(job_id, ("queue", 1))
        limit_for_job = max_parallel if overlap == "parallel" else 1
        if running.get(job_id, 0) < limit_for_job:
            claimable.append(run_id)
            running[job_id] = running.get(job_id, 0) + 1
    return claimable


def heartbeat_key(node: str) -> str:
    return f"node:{node}"


def beat(database: Database, node: str, role: str | None = None) -> None:
    """Say in the database that this process is alive (read by other hosts' recovery), and
    its scheduler role (leader | standby | disabled) for the settings page."""
    key, value = heartbeat_key(node), {"seen": utcnow().isoformat()}
    if role:
        value["role"] = role
    with database.session_scope() as db:
        if not db.execute(
            sa.update(Setting).where(Setting.key == key).values(value=value)
        ).rowcount:
            db.add(Setting(key=key, value=value))


def forget_heartbeat(database: Database, node: str) -> None:
    with database.session_scope() as db:
        db.execute(sa.delete(Setting).where(Setting.key == heartbeat_key(node)))


def mark_interrupted(database: Database, host: str) -> list[int]:
    """Mark runs left RUNNING by dead processes INTERRUPTED and return their ids.

    A process of this host is dead when its pid is gone; one of another host when its heartbeat
    is older than HEARTBEAT_STALE_SECONDS (or it never had one).
    """
    interrupted = []
    with database.session_scope() as db:
        rows = db.execute(sa.select(Run.id, Run.node).where(Run.state == "RUNNING")).all()
        beats = {
            key: value
            for key, value in db.execute(
                sa.select(Setting.key, Setting.value).where(
                    Setting.key.in_({heartbeat_key(node or "") for _, node in rows})
                )
            ).all()
        }
        for run_id, node in rows:
            if not _node_is_dead(node or "", host, beats.get(heartbeat_key(node or ""))):
                continue
            changed = db.execute(
                sa.update(Run)
                .where(Run.id == run_id, Run.state == "RUNNING")
                .values(
                    state="INTERRUPTED",
                    finished_at=utcnow(),
                    reason=f"the process running it ({node}) stopped mid-run",
                )
            ).rowcount
            if changed:
                db.execute(
                    sa.update(StepRun)
                    .where(StepRun.run_id == run_id, StepRun.state == "RUNNING")
                    .values(
                        state="INTERRUPTED",
                        finished_at=utcnow(),
                        error=f"the process running it ({node}) stopped mid-step",
                    )
                )
                interrupted.append(run_id)
    for run_id in interrupted:
        run_changed.send(run_id)
        run_finished.send(run_id, database=database)
    return interrupted


def _node_is_dead(node: str, host: str, heartbeat: dict | None) -> bool:
    node_host, _, pid_text = node.rpartition("/")
    if node_host == host:
        pid = int(pid_text) if pid_text.isdigit() else 0
        return pid != os.getpid() and not _process_alive(pid)
    if not heartbeat:
        return True
    seen = datetime.fromisoformat(heartbeat["seen"])
    return (utcnow() - seen).total_seconds() > HEARTBEAT_STALE_SECONDS


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


# An after-run hook: called with (database, vault, run_id) once a run of this runner's database
# has finished, on the runner's "after-run" thread, so a slow hook never holds a run slot.
AfterRunHook = Callable[[Database, SecretsVault, int], None]


class Runner:
    """Execute queued runs in a bounded pool; hear aborts through the database."""

    def __init__(self, database: Database, vault: SecretsVault, settings, pool_size: int = 4):
        self.database, self.vault = database, vault
        self.engine_settings = EngineSettings(
            instance_path=str(settings.instance_path), log_max_lines=settings.log_max_lines
        )
        self.host = settings.node_name or socket.gethostname()
        self.node = node_name(self.host)
        self.pool_size = pool_size
        self.writer = LogWriter(database)
        self.connectors = Connectors(database, vault)
        self.pool = ThreadPoolExecutor(pool_size, thread_name_prefix="run")
        self.after_run_hooks: list[AfterRunHook] = []
        # the scheduler role its heartbeat reports; app.scheduler.start_clock sets the source
        self.clock_role: Callable[[], str | None] = lambda: None
        self.after_run = ThreadPoolExecutor(1, thread_name_prefix="after-run")
        self.cancel_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.shutting_down = threading.Event()
        self._threads = [
            threading.Thread(target=self._claim_loop, name="runner-claim", daemon=True),
            threading.Thread(target=self._cancel_loop, name="runner-cancel", daemon=True),
        ]

    def start(self, claim_queued: bool = True) -> None:
        if not claim_queued:
            self._threads = [t for t in self._threads if t.name != "runner-claim"]
        else:
            run_queued.connect(self._on_queued, weak=False)
        run_finished.connect(self._on_finished, weak=False)
        if claim_queued:
            self._recover()
        for thread in self._threads:
            thread.start()
        self.wake()

    def stop(self) -> None:
        """Stop claiming, then end the runs in flight as INTERRUPTED (re-queued if the job
        says so): a 4-hour copy must not hold a restart, and nothing is lost."""
        run_queued.disconnect(self._on_queued)
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.shutting_down.set()
        with self._lock:
            in_flight = list(self.cancel_events.values())
        for event in in_flight:
            event.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        run_finished.disconnect(self._on_finished)
        self.after_run.shutdown(wait=True)
        self.writer.stop()
        forget_heartbeat(self.database, self.node)
        self.connectors.dispose()

    def wake(self) -> None:
        self._wake.set()

    def abort_locally(self, run_id: int) -> None:
        with self._lock:
            event = self.cancel_events.get(run_id)
        if event is not None:
            event.set()

    def execute_now(self, run_id: int) -> str | None:
        """Claim and execute one run, Ctrl+C aborting it (``nomaflow run``); None if not ours."""
        if not claim_run(self.database, run_id, self.node):
            return None
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(self._execute(run_id)))
        worker.start()
        while worker.is_alive():
            try:
                worker.join(0.2)
            except KeyboardInterrupt:
                self.abort_locally(run_id)
        return outcome[0] if outcome else None

    def _on_queued(self, run_id, **_kw) -> None:
        self.wake()

    def _on_finished(self, run_id, database=None, **_kw) -> None:
        if database is not self.database or not self.after_run_hooks:
            return
        with contextlib.suppress(RuntimeError):  # shutting down: nothing more runs after
            self.after_run.submit(self._run_after_hooks, run_id)

    def _run_after_hooks(self, run_id: int) -> None:
        for hook in list(self.after_run_hooks):
            try:
                hook(self.database, self.vault, run_id)
            except Exception:  # one hook's bug must not starve the others
                log.exception("after-run hook %r failed for run %s", hook, run_id)

    def _busy(self) -> int:
        with self._lock:
            return len(self.cancel_events)

    def _recover(self) -> None:
        """Mark runs of this host's dead processes INTERRUPTED: at start, then periodically, so
        a replica that died beside this one is found without waiting for a restart."""
        for run_id in mark_interrupted(self.database, self.host):
            log.warning("run %s was left RUNNING by a dead process: INTERRUPTED", run_id)
            self._requeue_if_wanted(run_id)

    def _claim_loop(self) -> None:
        next_recovery = time.monotonic() + RECOVER_SECONDS
        while not self._stopping.is_set():
            self._wake.wait(IDLE_POLL_SECONDS)
            self._wake.clear()
            try:
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + RECOVER_SECONDS
                    self._recover()
                while not self._stopping.is_set() and self._busy() < self.pool_size:
                    free = self.pool_size - self._busy()
                    claimed = 0
                    for run_id in next_claimable_runs(self.database, limit=free * 4)[:free]:
                        if claim_run(self.database, run_id, self.node):
                            with self._lock:
                                self.cancel_events[run_id] = threading.Event()
                            self.pool.submit(self._execute, run_id)
                            claimed += 1
                    if not claimed:
                        break
            except sa.exc.SQLAlchemyError:
                log.exception("runner could not claim runs; retrying")

    def _execute(self, run_id: int) -> str:
        with self._lock:
            cancel = self.cancel_events.setdefault(run_id, threading.Event())
        try:
            execution = RunExecution(
                self.database,
                self.vault,
                self.writer,
                self.engine_settings,
                run_id,
                cancel,
                self.connectors,
                self.shutting_down,
            )
            state = execution.execute()
            if state == "INTERRUPTED":
                self._requeue_if_wanted(run_id)
            return state
        finally:
            with self._lock:
                self.cancel_events.pop(run_id, None)
            self.wake()  # a slot is free, and a queued run of this job may start now

    def _cancel_loop(self) -> None:
        """Hear aborts asked through the database, and keep this process's heartbeat fresh."""
        next_beat = 0.0
        while not self._stopping.wait(CANCEL_POLL_SECONDS):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
                try:
                    beat(self.database, self.node, self.clock_role())
                except sa.exc.SQLAlchemyError:
                    log.exception("runner could not write its heartbeat")
            with self._lock:
                active = list(self.cancel_events)
            if not active:
                continue
            try:
                with self.database.session_scope() as db:
                    asked = db.scalars(
                        sa.select(Run.id).where(
                            Run.id.in_(active), Run.cancel_requested_at.is_not(None)
                        )
                    ).all()
            except sa.exc.SQLAlchemyError:
                log.exception("runner could not read abort requests")
                continue
            for run_id in asked:
                self.abort_locally(run_id)

    def _requeue_if_wanted(self, run_id: int) -> None:
        from app.engine.dispatch import DispatchError, dispatch

        with self.database.session_scope() as db:
            run = db.get(Run, run_id)
            job = db.get(Job, run.job_id)
            wanted = job is not None and job.requeue_interrupted and job.deleted_at is None
            params = self.vault.unseal(run.params_sealed) if run.params_sealed else {}
        if wanted:
            try:
                dispatch(
                    self.database,
                    self.vault,
                    run.job_id,
                    "retry",
                    params,
                    log_level=run.log_level,
                    replay_of=run,
                )
            except DispatchError as error:
                log.warning("could not re-queue interrupted run %s: %s", run_id, error)
