"""What every step type is: a kind, a config schema with validation, and a run()."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class StepFailed(Exception):
    """The step failed; the message is what the operator reads in the run.

    A subclass sets ``retryable = False`` when another attempt cannot help (a refused bind).
    """

    retryable = True


class StepRetryLater(StepFailed):
    """The step failed in a way the other side asked to retry after a while (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class StepTimedOut(StepFailed):
    """The step ran past its timeout_seconds."""


class StepCanceled(StepFailed):
    """The run was aborted while this step ran."""


class StepLog(Protocol):
    def debug(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...


@dataclass
class StepView:
    """What later steps see of an earlier one: ``steps['name'].output / .status / .rows``."""

    status: str
    output: Any = None
    rows: int | None = None


@dataclass
class StepContext:
    """Everything a step's run() may use. Steps never import Flask."""

    run_id: int
    job_id: str
    step_name: str
    triggered_by: str | None
    params: dict[str, Any]  # effective values, secrets in clear: never log them
    steps: dict[str, StepView]
    log: StepLog
    is_cancelled: Callable[[], bool]
    timeout_seconds: float
    deadline: float  # time.monotonic() value after which the step has timed out
    instance_path: str
    metrics: dict[str, Any] = field(default_factory=dict)  # filled by run(): rows, bytes, status
    database: Any = None  # the app's own Database (app.db), for built-in steps
    connectors: Any = None  # app.connectors.runtime.Connectors: engines and clients by name
    execution: Any = None  # the engine's RunExecution: call_job runs its child run through it


@dataclass(frozen=True)
class ConfigField:
    """One field of a step's config, as the editor, TOML and API name it (DESIGN §8)."""

    name: str
    kind: str  # "string" | "text" | "int" | "bool" | "list" | "table" | "code"
    required: bool = False
    secret: bool = False
    help: str = ""
    templated: bool = False  # rendered with the run's templating before run()


class StepType:
    """Base for step types; subclasses set ``kind``, ``fields`` and implement run()."""

    kind: str = ""
    label: str = ""
    fields: tuple[ConfigField, ...] = ()

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        """Return problems by field name; empty when the config is valid."""
        problems = {}
        known = {f.name for f in self.fields}
        for name in config:
            if name not in known:
                problems[name] = (
                    f"unknown field for a {self.kind} step (known: {', '.join(sorted(known))})"
                )
        for f in self.fields:
            if f.required and config.get(f.name) in (None, "", [], {}):
                problems[f.name] = "required"
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Return (field path, connector name, kind) for each connector the config names."""
        return []

    def run(self, config: dict[str, Any], ctx: StepContext) -> Any:
        """Do the work; return the step's output (JSON-serialisable) or raise StepFailed."""
        raise NotImplementedError
