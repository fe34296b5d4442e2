"""What an alert says: the facts of a run (job, link, state, failing step, last log lines) and
the subject and text drawn from them, or from the job's own ``subject`` / ``message``
templates (sandboxed Jinja, as in step fields). Email HTML is escaped here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from jinja2 import TemplateError
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from app.db import utcnow
from app.engine.history import duration_text, last_log_lines
from app.engine.logs import format_line
from app.engine.templating import environment
from app.models import Job, Run, StepRun

LAST_LINES = 20
SUBJECT_LIMIT = 200  # characters of a subject line (an email header must stay one line)
TITLES = {
    "failure": "{job}: run #{run} {state}",
    "recovery": "{job} recovered: run #{run} SUCCEEDED",
    "long_run": "{job}: run #{run} is still running",
    "too_fast": "{job}: run #{run} finished suspiciously fast",
    "missed": "{job}: run #{run} {state}",
    "success": "{job}: run #{run} SUCCEEDED",
    "test": "Test alert from Nomaflow",
}
LEVELS = {"failure": "error", "long_run": "warning", "too_fast": "warning", "missed": "warning"}


def run_facts(db: Session, run: Run, job: Job | None, base_url: str) -> dict[str, Any]:
    """The facts every channel shows about a run (JSON-safe: stored as the event's payload)."""
    failing = _failing_step(db, run)
    lines = [
        format_line(ln.seq, ln.ts, ln.level, ln.message)
        for ln in last_log_lines(db, run.id, LAST_LINES)
    ]
    return {
        "job": run.job_id,
        "description": job.description if job else "",
        "tags": list(job.tags or []) if job else [],
        "run_id": run.id,
        "url": f"{base_url}/runs/{run.id}",
        "state": run.state,
        "reason": run.reason or "",
        "trigger": run.trigger,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration": duration_text(run.started_at, run.finished_at, utcnow()),
        "failing_step": failing,
        "last_lines": lines,
    }


def _failing_step(db: Session, run: Run) -> dict[str, str] | None:
    query = sa.select(StepRun).where(StepRun.run_id == run.id)
    steps = sorted(db.scalars(query), key=lambda s: (s.position, s.attempt))
    for step in reversed(steps):
        if step.state in ("FAILED", "TIMED_OUT", "CANCELED", "INTERRUPTED") and step.error:
            return {"name": step.step_name, "state": step.state, "error": step.error}
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def compose(
    facts: dict[str, Any],
    rule: str,
    why: str,
    alerts: dict[str, Any] | None,
    grouped: int = 0,
    grouped_since: str = "",
) -> dict:
    """Return the payload of one alert: the facts, the rule, and its title and text.

    ``grouped`` alerts of the same job and rule were held back since ``grouped_since``; this
    one says so.
    """
    payload = {**facts, "rule": rule, "why": why, "level": LEVELS.get(rule, "info")}
    if grouped:
        payload |= {"grouped": grouped, "grouped_since": grouped_since}
    payload["title"] = TITLES.get(rule, TITLES["failure"]).format(
        job=facts["job"], run=facts["run_id"], state=facts["state"]
    )
    payload["text"] = default_text(payload)
    overrides = alerts or {}
    for key, field in (("subject", "title"), ("message", "text")):
        template = overrides.get(key)
        if isinstance(template, str) and template.strip():
            payload[field] = render_override(template, payload)
            payload["custom_" + field] = True
    return payload


def render_override(template: str, payload: dict[str, Any]) -> str:
    """Render a job's own subject or message; a broken template says so instead of failing."""
    namespace = {
        "job": {
            "id": payload["job"],
            "description": payload["description"],
            "tags": payload["tags"],
        },
        "run": {
            "id": payload["run_id"],
            "url": payload["url"],
            "state": payload["state"],
            "reason": payload["reason"],
            "trigger": payload["trigger"],
            "duration": payload["duration"],
        },
        "rule": payload["rule"],
        "why": payload["why"],
        "failing_step": payload["failing_step"] or {},
        "last_lines": payload["last_lines"],
    }
    try:
        return environment.from_string(template).render(**namespace)
    except TemplateError as error:
        return f"{payload.get('title', '')} (the alert template failed: {error})"


def default_text(payload: dict[str, Any]) -> str:
    """The plain-text body: what happened, where to look, the failing step and the last lines."""
    lines = [
        f"Job: {payload['job']}",
        f"Run: #{payload['run_id']} {payload['state']} ({payload['why']})",
        f"Link: {payload['url']}",
    ]
    if payload.get("reason"):
        lines.append(f"Reason: {payload['reason']}")
    if payload.get("duration"):
        lines.append(f"Duration: {payload['duration']}")
    failing = payload.get("failing_step")
    if failing:
        lines.append(f"Failing step: {failing['name']} ({failing['state']}): {failing['error']}")
    if payload.get("grouped"):
        lines.append(f"(+{payload['grouped']} similar since {payload['grouped_since']})")
    if payload.get("last_lines"):
        lines += ["", f"Last {len(payload['last_lines'])} log lines:", *payload["last_lines"]]
    return "\n".join(lines)


def subject_line(payload: dict[str, Any]) -> str:
    """The one-line subject: whitespace (newlines of a custom subject) collapsed, cut short."""
    grouped = payload.get("grouped")
    suffix = f" (+{grouped} similar since {payload['grouped_since']})" if grouped else ""
    line = " ".join(f"[Nomaflow] {payload['title']}{suffix}".split())
    return line if len(line) <= SUBJECT_LIMIT else line[: SUBJECT_LIMIT - 1] + "…"


def email_html(payload: dict[str, Any]) -> str:
    """The HTML body of an alert email; every value is escaped."""
    rows = [("Job", payload["job"]), ("State", payload["state"]), ("Why", payload["why"])]
    if payload.get("reason"):
        rows.append(("Reason", payload["reason"]))
    failing = payload.get("failing_step")
    if failing:
        rows.append(("Failing step", f"{failing['name']} ({failing['state']}): {failing['error']}"))
    if payload.get("grouped"):
        rows.append(("Grouped", f"+{payload['grouped']} similar since {payload['grouped_since']}"))
    table = "".join(
        f"<tr><th align='left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows
    )
    text = escape(payload["text"]).replace("\n", Markup("<br>\n"))
    custom = f"<p>{text}</p>" if payload.get("custom_text") else ""
    log = "\n".join(str(escape(line)) for line in payload.get("last_lines") or [])
    return (
        "<!doctype html><html><body>"
        f"<h2>{escape(payload['title'])}</h2>"
        f'<p><a href="{escape(payload["url"])}">Open run #{escape(payload["run_id"])}</a></p>'
        f"<table>{table}</table>{custom}"
        + (f"<h3>Last log lines</h3><pre>{log}</pre>" if log else "")
        + "</body></html>"
    )
