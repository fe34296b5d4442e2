"""The OpenAPI 3.0 document of ``/api/v1``, written out by hand so it says exactly what we answer.

tests/test_api_schemathesis.py sends the requests it describes to the app and checks every
answer against it (status codes, content types, bodies), so a drift fails the suite.
"""

from __future__ import annotations

from typing import Any

from app import __version__
from app.jobspec import LOG_LEVELS, OVERLAP_POLICIES, PARAM_TYPES
from app.models import RUN_STATES, RUN_TRIGGERS

from .errors import MAX_BODY_BYTES
from .run_queries import LOG_PAGE, MAX_LOG_PAGE, MAX_RUN_PAGE, RUN_PAGE
from .run_requests import MAX_WAIT_SECONDS

STATUS_TEXT = {
    400: "The body is not a JSON object.",
    401: "No valid API token (missing, wrong, revoked or expired, or its user is disabled).",
    403: "The token's user lacks the permission.",
    404: "No such thing, or the user's role may not see it.",
    409: "Conflicts with the current state.",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
    422: "Invalid input; `fields` names each problem. Nothing was changed or queued.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    return {"description": description, "content": content, **extra}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json(_ref("Error"), STATUS_TEXT[code]) for code in codes}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


TIME = _nullable({"type": "string", "format": "date-time"})
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer"}}
LOCATION = {"Location": {"description": "The run in the API", "schema": {"type": "string"}}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "fields"],
        "properties": {
            "error": {"type": "string", "example": "unprocessable_entity"},
            "message": {"type": "string"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Param": {
        "type": "object",
        "required": ["name", "type"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": list(PARAM_TYPES)},
            "default": {},
            "required": {"type": "boolean"},
            "help": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Step": {
        "type": "object",
        "description": "The step fields of DESIGN §8; every other key is the type's config.",
        "required": ["name", "type"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "example": "python"},
            "enabled": {"type": "boolean"},
            "timeout_seconds": {"type": "integer"},
            "when": _nullable({"type": "string"}),
            "on_failure": {"type": "string", "enum": ["stop", "continue"]},
            "retry": _nullable({"type": "object"}),
        },
        "additionalProperties": True,
    },
    "Job": {
        "type": "object",
        "description": "A job as a TOML [[jobs]] table (DESIGN §8); null or absent = default.",
        "required": ["id", "steps"],
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,99}$"},
            "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "enabled": {"type": "boolean"},
            "schedule": _nullable({"type": "string"}),
            "interval": _nullable({"type": "string"}),
            "timezone": {"type": "string"},
            "overlap": {"type": "string", "enum": list(OVERLAP_POLICIES)},
            "max_parallel": {"type": "integer"},
            "grace_seconds": {"type": "integer"},
            "timeout_seconds": _nullable({"type": "integer"}),
            "log_level": {"type": "string", "enum": list(LOG_LEVELS)},
            "requeue_interrupted": {"type": "boolean"},
            "retry": _nullable({"type": "object"}),
            "params": {"type": "array", "items": _ref("Param")},
            "alerts": _nullable({"type": "object"}),
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "then": {"type": "array", "items": {"type": "object"}},
            "steps": {"type": "array", "items": _ref("Step")},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
    },
    "RunRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "params": {"type": "object", "description": "Values by parameter name"},
            "log_level": {"type": "string", "enum": list(LOG_LEVELS)},
            "steps": {
                "type": "object",
                "additionalProperties": {"type": "boolean"},
                "description": "false leaves a step out of this run",
            },
        },
    },
    "RunAccepted": {
        "type": "object",
        "required": ["id", "url", "state"],
        "properties": {
            "id": {"type": "integer"},
            "url": {"type": "string", "description": "The run's page in the UI"},
            "state": {"type": "string", "enum": list(RUN_STATES)},
        },
    },
    "StepRun": {
        "type": "object",
        "required": ["name", "type", "state", "attempts", "error", "output"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "state": {"type": "string"},
            "attempts": {"type": "integer"},
            "error": _nullable({"type": "string"}),
            "output": {"nullable": True, "description": "What the step passed on (any JSON)"},
            "metrics": {"type": "object"},
            "started_at": TIME,
            "finished_at": TIME,
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "job", "state", "trigger", "params", "queued_at", "started_at"]
        + ["finished_at", "steps"],
        "properties": {
            "id": {"type": "integer"},
            "job": {"type": "string"},
            "job_version": {"type": "integer"},
            "state": {"type": "string", "enum": list(RUN_STATES)},
            "reason": _nullable({"type": "string"}),
            "trigger": {"type": "string", "enum": list(RUN_TRIGGERS)},
            "triggered_by": _nullable({"type": "string"}),
            "params": {"type": "object", "description": "Secrets masked"},
            "log_level": {"type": "string"},
            "node": _nullable({"type": "string"}),
            "scheduled_for": TIME,
            "queued_at": {"type": "string", "format": "date-time"},
            "started_at": TIME,
            "finished_at": TIME,
            "replay_of": _nullable({"type": "integer"}),
            "steps": {"type": "array", "items": _ref("StepRun")},
        },
    },
    "RunSummary": {
        "type": "object",
        "required": ["id", "job", "state", "trigger", "queued_at", "url"],
        "properties": {
            "id": {"type": "integer"},
            "job": {"type": "string"},
            "state": {"type": "string", "enum": list(RUN_STATES)},
            "trigger": {"type": "string", "enum": list(RUN_TRIGGERS)},
            "triggered_by": _nullable({"type": "string"}),
            "queued_at": {"type": "string", "format": "date-time"},
            "started_at": TIME,
            "finished_at": TIME,
            "url": {"type": "string"},
        },
    },
    "RunList": {
        "type": "object",
        "required": ["runs", "next_after"],
        "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary")},
            "next_after": _nullable(
                {"type": "integer", "description": "`after` for older runs; null at the end"}
            ),
        },
    },
    "LogLine": {
        "type": "object",
        "required": ["seq", "ts", "level", "message", "step"],
        "properties": {
            "seq": {"type": "integer"},
            "ts": {"type": "string", "format": "date-time"},
            "level": {"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
            "message": {"type": "string"},
            "step": _nullable({"type": "string"}),
        },
    },
    "LogPage": {
        "type": "object",
        "required": ["run", "state", "lines", "next_after", "more"],
        "properties": {
            "run": {"type": "integer"},
            "state": {"type": "string", "enum": list(RUN_STATES)},
            "lines": {"type": "array", "items": _ref("LogLine")},
            "next_after": {"type": "integer", "description": "Pass as `after` to read on"},
            "more": {"type": "boolean", "description": "More lines are already there"},
        },
    },
    "ReplayRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"from_failed_step": {"type": "boolean"}},
    },
}


def _body(schema_name: str, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema_name)}}}


PATHS: dict[str, Any] = {
    "/jobs": {
        "get": {
            "operationId": "listJobs",
            "summary": "List the jobs the token's user may see (job:view)",
            "responses": {"200": _json(_ref("JobList"), "The jobs, by id"), **_errors(401, 403)},
        },
        "post": {
            "operationId": "createJob",
            "summary": "Create a job (job:edit; Python code needs python:edit)",
            "requestBody": _body("Job", True),
            "responses": {
                "201": _json(_ref("Job"), "Created", headers=LOCATION),
                **_errors(400, 401, 403, 409, 413, 422),
            },
        },
    },
    "/jobs/{job_id}": {
        "parameters": [JOB_ID],
        "get": {
            "operationId": "getJob",
            "summary": "Read a job's definition (job:view)",
            "responses": {"200": _json(_ref("Job"), "The job"), **_errors(401, 403, 404)},
        },
        "put": {
            "operationId": "updateJob",
            "summary": "Replace a job's definition; a change writes a new version (job:edit)",
            "requestBody": _body("Job", True),
            "responses": {
                "200": _json(_ref("Job"), "Saved"),
                **_errors(400, 401, 403, 404, 413, 422),
            },
        },
        "delete": {
            "operationId": "deleteJob",
            "summary": "Delete a job; its runs stay readable (job:delete)",
            "responses": {"204": {"description": "Deleted"}, **_errors(401, 403, 404)},
        },
    },
    "/jobs/{job_id}/runs": {
        "parameters": [JOB_ID],
        "post": {
            "operationId": "startRun",
            "summary": "Queue a run (job:run)",
            "parameters": [
                _query(
                    "wait",
                    {"type": "integer", "minimum": 0},
                    f"Wait up to this many seconds (at most {MAX_WAIT_SECONDS}) for the run to end",
                ),
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "Repeat a request safely: same key and body, same run (24 h)",
                },
            ],
            "requestBody": _body("RunRequest", False),
            "responses": {
                "200": _json(_ref("Run"), "The run ended within `wait`"),
                "202": _json(_ref("RunAccepted"), "Queued (or still running)", headers=LOCATION),
                **_errors(400, 401, 403, 404, 409, 413, 422),
            },
        },
    },
    "/runs": {
        "get": {
            "operationId": "listRuns",
            "summary": "List runs, newest first (job:view)",
            "parameters": [
                _query("job", {"type": "string"}, "Runs of this job"),
                _query("state", {"type": "string", "enum": list(RUN_STATES)}, "In this state"),
                _query("trigger", {"type": "string", "enum": list(RUN_TRIGGERS)}, "Started so"),
                _query("since", {"type": "string"}, "Queued at or after (date or date-time)"),
                _query("until", {"type": "string"}, "Queued at or before (date or date-time)"),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_RUN_PAGE},
                    f"Page size (default {RUN_PAGE})",
                ),
                _query("after", {"type": "integer", "minimum": 1}, "`next_after` of the last page"),
            ],
            "responses": {
                "200": _json(_ref("RunList"), "A page of runs"),
                **_errors(401, 403, 422),
            },
        },
    },
    "/runs/{run_id}": {
        "parameters": [RUN_ID],
        "get": {
            "operationId": "getRun",
            "summary": "Read a run: state, parameters, steps (job:view)",
            "responses": {"200": _json(_ref("Run"), "The run"), **_errors(401, 403, 404)},
        },
    },
    "/runs/{run_id}/logs": {
        "parameters": [RUN_ID],
        "get": {
            "operationId": "getRunLogs",
            "summary": "Read a run's log lines after a sequence number (job:view)",
            "parameters": [
                _query("after", {"type": "integer", "minimum": 0}, "Lines with seq above this"),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LOG_PAGE},
                    f"At most this many lines (default {LOG_PAGE})",
                ),
            ],
            "responses": {
                "200": _json(_ref("LogPage"), "Lines in order"),
                **_errors(401, 403, 404, 422),
            },
        },
    },
    "/runs/{run_id}/abort": {
        "parameters": [RUN_ID],
        "post": {
            "operationId": "abortRun",
            "summary": "Abort a queued or running run (job:run)",
            "responses": {
                "202": _json(_ref("Run"), "Canceled, or asked to stop"),
                **_errors(400, 401, 403, 404, 409, 413),
            },
        },
    },
    "/runs/{run_id}/replay": {
        "parameters": [RUN_ID],
        "post": {
            "operationId": "replayRun",
            "summary": "Run a finished run again with its parameters (job:run)",
            "requestBody": _body("ReplayRequest", False),
            "responses": {
                "202": _json(_ref("RunAccepted"), "Queued", headers=LOCATION),
                **_errors(400, 401, 403, 404, 409, 413, 422),
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document (any valid token)",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0"), **_errors(401)},
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document of /api/v1."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Nomaflow API",
            "version": __version__,
            "description": "Jobs and runs of Nomaflow. Authenticate with a personal API token "
            "(`Authorization: Bearer nf_...`); the token owner's permissions apply. Errors are "
            '`{"error", "message", "fields"}`.',
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
    }
