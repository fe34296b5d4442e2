"""Starting runs from outside (API and trigger URLs): read the request, dispatch, answer.

Every run goes through the engine's one door (app/engine/service.trigger_job) with trigger
"api"; a refused dispatch (bad parameters, unknown steps) queues nothing and answers 422.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import jsonify, request, url_for

from app import db
from app.db import get_database
from app.engine.dispatch import DispatchError
from app.engine.history import load_run_view, run_document
from app.engine.service import trigger_job
from app.engine.signals import run_finished
from app.models import FINISHED_STATES, Run, User

from . import idempotency
from .errors import ApiError

MAX_WAIT_SECONDS = 300  # a request held longer than this belongs to polling, not waiting
# the database is the truth (another replica may run it); the signal only wakes us sooner
POLL_SECONDS = 0.25
RUN_REQUEST_KEYS = ("params", "log_level", "steps")


@dataclass(frozen=True)
class RunRequest:
    """What a caller may choose for one run: parameters, log level, steps left out."""

    params: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None
    disabled_steps: tuple[str, ...] = ()
    body: dict[str, Any] = field(default_factory=dict)  # as sent: the idempotency fingerprint

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RunRequest:
        """Read ``{"params", "log_level", "steps": {"name": false}}``; 422 naming bad fields."""
        fields = {key: "unknown field" for key in body if key not in RUN_REQUEST_KEYS}
        params = body.get("params") or {}
        if not isinstance(params, dict):
            fields["params"] = "expected an object of parameter values"
        log_level = body.get("log_level")
        if log_level is not None and not isinstance(log_level, str):
            fields["log_level"] = "expected DEBUG, INFO, WARNING or ERROR"
        steps = body.get("steps") or {}
        if not isinstance(steps, dict) or not all(isinstance(v, bool) for v in steps.values()):
            fields["steps"] = 'expected an object like {"step-name": false}'
        if fields:
            raise ApiError(422, "The run request has problems.", fields)
        disabled = tuple(name for name, enabled in steps.items() if enabled is False)
        return cls(params, log_level, disabled, body)


def start_run(
    job_id: str,
    run_request: RunRequest,
    user: User | None,
    *,
    idempotency_key: str | None = None,
    wait_seconds: int = 0,
    ip: str = "",
):
    """Dispatch the run (or find the one this Idempotency-Key made) and answer for it."""
    database = get_database()
    key = None
    if idempotency_key is not None and user is not None:
        key = idempotency.check_key(idempotency_key)
        request_hash = idempotency.fingerprint("POST", request.path, run_request.body)
        earlier = idempotency.claim_key(database, user.id, key, request_hash)
        if earlier is not None:
            return run_accepted(earlier, wait_seconds)
    try:
        run = trigger_job(
            job_id,
            "api",
            run_request.params,
            user,
            log_level=run_request.log_level,
            disabled_steps=list(run_request.disabled_steps),
            ip=ip,
        )
    except DispatchError as error:
        if key is not None:
            idempotency.release_key(database, user.id, key)
        raise ApiError(error.status, error.message, error.fields) from None
    except BaseException:
        if key is not None:
            idempotency.release_key(database, user.id, key)
        raise
    if key is not None:
        idempotency.remember_run(database, user.id, key, run.id)
    return run_accepted(run.id, wait_seconds)


def run_accepted(run_id: int, wait_seconds: int = 0):
    """202 ``{"id", "url", "state"}`` with Location; with a wait, 200 and the finished run."""
    db.session().close()  # hold no transaction while waiting
    document = wait_for_end(run_id, wait_seconds) if wait_seconds > 0 else None
    if document is not None:
        return jsonify(document), 200
    state = db.session().get(Run, run_id).state
    response = jsonify(id=run_id, url=run_url(run_id), state=state)
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/runs/{run_id}"
    return response


def run_url(run_id: int) -> str:
    """The run's page in the UI (for people; the API resource is in Location)."""
    return url_for("runs.detail", run_id=run_id, _external=True)


def wait_for_end(run_id: int, seconds: float) -> dict[str, Any] | None:
    """Return the run document once the run has finished, or None after ``seconds``."""
    database = get_database()
    ended = threading.Event()

    def on_finished(sender, **_kw):
        if sender == run_id:
            ended.set()

    run_finished.connect(on_finished, weak=False)
    try:
        deadline = time.monotonic() + seconds
        while True:
            with database.sessions() as session:
                view = load_run_view(session, run_id)
                if view.run.state in FINISHED_STATES:
                    return run_document(view)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ended.wait(min(POLL_SECONDS, remaining))
    finally:
        run_finished.disconnect(on_finished)
