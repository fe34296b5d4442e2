"""One job definition in the shape of DESIGN §8 "Jobs as TOML": checked, normalised, saved.

The canonical definition is a plain dict with every field present (defaults filled, JSON-safe).
validate_job() makes it from a TOML table, job_definition() reads it back from the database, and
the two compare equal when nothing changed: that equality decides versions, exports and diffs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.orm import Session

from app.audit import record_event
from app.models import Job, JobVersion, Step, User
from app.schedules import ScheduleError, build_trigger, parse_timezone
from app.steps import get_step_type
from app.visibility import stored_job

JOB_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
PARAM_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # templates say params.NAME
PARAM_TYPES = ("string", "text", "int", "float", "bool", "date", "datetime", "choice")
PARAM_TYPES += ("secret", "connector")
OVERLAP_POLICIES = ("skip", "queue", "parallel")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BACKOFFS = ("fixed", "exponential")
ON_FAILURE = ("stop", "continue")
THEN_ON = ("success", "failure", "always")

JOB_DEFAULTS: dict[str, Any] = {
    "description": "",
    "tags": [],
    "enabled": True,
    "schedule": None,
    "interval": None,
    "timezone": "UTC",
    "overlap": "skip",
    "max_parallel": 4,
    "grace_seconds": 300,
    "timeout_seconds": None,
    "log_level": "INFO",
    "requeue_interrupted": False,
    "retry": None,
    "params": [],
    "alerts": None,
    "depends_on": [],
    "then": [],
}
JOB_KEYS = ("id", *JOB_DEFAULTS, "steps")
STEP_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "timeout_seconds": 3600,
    "when": None,
    "on_failure": "stop",
    "retry": None,
}
STEP_KEYS = ("name", "type", *STEP_DEFAULTS)  # every other key of a step is its type's config
RETRY_DEFAULTS: dict[str, Any] = {
    "backoff": "fixed",
    "base_seconds": 60,
    "max_seconds": 3600,
    "jitter": False,
}
PARAM_DEFAULTS: dict[str, Any] = {"required": False, "help": ""}
THEN_DEFAULTS: dict[str, Any] = {"on": "success", "params": {}}
ALERT_KEYS = ("channels", "on_failure", "after_failures", "on_recovery", "long_run_minutes")
ALERT_KEYS += ("min_duration_seconds", "on_missed", "on_success", "subject", "message")
_EXPRESSIONS = SandboxedEnvironment()


@dataclass(frozen=True)
class SpecError:
    """One problem in a definition: where (``jobs[0] x › steps[1] y › field``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _positive_number(value: Any) -> bool:
    return type(value) in (int, float) and value > 0  # bool is not a number here


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is not a 1


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Table:
    """Read the fields of one TOML table, collecting a SpecError for each problem."""

    def __init__(self, data: dict[str, Any], path: str, errors: list[SpecError]):
        self.data, self.path, self.errors = data, path, errors

    def at(self, key: str) -> str:
        return f"{self.path} › {key}"

    def fail(self, key: str, message: str) -> None:
        self.errors.append(SpecError(self.at(key), message))

    def reject_unknown(self, known: tuple[str, ...], what: str) -> None:
        for key in self.data:
            if key not in known:
                self.fail(key, f"unknown {what} field {key!r} (known: {', '.join(known)})")

    def value(self, key: str, default: Any, check, expected: str, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                self.fail(key, "required")
            return copy.deepcopy(default)
        value = self.data[key]
        if not check(value):
            self.fail(key, f"expected {expected}, got {_show(value)}")
            return copy.deepcopy(default)
        return copy.deepcopy(value)  # the definition never shares lists with its source

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.value(key, default, lambda v: isinstance(v, str), "a string", required)
        if required and value == "":
            self.fail(key, "required")
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        return self.value(key, default, lambda v: v in options, f"one of {', '.join(options)}")

    def flag(self, key: str, default: bool) -> bool:
        return self.value(key, default, lambda v: isinstance(v, bool), "true or false")

    def whole(self, key: str, default: int | None, minimum: int, required: bool = False):
        expected = f"a whole number ≥ {minimum}"
        return self.value(key, default, lambda v: _is_int(v) and v >= minimum, expected, required)

    def strings(self, key: str) -> list[str]:
        def check(value):
            return isinstance(value, list) and all(isinstance(v, str) and v for v in value)

        return self.value(key, [], check, "a list of strings")

    def table(self, key: str) -> _Table | None:
        value = self.value(key, None, lambda v: isinstance(v, dict), "a table")
        return None if value is None else _Table(value, self.at(key), self.errors)

    def tables(self, key: str) -> list[dict[str, Any]]:
        def check(value):
            return isinstance(value, list) and all(isinstance(v, dict) for v in value)

        return self.value(key, [], check, f"a list of tables ([[...{key}]])")

    def storable(self, key: str, value: Any) -> None:
        """Fail on TOML dates and times: a JSON column cannot keep them."""
        if isinstance(value, date | time):
            self.fail(key, "TOML dates and times cannot be stored here; quote it as a string")
        elif isinstance(value, dict):
            for inner_key, inner in value.items():
                self.storable(f"{key}.{inner_key}", inner)
        elif isinstance(value, list):
            for position, inner in enumerate(value):
                self.storable(f"{key}[{position}]", inner)


def validate_job(data: dict, index: int = 0) -> tuple[dict | None, list[SpecError]]:
    """Return the canonical definition of one ``[[jobs]]`` table, or every problem in it."""
    if not isinstance(data, dict):
        return None, [SpecError(f"jobs[{index}]", "expected a table")]
    raw_id = data.get("id")
    path = f"jobs[{index}] {raw_id}" if isinstance(raw_id, str) and raw_id else f"jobs[{index}]"
    errors: list[SpecError] = []
    job = _Table(data, path, errors)
    job.reject_unknown(JOB_KEYS, "job")
    job_id = job.text("id", required=True)
    if job_id and not JOB_ID_PATTERN.match(job_id):
        job.fail("id", "use 1-100 of a-z 0-9 . _ - (starting with a letter or digit)")
    default = JOB_DEFAULTS
    spec: dict[str, Any] = {"id": job_id, "description": job.text("description", "")}
    spec["tags"] = job.strings("tags")
    spec["enabled"] = job.flag("enabled", default["enabled"])
    spec["schedule"] = " ".join((job.text("schedule") or "").split()) or None
    spec["interval"] = (job.text("interval") or "").strip() or None
    for key, limit in (("schedule", 120), ("interval", 32)):  # the column sizes
        if len(spec[key] or "") > limit:
            job.fail(key, f"use at most {limit} characters")
    spec["timezone"] = job.text("timezone", default["timezone"])
    _check_schedule(job, spec)
    spec["overlap"] = job.choice("overlap", default["overlap"], OVERLAP_POLICIES)
    spec["max_parallel"] = job.whole("max_parallel", default["max_parallel"], minimum=1)
    spec["grace_seconds"] = job.whole("grace_seconds", default["grace_seconds"], minimum=0)
    spec["timeout_seconds"] = job.whole("timeout_seconds", None, minimum=1)
    spec["log_level"] = job.choice("log_level", default["log_level"], LOG_LEVELS)
    spec["requeue_interrupted"] = job.flag("requeue_interrupted", default["requeue_interrupted"])
    spec["retry"] = _retry(job)
    spec["params"] = _params(job)
    spec["alerts"] = _alerts(job)
    spec["depends_on"] = _depends_on(job, job_id)
    spec["then"] = _then(job, job_id)
    spec["steps"] = _steps(job)
    return (None, errors) if errors else (spec, [])


def _check_schedule(job: _Table, spec: dict[str, Any]) -> None:
    try:
        parse_timezone(spec["timezone"])
    except ScheduleError as error:
        job.fail("timezone", error.message)
    if spec["schedule"] and spec["interval"]:
        job.fail("interval", "give a schedule or an interval, not both")
    for schedule, interval in ((spec["schedule"], None), (None, spec["interval"])):
        try:
            build_trigger(schedule, interval, "UTC")
        except ScheduleError as error:
            job.fail(error.field, error.message)


def _retry(owner: _Table) -> dict[str, Any] | None:
    retry = owner.table("retry")
    if retry is None:
        return None
    retry.reject_unknown(("attempts", *RETRY_DEFAULTS), "retry")
    policy = {
        "attempts": retry.whole("attempts", 1, minimum=1, required=True),
        "backoff": retry.choice("backoff", RETRY_DEFAULTS["backoff"], BACKOFFS),
        "base_seconds": retry.whole("base_seconds", RETRY_DEFAULTS["base_seconds"], minimum=0),
        "max_seconds": retry.whole("max_seconds", RETRY_DEFAULTS["max_seconds"], minimum=0),
        "jitter": retry.flag("jitter", RETRY_DEFAULTS["jitter"]),
    }
    if policy["max_seconds"] < policy["base_seconds"]:
        retry.fail("max_seconds", f"must be at least base_seconds ({policy['base_seconds']})")
    return policy


def _params(job: _Table) -> list[dict[str, Any]]:
    params, seen = [], {}
    for position, data in enumerate(job.tables("params")):
        name = data.get("name")
        label = f"params[{position}] {name}" if isinstance(name, str) and name else ""
        param = _Table(data, job.at(label or f"params[{position}]"), job.errors)
        param.reject_unknown(("name", "type", "default", "required", "help", "choices"), "param")
        name = param.text("name", required=True)
        if name and not PARAM_NAME_PATTERN.match(name):
            param.fail("name", "use letters, digits and _ (not starting with a digit)")
        elif name and name in seen:
            param.fail("name", f"duplicate parameter name {name!r} (also params[{seen[name]}])")
        seen.setdefault(name, position)
        types = f"one of {', '.join(PARAM_TYPES)}"
        kind = param.value("type", None, lambda v: v in PARAM_TYPES, types, required=True)
        choices = _choices(param, kind)
        entry = {"name": name, "type": kind or "string"}  # in the order of DESIGN §8
        if "default" in data and kind:
            default = _param_default(param, kind, data["default"], choices)
            if default is not None:
                entry["default"] = default
        entry["required"] = param.flag("required", PARAM_DEFAULTS["required"])
        entry["help"] = param.text("help", PARAM_DEFAULTS["help"])
        if choices is not None:
            entry["choices"] = choices
        params.append(entry)
    return params


def _choices(param: _Table, kind: str | None) -> list[str] | None:
    if kind != "choice":
        if "choices" in param.data and kind:
            param.fail("choices", f"only a choice parameter has choices (this one is {kind})")
        return None
    choices = param.strings("choices")
    if not choices:
        param.fail("choices", "a choice parameter needs a non-empty list of choices")
    return choices


def _param_default(param: _Table, kind: str, value: Any, choices: list[str] | None) -> Any:
    """Return the default in its stored form (dates as ISO text), or None after a failure."""
    if isinstance(value, str) and "{{" in value:
        return value  # a template, rendered when the run starts
    problem, stored = None, value
    if kind in ("string", "text", "connector", "choice") and not isinstance(value, str):
        problem = "a string"
    elif kind == "choice" and choices and value not in choices:
        problem = f"one of the choices ({', '.join(choices)})"
    elif kind == "secret":
        param.fail("default", "a secret's default would be stored in clear; use '{{ secrets.X }}'")
        return None
    elif kind == "int" and not _is_int(value):
        problem = "a whole number"
    elif kind == "float":
        if _is_int(value) or isinstance(value, float):
            stored = float(value)
        else:
            problem = "a number"
    elif kind == "bool" and not isinstance(value, bool):
        problem = "true or false"
    elif kind in ("date", "datetime"):
        stored, problem = _iso_default(kind, value)
    if problem:
        param.fail("default", f"expected {problem} for type {kind}, got {_show(value)}")
        return None
    return stored


def _iso_default(kind: str, value: Any) -> tuple[str | None, str | None]:
    parse = date.fromisoformat if kind == "date" else datetime.fromisoformat
    wanted = "a date (2024-05-31)" if kind == "date" else "a date and time (2024-05-31T02:00:00)"
    if kind == "date" and isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat(), None
    if kind == "datetime" and isinstance(value, datetime):
        return value.isoformat(), None
    if isinstance(value, str):
        try:
            parse(value)
            return value, None
        except ValueError:
            pass
    return None, wanted


def _alerts(job: _Table) -> dict[str, Any] | None:
    alerts = job.table("alerts")
    if alerts is None:
        return None
    alerts.reject_unknown(ALERT_KEYS, "alerts")
    for key in ALERT_KEYS:  # stored as given; only the types are checked here
        if key == "channels":
            alerts.strings(key)
        elif key.startswith("on_"):
            alerts.flag(key, False)
        elif key == "long_run_minutes":  # a fraction of a minute is allowed (0.5 = 30 s)
            alerts.value(key, None, _positive_number, "a number > 0")
        elif key in ("subject", "message"):  # templates over job, run, rule, failing_step
            template = alerts.text(key)
            try:
                _EXPRESSIONS.parse(template or "")
            except jinja2.TemplateSyntaxError as error:
                alerts.fail(key, f"not a valid template: {error.message or error}")
        else:
            alerts.whole(key, None, minimum=0 if key == "min_duration_seconds" else 1)
    return copy.deepcopy(alerts.data) or None


def _depends_on(job: _Table, job_id: str | None) -> list[str]:
    depends_on = job.strings("depends_on")
    for other in depends_on:
        if not JOB_ID_PATTERN.match(other):
            job.fail("depends_on", f"{other!r} is not a job id")
        elif other == job_id:
            job.fail("depends_on", "a job cannot depend on itself")
    return depends_on


def _then(job: _Table, job_id: str | None) -> list[dict[str, Any]]:
    chained = []
    for position, data in enumerate(job.tables("then")):
        target = data.get("job")
        label = f"then[{position}] {target}" if isinstance(target, str) and target else ""
        then = _Table(data, job.at(label or f"then[{position}]"), job.errors)
        then.reject_unknown(("job", *THEN_DEFAULTS), "then")
        target = then.text("job", required=True)
        if target and not JOB_ID_PATTERN.match(target):
            then.fail("job", f"{target!r} is not a job id")
        elif target == job_id:
            then.fail("job", "a job cannot chain to itself (use retry)")
        params = then.value("params", {}, lambda v: isinstance(v, dict), "a table")
        then.storable("params", params)
        on = then.choice("on", THEN_DEFAULTS["on"], THEN_ON)
        chained.append({"job": target, "on": on, "params": params})
    return chained


def _steps(job: _Table) -> list[dict[str, Any]]:
    tables = job.tables("steps")
    if not tables and "steps" not in job.data:
        job.fail("steps", "a job needs at least one [[jobs.steps]]")
    elif job.data.get("steps") == []:
        job.fail("steps", "a job needs at least one step")
    steps, seen = [], {}
    for position, data in enumerate(tables):
        name = data.get("name")
        label = f"steps[{position}] {name}" if isinstance(name, str) and name else ""
        step = _Table(data, job.at(label or f"steps[{position}]"), job.errors)
        steps.append(_step(step))
        name = steps[-1]["name"]
        if name and name in seen:
            step.fail("name", f"duplicate step name {name!r} (also steps[{seen[name]}])")
        seen.setdefault(name, position)
    return steps


def _step(step: _Table) -> dict[str, Any]:
    name = step.text("name", required=True)
    if name and len(name) > 100:
        step.fail("name", "use at most 100 characters")
    kind = step.text("type", required=True)
    entry: dict[str, Any] = {"name": name, "type": kind}
    entry["enabled"] = step.flag("enabled", STEP_DEFAULTS["enabled"])
    entry["timeout_seconds"] = step.whole("timeout_seconds", STEP_DEFAULTS["timeout_seconds"], 1)
    entry["when"] = (step.text("when") or "").strip() or None
    if entry["when"]:
        try:
            _EXPRESSIONS.compile_expression(entry["when"])
        except jinja2.TemplateError as error:
            step.fail("when", f"not a valid expression: {error.message or error}")
    entry["on_failure"] = step.choice("on_failure", STEP_DEFAULTS["on_failure"], ON_FAILURE)
    entry["retry"] = _retry(step)
    config = {key: copy.deepcopy(v) for key, v in step.data.items() if key not in STEP_KEYS}
    for key, value in config.items():
        step.storable(key, value)
    if kind:
        try:
            problems = get_step_type(kind).validate(config)
        except LookupError as error:
            step.fail("type", str(error))
        else:
            for field, problem in problems.items():
                step.fail(field, problem)
    return {**entry, **config}


def job_definition(job: Job) -> dict[str, Any]:
    """Return the canonical definition of a stored job (the shape validate_job returns)."""
    definition: dict[str, Any] = {"id": job.id}
    for key, default in JOB_DEFAULTS.items():
        value = getattr(job, key)
        # columns left empty by other writers read as their defaults, so equal means unchanged
        definition[key] = copy.deepcopy(default if value is None else value)
    definition["steps"] = [_step_definition(step) for step in job.steps]
    return definition


def _step_definition(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "type": step.type,
        "enabled": step.enabled,
        "timeout_seconds": step.timeout_seconds,
        "when": step.when or None,
        "on_failure": step.on_failure,
        "retry": copy.deepcopy(step.retry),
        **copy.deepcopy(step.config or {}),
    }


def plan_job(db: Session, spec: dict[str, Any]) -> str:
    """Say what apply_job would do with ``spec``: "created", "updated" or "unchanged"."""
    job = stored_job(db, spec["id"])
    if job is None or job.deleted_at is not None:
        return "created"
    return "unchanged" if job_definition(job) == spec else "updated"


def apply_job(db: Session, spec: dict[str, Any], user: User | None, ip: str = "") -> str:
    """Create or update a job from a canonical definition (from validate_job); say which.

    Only a changed definition bumps ``Job.version`` and writes a JobVersion; a soft-deleted job
    with the same id comes back. The caller commits.
    """
    outcome = plan_job(db, spec)
    if outcome == "unchanged":
        return outcome
    job = stored_job(db, spec["id"])  # exactly this id (MariaDB compares without case)
    before = job_definition(job) if outcome == "updated" else None
    revived = job is not None and job.deleted_at is not None
    if job is None:
        job = Job(id=spec["id"], version=0)
        db.add(job)
    job.deleted_at = None
    job.version += 1
    for key in JOB_DEFAULTS:
        setattr(job, key, copy.deepcopy(spec[key]))
    _replace_steps(db, job, spec["steps"])
    db.add(
        JobVersion(
            job_id=job.id,
            version=job.version,
            definition=copy.deepcopy(spec),
            created_by=user.id if user else None,
        )
    )
    detail: dict[str, Any] = {"version": job.version}
    if before is not None:
        detail["changed"] = [key for key in JOB_KEYS if before[key] != spec[key]]
    if revived:
        detail["revived"] = True
    record_event(
        db,
        "job.create" if outcome == "created" else "job.update",
        user=user,
        username=None if user else "system",
        target_type="job",
        target_id=job.id,
        ip=ip,
        detail=detail,
    )
    return outcome


def _replace_steps(db: Session, job: Job, steps: list[dict[str, Any]]) -> None:
    """Make the job's steps these, in order; a step keeps its row while its name stays."""
    wanted = {spec["name"] for spec in steps}
    kept = {step.name: step for step in job.steps if step.name in wanted}
    job.steps = list(kept.values())
    db.flush()  # delete dropped steps before inserting new ones: (job_id, name) is unique
    ordered = []
    for position, spec in enumerate(steps):
        step = kept.get(spec["name"]) or Step(name=spec["name"])
        step.position = position
        step.type = spec["type"]
        step.enabled = spec["enabled"]
        step.timeout_seconds = spec["timeout_seconds"]
        step.when = spec["when"]
        step.on_failure = spec["on_failure"]
        step.retry = copy.deepcopy(spec["retry"])
        step.config = {k: copy.deepcopy(v) for k, v in spec.items() if k not in STEP_KEYS}
        ordered.append(step)
    job.steps = ordered
