"""Jobs that start jobs: ``[[jobs.then]]`` after a run ends, and the ``call_job`` child run.

``then`` fires by the outcome of the finished run:

* ``success`` — SUCCEEDED;
* ``failure`` — FAILED, TIMED_OUT or PARTIAL (something in the job went wrong; an abort by a
  person, an interruption of the server, a skip or a miss are not the job's failure);
* ``always`` — any run that started: SUCCEEDED, PARTIAL, FAILED, TIMED_OUT, CANCELED or
  INTERRUPTED (a SKIPPED or MISSED run, or one CANCELED while still QUEUED — no
  ``started_at`` — did nothing, so it starts nothing).

The chained run's params are rendered over the parent's namespace (``params``,
``steps['x'].output``, ``run``, ``job`` and the date helpers) and it is queued with trigger
``chain`` and ``parent_run_id``. What happened is logged on the parent run; a chained job that is
gone, disabled, or refuses the params is an error line there, never a change of its outcome.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.crypto import SecretsVault
from app.db import Database, utcnow
from app.engine.definitions import load_definition
from app.engine.dispatch import DispatchError, dispatch, request_abort
from app.engine.runner import claim_run
from app.engine.signals import log_appended
from app.engine.templating import TemplateProblem, date_helpers, json_safe, render_value
from app.models import ACTIVE_STATES, Job, LogLine, Run, StepRun, User
from app.steps.base import StepCanceled, StepContext, StepFailed, StepTimedOut, StepView

CHAIN_ON = {
    "success": frozenset({"SUCCEEDED"}),
    "failure": frozenset({"FAILED", "TIMED_OUT", "PARTIAL"}),
    "always": frozenset({"SUCCEEDED", "PARTIAL", "FAILED", "TIMED_OUT", "CANCELED", "INTERRUPTED"}),
}
CHILD_POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 30.0  # a child run by another process gets this long to end after an abort
FAMILY_FOLLOW_SECONDS = 30  # a run page keeps looking for chained runs this long after the end


def start_chained_jobs(database: Database, vault: SecretsVault, run_id: int) -> None:
    """After-run hook: queue each ``then`` job whose ``on`` matches how the run ended."""
    with database.session_scope() as db:
        run = db.get(Run, run_id)
        if run is None or run.state not in CHAIN_ON["always"] or run.started_at is None:
            return  # it never started (aborted while queued, skipped, missed): nothing follows
        definition = load_definition(db, run.job_id, run.job_version)
        chained = [
            entry
            for entry in definition.get("then") or []
            if run.state in CHAIN_ON.get(entry.get("on") or "success", ())
        ]
        if not chained:
            return
        namespace = _finished_run_namespace(db, vault, run, definition)
        targets = {
            job.id: job
            for job in db.scalars(sa.select(Job).where(Job.id.in_({e["job"] for e in chained})))
        }
        usable = {job_id: _unusable(targets.get(job_id)) for job_id in {e["job"] for e in chained}}
    for entry in chained:
        target = entry["job"]
        if usable[target]:
            problem = f"chained {target} not started: {usable[target]}"
            append_run_line(database, run_id, "ERROR", problem)
            continue
        try:
            params = json_safe(render_value(entry.get("params") or {}, namespace))
            child = dispatch(database, vault, target, "chain", params, parent_run_id=run_id)
        except TemplateProblem as problem:
            append_run_line(database, run_id, "ERROR", f"chained {target} not started: {problem}")
        except DispatchError as error:
            detail = "; ".join(f"{k}: {v}" for k, v in error.fields.items()) or error.message
            append_run_line(database, run_id, "ERROR", f"chained {target} not started: {detail}")
        else:
            note = f" ({child.state}: {child.reason})" if child.state != "QUEUED" else ""
            append_run_line(database, run_id, "INFO", f"chained {target} → run #{child.id}{note}")


def _unusable(job: Job | None) -> str:
    if job is None or job.deleted_at is not None:
        return "the job does not exist (deleted?)"
    if not job.enabled:
        return "the job is disabled"
    return ""


def _finished_run_namespace(
    db: Session, vault: SecretsVault, run: Run, definition: dict[str, Any]
) -> dict[str, Any]:
    """What a ``then`` template sees of the finished run: as its own steps saw it."""
    steps: dict[str, StepView] = {}
    for step_run in db.scalars(
        sa.select(StepRun).where(StepRun.run_id == run.id).order_by(StepRun.id)
    ):  # the latest attempt of each step wins
        rows = (step_run.metrics or {}).get("rows")
        steps[step_run.step_name] = StepView(step_run.state, step_run.output, rows)
    who = db.scalar(sa.select(User.username).where(User.id == run.triggered_by))
    return {
        "params": vault.unseal(run.params_sealed) if run.params_sealed else {},
        "run": {
            "id": run.id,
            "trigger": run.trigger,
            "queued_at": run.queued_at,
            "triggered_by": who or run.trigger,
            "state": run.state,
        },
        "job": {"id": definition["id"], "tags": definition.get("tags", [])},
        "steps": steps,
        **date_helpers(definition.get("timezone", "UTC")),
    }


def append_run_line(database: Database, run_id: int, level: str, message: str) -> None:
    """Add one line to the log of a run (finished ones too) and announce it."""
    with database.session_scope() as db:
        seq = (db.scalar(sa.select(Run.log_lines_count).where(Run.id == run_id)) or 0) + 1
        line = {"run_id": run_id, "step_run_id": None, "seq": seq, "ts": utcnow()}
        line |= {"level": level, "message": message}
        db.execute(sa.insert(LogLine), [line])
        db.execute(sa.update(Run).where(Run.id == run_id).values(log_lines_count=seq))
    log_appended.send(run_id, lines=[{**line, "step": ""}])


def run_child_job(ctx: StepContext, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``job_id`` as a child of the step's run, wait, and return its id, state and outputs.

    The child is executed inline, on this step's thread: a parent waiting for a child that
    waits for a free slot of the runner pool would deadlock with RUNNER_POOL_SIZE=1. (When the
    runner claims it first, because a slot was free, the step just waits for it.) Raise
    StepFailed unless the child SUCCEEDED; abort and timeout of the step abort the child.
    """
    execution = ctx.execution
    database = execution.database
    try:
        child = dispatch(
            database, execution.vault, job_id, "chain", params, parent_run_id=ctx.run_id
        )
    except DispatchError as error:
        detail = "; ".join(f"{k}: {v}" for k, v in error.fields.items()) or error.message
        raise StepFailed(f"{job_id} could not start: {detail}") from None
    ctx.log.info(f"started child run #{child.id} of {job_id}")
    ctx.metrics["child_run"] = child.id
    stopped = _wait_for_child(ctx, child.id) if child.state in ACTIVE_STATES else None
    with database.session_scope() as db:
        state, reason = db.execute(sa.select(Run.state, Run.reason).where(Run.id == child.id)).one()
        outputs = {
            step_run.step_name: step_run.output
            for step_run in db.scalars(
                sa.select(StepRun).where(StepRun.run_id == child.id).order_by(StepRun.id)
            )
        }
    if stopped == "canceled":
        raise StepCanceled("aborted")
    if stopped == "timed_out":
        raise StepTimedOut(
            f"timed out after {ctx.timeout_seconds:.0f}s; child run #{child.id} was aborted"
        )
    if state != "SUCCEEDED":
        raise StepFailed(f"child run #{child.id} ended {state}" + (f": {reason}" if reason else ""))
    ctx.log.info(f"child run #{child.id} of {job_id} SUCCEEDED")
    return {"run_id": child.id, "state": state, "outputs": outputs}


def _wait_for_child(ctx: StepContext, child_id: int) -> str | None:
    """Execute (or watch) the child until it ends; say why we stopped it, if we did."""
    execution = ctx.execution
    database = execution.database
    cancel = threading.Event()
    node = _run_node(database, ctx.run_id)
    worker: threading.Thread | None = None
    stopped: str | None = None
    stop_deadline = 0.0
    while True:
        startable = worker is None and stopped is None and _may_start(database, child_id)
        if startable and claim_run(database, child_id, node):
            child = execution.child(child_id, cancel)
            worker = threading.Thread(target=child.execute, name=f"run-{child_id}")
            worker.start()
        if worker is not None:
            worker.join(CHILD_POLL_SECONDS)
        else:
            time.sleep(CHILD_POLL_SECONDS)
        with database.session_scope() as db:
            state, asked = db.execute(
                sa.select(Run.state, Run.cancel_requested_at).where(Run.id == child_id)
            ).one()
        if worker is not None and not worker.is_alive():
            return stopped  # it ended (had its thread crashed, its state says RUNNING)
        if worker is None and state not in ACTIVE_STATES:
            return stopped
        if asked is not None:
            cancel.set()  # its own Abort button: the runner does not watch inline runs
        if stopped is None and (ctx.is_cancelled() or time.monotonic() > ctx.deadline):
            stopped = "canceled" if ctx.is_cancelled() else "timed_out"
            stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            cancel.set()
            with contextlib.suppress(DispatchError):  # DispatchError: it ended meanwhile
                request_abort(database, child_id)  # a child the runner took hears it so
        if stopped is not None and worker is None and time.monotonic() > stop_deadline:
            return stopped  # another process runs it and is slow to stop: do not hang here


def _run_node(database: Database, run_id: int) -> str:
    """The parent's node: the child runs in the same process, so it is owned the same way."""
    with database.session_scope() as db:
        return db.scalar(sa.select(Run.node).where(Run.id == run_id)) or ""


def _may_start(database: Database, run_id: int) -> bool:
    """Does the child's job's overlap policy let it start now (queue: one at a time)?"""
    with database.session_scope() as db:
        job_id = db.scalar(sa.select(Run.job_id).where(Run.id == run_id))
        job = db.get(Job, job_id)
        running = db.scalar(
            sa.select(sa.func.count()).where(Run.job_id == job_id, Run.state == "RUNNING")
        )
    limit = job.max_parallel if job is not None and job.overlap == "parallel" else 1
    return running < limit


@dataclass(frozen=True)
class RelatedRun:
    id: int
    job_id: str
    state: str
    trigger: str


@dataclass(frozen=True)
class RunFamily:
    """The run that started a run (``then`` or ``call_job``) and the runs it started."""

    parent: RelatedRun | None
    children: list[RelatedRun]
    follow: bool  # still worth refreshing: the run is active or has just ended


def run_family(db: Session, run: Run, visible_jobs: set[str] | None = None) -> RunFamily:
    """Return the run's parent and children, limited to the jobs the viewer may see."""
    columns = (Run.id, Run.job_id, Run.state, Run.trigger)
    parent = None
    if run.parent_run_id is not None:
        row = db.execute(sa.select(*columns).where(Run.id == run.parent_run_id)).first()
        parent = RelatedRun(*row) if row else None
    rows = db.execute(
        sa.select(*columns).where(Run.parent_run_id == run.id).order_by(Run.id).limit(100)
    ).all()
    children = [RelatedRun(*row) for row in rows]
    if visible_jobs is not None:
        parent = parent if parent and parent.job_id in visible_jobs else None
        children = [child for child in children if child.job_id in visible_jobs]
    recently = run.finished_at is not None and utcnow() - run.finished_at < timedelta(
        seconds=FAMILY_FOLLOW_SECONDS
    )
    return RunFamily(parent, children, run.state in ACTIVE_STATES or recently)
