"""Execute one claimed run: its steps in order, with conditions, retries, timeouts and abort."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.crypto import SecretsVault
from app.db import Database, utcnow
from app.engine.definitions import load_definition
from app.engine.dependencies import unmet_dependency
from app.engine.logs import LogWriter, RunLog
from app.engine.params import secret_names
from app.engine.policies import backoff_seconds, retry_policy
from app.engine.signals import run_changed, run_finished
from app.engine.templating import (
    TemplateProblem,
    date_helpers,
    evaluate_condition,
    json_safe,
    render_value,
)
from app.models import Run, StepRun, User, Variable
from app.steps import get_step_type
from app.steps.base import (
    StepCanceled,
    StepContext,
    StepFailed,
    StepRetryLater,
    StepTimedOut,
    StepView,
)

log = logging.getLogger(__name__)
MAX_OUTPUT_BYTES = 1024 * 1024


@dataclass
class EngineSettings:
    instance_path: str
    log_max_lines: int = 100_000


@dataclass
class StepOutcome:
    state: str
    error: str | None = None
    retry_after: float | None = None  # the other side asked for this pause (HTTP Retry-After)
    final: bool = False  # retrying cannot help (a template error, a refused LDAP bind)


class RunExecution:
    """Carry one run from RUNNING to its final state."""

    def __init__(
        self,
        database: Database,
        vault: SecretsVault,
        writer: LogWriter,
        settings: EngineSettings,
        run_id: int,
        cancel: threading.Event,
        connectors=None,
        shutting_down: threading.Event | None = None,
    ):
        self.database, self.vault, self.writer = database, vault, writer
        self.connectors = connectors
        self.shutting_down = shutting_down or threading.Event()
        self.settings, self.run_id, self.cancel = settings, run_id, cancel
        self.outputs: dict[str, StepView] = {}

    def execute(self) -> str:
        with self.database.session_scope() as db:
            run = db.get(Run, self.run_id)
            definition = load_definition(db, run.job_id, run.job_version)
            params = self.vault.unseal(run.params_sealed) if run.params_sealed else {}
            variables, secret_values = self._variables(db)
            trigger, queued_at, level = run.trigger, run.queued_at, run.log_level
            who = db.scalar(sa.select(User.username).where(User.id == run.triggered_by))
            self.triggered_by = who or trigger  # a user, or the schedule / API that fired it
            disabled, start_step, replay_of = run.disabled_steps, run.start_step, run.replay_of_id
        hidden = [str(params[n]) for n in secret_names(definition["params"]) if params.get(n)]
        self.run_log = RunLog(
            self.writer, self.run_id, level, hidden + secret_values, self.settings.log_max_lines
        )
        self.namespace = {
            "params": params,
            "run": {
                "id": self.run_id,
                "trigger": trigger,
                "queued_at": queued_at,
                "triggered_by": self.triggered_by,
            },
            "job": {"id": definition["id"], "tags": definition.get("tags", [])},
            "steps": self.outputs,
            "vars": variables["vars"],
            "secrets": variables["secrets"],
            **date_helpers(definition.get("timezone", "UTC")),
        }
        self.job = definition
        timeout = definition.get("timeout_seconds")
        self.run_deadline = time.monotonic() + timeout if timeout else None
        self.run_log.info(f"run #{self.run_id} of {definition['id']} started ({trigger})")
        try:
            state, reason = self._run_steps(disabled or [], start_step, replay_of)
        except Exception as error:  # a bug of ours must still end the run, not leave it RUNNING
            log.exception("run %s crashed", self.run_id)
            state, reason = "FAILED", f"internal error: {error}"
            self.run_log.error(f"internal error: {error}")
        if state == "CANCELED" and self.shutting_down.is_set():
            state, reason = "INTERRUPTED", "the server stopped during the run"
        self.run_log.info(f"run ended {state}" + (f": {reason}" if reason else ""))
        self.writer.flush()  # every line is stored before the run is seen as finished
        with self.database.session_scope() as db:
            db.execute(
                sa.update(Run)
                .where(Run.id == self.run_id)
                .values(
                    state=state,
                    reason=self.run_log.mask(reason) if reason else None,
                    finished_at=utcnow(),
                )
            )
        run_changed.send(self.run_id)
        run_finished.send(self.run_id, database=self.database)
        return state

    def child(self, run_id: int, cancel: threading.Event) -> RunExecution:
        """An execution of another run sharing this one's log writer, settings and connectors
        (a call_job step runs its child run inline through it)."""
        return RunExecution(
            self.database,
            self.vault,
            self.writer,
            self.settings,
            run_id,
            cancel,
            self.connectors,
            self.shutting_down,
        )

    def _run_steps(self, disabled: list[str], start_step: str | None, replay_of: int | None):
        blocked = unmet_dependency(self.database, self.job.get("depends_on"))
        if blocked:
            return "SKIPPED", blocked  # logged as "run ended SKIPPED: dependency …"
        stopped: StepOutcome | None = None
        partial: StepOutcome | None = None
        reuse = self._earlier_outputs(replay_of) if start_step else {}
        reached_start = start_step is None
        for position, step in enumerate(self.job["steps"]):
            name = step["name"]
            reached_start = reached_start or name == start_step
            if stopped is not None:
                self._record(position, step, "NOT_RUN", f"not run: the run {stopped.state}")
            elif not reached_start:
                self.outputs[name] = reuse.get(name, StepView("SKIPPED"))
                self._record(
                    position,
                    step,
                    "SKIPPED",
                    f"reused from run #{replay_of}",
                    output=self.outputs[name].output,
                )
            elif not step.get("enabled", True):
                self._skip(position, step, "disabled in the job")
            elif name in disabled:
                self._skip(position, step, "switched off for this run")
            else:
                outcome = self._run_step(position, step)
                if outcome.state == "CANCELED":
                    stopped = outcome
                elif outcome.state in ("FAILED", "TIMED_OUT"):
                    if step.get("on_failure", "stop") == "continue":
                        partial = partial or outcome
                    else:
                        stopped = outcome
        if stopped is not None:
            return stopped.state, stopped.error
        if partial is not None:
            return "PARTIAL", partial.error
        return "SUCCEEDED", None

    def _run_step(self, position: int, step: dict) -> StepOutcome:
        name = step["name"]
        if step.get("when"):
            try:
                truthy, value = evaluate_condition(step["when"], self.namespace)
            except TemplateProblem as problem:
                return self._fail_without_attempt(position, step, str(problem))
            if not truthy:
                self._skip(position, step, f"when {step['when']!r} is {value!r}")
                return StepOutcome("SKIPPED")
        policy = retry_policy(step.get("retry"), self.job.get("retry"))
        attempts = max(1, int(policy["attempts"]))
        outcome = StepOutcome("FAILED")
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(position, step, attempt, attempts)
            if outcome.state in ("SUCCEEDED", "CANCELED") or attempt == attempts:
                break
            if outcome.final:
                break
            delay = max(backoff_seconds(policy, attempt), outcome.retry_after or 0)
            self.run_log.warning(
                f"{name}: attempt {attempt}/{attempts} {outcome.state}; retrying in {delay:.1f}s"
            )
            if self.cancel.wait(delay):
                outcome = StepOutcome("CANCELED", "aborted")
                break
        self.outputs.setdefault(name, StepView(outcome.state))
        self.outputs[name].status = outcome.state
        return outcome

    def _attempt(self, position: int, step: dict, attempt: int, attempts: int) -> StepOutcome:
        name, kind = step["name"], step["type"]
        step_run_id = self._start_step_run(position, step, attempt)
        slog = self.run_log.for_step(step_run_id, name)
        suffix = f" (attempt {attempt}/{attempts})" if attempts > 1 else ""
        slog.info(f"step {name} [{kind}] started{suffix}")
        timeout = float(step.get("timeout_seconds", 3600))
        deadline = time.monotonic() + timeout
        if self.run_deadline is not None and self.run_deadline < deadline:
            deadline, timeout = self.run_deadline, max(0.0, self.run_deadline - time.monotonic())
        ctx = StepContext(
            run_id=self.run_id,
            job_id=self.job["id"],
            step_name=name,
            triggered_by=self.triggered_by,
            params=self.namespace["params"],
            steps=self.outputs,
            log=slog,
            is_cancelled=self.cancel.is_set,
            timeout_seconds=timeout,
            deadline=deadline,
            instance_path=self.settings.instance_path,
            database=self.database,
            connectors=self.connectors,
            execution=self,
        )
        started = time.monotonic()
        output, rows = None, None
        try:
            step_type = get_step_type(kind)
            config = self._rendered_config(step_type, step)
            output = json_safe(step_type.run(config, ctx))
            _check_output(output)
            rows = ctx.metrics.get("rows")
            outcome = StepOutcome("SUCCEEDED")
        except StepCanceled:
            outcome = StepOutcome("CANCELED", "aborted")
        except StepTimedOut as error:
            outcome = StepOutcome("TIMED_OUT", str(error) or f"timed out after {timeout:.0f}s")
        except StepRetryLater as error:
            outcome = StepOutcome("FAILED", str(error), retry_after=error.retry_after)
        except TemplateProblem as error:
            outcome = StepOutcome("FAILED", str(error), final=True)  # same way every time
        except (StepFailed, LookupError) as error:
            outcome = StepOutcome("FAILED", str(error), final=not getattr(error, "retryable", True))
        except Exception as error:  # a step type's bug: fail the step, keep the run going
            log.exception("step %s of run %s crashed", name, self.run_id)
            slog.error("".join(traceback.format_exception(error)).rstrip())
            outcome = StepOutcome("FAILED", f"{type(error).__name__}: {error}")
        if self.cancel.is_set() and outcome.state != "SUCCEEDED":
            outcome = StepOutcome("CANCELED", "aborted")
        elapsed = time.monotonic() - started
        metrics = {"duration_ms": round(elapsed * 1000), **ctx.metrics}
        if outcome.state == "SUCCEEDED":
            self.outputs[name] = StepView("SUCCEEDED", output, rows)
            slog.info(f"step {name} succeeded in {elapsed:.2f}s")
        else:
            slog.error(f"step {name} {outcome.state}: {outcome.error}")
        self._finish_step_run(step_run_id, outcome, output, metrics)
        return outcome

    def _rendered_config(self, step_type, step: dict) -> dict[str, Any]:
        config = {k: v for k, v in step.items() if k not in COMMON_STEP_KEYS}
        templated = {f.name for f in step_type.fields if f.templated}
        return {
            k: (render_value(v, self.namespace) if k in templated else v) for k, v in config.items()
        }

    def _start_step_run(self, position: int, step: dict, attempt: int) -> int:
        with self.database.session_scope() as db:
            step_run = StepRun(
                run_id=self.run_id,
                step_name=step["name"],
                step_type=step["type"],
                position=position,
                attempt=attempt,
                state="RUNNING",
                started_at=utcnow(),
            )
            db.add(step_run)
            db.flush()
            step_run_id = step_run.id
        run_changed.send(self.run_id)
        return step_run_id

    def _finish_step_run(self, step_run_id: int, outcome: StepOutcome, output, metrics) -> None:
        with self.database.session_scope() as db:
            db.execute(
                sa.update(StepRun)
                .where(StepRun.id == step_run_id)
                .values(
                    state=outcome.state,
                    error=self.run_log.mask(outcome.error) if outcome.error else None,
                    output=self.run_log.mask_value(output),  # later steps see the real one
                    metrics=metrics,
                    finished_at=utcnow(),
                )
            )
        run_changed.send(self.run_id)

    def _record(self, position, step, state, reason, output=None) -> None:
        now = utcnow()
        with self.database.session_scope() as db:
            db.add(
                StepRun(
                    run_id=self.run_id,
                    step_name=step["name"],
                    step_type=step["type"],
                    position=position,
                    attempt=1,
                    state=state,
                    error=self.run_log.mask(reason) if reason else None,
                    output=self.run_log.mask_value(output),
                    started_at=now,
                    finished_at=now,
                )
            )
        run_changed.send(self.run_id)

    def _skip(self, position: int, step: dict, reason: str) -> None:
        self.run_log.info(f"step {step['name']} skipped: {reason}")
        self.outputs[step["name"]] = StepView("SKIPPED")
        self._record(position, step, "SKIPPED", reason)

    def _fail_without_attempt(self, position: int, step: dict, reason: str) -> StepOutcome:
        self.run_log.error(f"step {step['name']} FAILED: {reason}")
        self.outputs[step["name"]] = StepView("FAILED")
        self._record(position, step, "FAILED", reason)
        return StepOutcome("FAILED", reason)

    def _earlier_outputs(self, run_id: int | None) -> dict[str, StepView]:
        if run_id is None:
            return {}
        with self.database.session_scope() as db:
            rows = db.scalars(
                sa.select(StepRun).where(StepRun.run_id == run_id).order_by(StepRun.id)
            ).all()
            return {
                r.step_name: StepView(r.state, r.output, (r.metrics or {}).get("rows"))
                for r in rows
                if r.state in ("SUCCEEDED", "SKIPPED")
            }

    def _variables(self, db) -> tuple[dict[str, dict[str, Any]], list[str]]:
        plain, secret = {}, {}
        for variable in db.scalars(sa.select(Variable)):
            if variable.secret:
                secret[variable.name] = self.vault.unseal(variable.value)
            else:
                plain[variable.name] = variable.value
        return {"vars": plain, "secrets": secret}, [str(v) for v in secret.values() if v]


COMMON_STEP_KEYS = {"name", "type", "enabled", "timeout_seconds", "when", "on_failure", "retry"}


def _check_output(output: Any) -> None:
    try:
        size = len(json.dumps(output))
    except (TypeError, ValueError) as error:
        raise StepFailed(f"the step's output is not JSON-serialisable: {error}") from error
    if size > MAX_OUTPUT_BYTES:
        raise StepFailed(f"the step's output is {size} bytes; the limit is {MAX_OUTPUT_BYTES}")
