"""The ``call_job`` step: run another job as a child run, wait, and take its outcome."""

from __future__ import annotations

import re
from typing import Any

from app.steps.base import ConfigField, StepContext, StepFailed, StepType

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")  # as app.jobspec.JOB_ID_PATTERN


class CallJobStep(StepType):
    kind = "call_job"
    label = "Call job"
    fields = (
        # not templated: the job called is fixed when the job is saved, so cycles are refused
        ConfigField("job", "string", required=True, help="id of the job to run as a child"),
        ConfigField(
            "params",
            "table",
            help="the child's params (templates over this run keep their type)",
            templated=True,
        ),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        job = config.get("job")
        if "job" not in problems and not (isinstance(job, str) and JOB_ID.match(job)):
            problems["job"] = "expected a job id (a-z 0-9 . _ -)"
        params = config.get("params")
        if params is not None and not isinstance(params, dict):
            problems["params"] = "expected a table of name = value"
        return problems

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Return {"run_id", "state", "outputs": {step: output}} of a child that SUCCEEDED."""
        problems = self.validate(config)
        if problems:
            raise StepFailed("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        if ctx.execution is None:
            raise StepFailed("call_job runs only inside the run engine")
        # imported here: the engine imports the step registry, which imports this module
        from app.engine.chaining import run_child_job

        return run_child_job(ctx, config["job"], config.get("params") or {})
