"""Blueprints: thin views that parse input, call one domain function and render."""

from __future__ import annotations

import contextlib
import logging
import secrets

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from app import __version__, db
from app.db import utcnow
from app.engine.history import duration_text
from app.relative_time import time_tag
from app.schedules import describe_schedule


def register_blueprints(app: Flask) -> None:
    from app.api import register_api
    from app.web import (
        admin,
        auth,
        channels,
        connectors,
        dashboard,
        editor,
        health,
        jobs,
        notifications,
        roles,
        runs,
        schedule,
        settings,
        variables,
    )

    blueprints = (
        auth,
        health,
        dashboard,
        jobs,
        editor,
        runs,
        schedule,
        connectors,
        variables,
        admin,
        roles,
        settings,
        channels,
        notifications,
    )
    for module in blueprints:
        app.register_blueprint(module.bp)
    register_api(app)  # the REST API /api/v1, its UI page, tokens and trigger URLs
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)  # a 500 in the same layout
    app.context_processor(_layout_context)
    app.add_template_filter(_run_duration, "run_duration")
    app.add_template_filter(_step_duration, "step_duration")
    app.add_template_filter(_schedule_words, "schedule_words")
    app.add_template_filter(time_tag, "reltime")  # <time> "3 min ago", exact time on hover


def _schedule_words(job) -> str:
    if not (job.schedule or job.interval):
        return "manual only"
    return describe_schedule(job.schedule, job.interval)


def _run_duration(run) -> str:
    return duration_text(run.started_at, run.finished_at, utcnow())


def _step_duration(step_run) -> str:
    if step_run.state in ("SKIPPED", "NOT_RUN"):
        return "—"
    return duration_text(step_run.started_at, step_run.finished_at, utcnow())


def _layout_context() -> dict:
    return {"version": __version__, "user": current_user}


def _http_error(error: HTTPException):

    if request.path.startswith("/api/"):
        code = error.name.lower().replace(" ", "_")
        response = jsonify(error=code, message=error.description, fields={})
        return response, error.code
    titles = {403: "Not allowed", 404: "Not found"}
    return (
        render_template(
            "errors/error.html",
            code=error.code,
            title=titles.get(error.code, error.name),
            message=error.description,
        ),
        error.code,
    )


def _unexpected_error(error: Exception):
    """Log the traceback under a short incident id and answer 500 (JSON under /api/)."""
    incident = secrets.token_hex(4)
    log = logging.getLogger("app.web")
    log.error("incident %s: %s %s failed", incident, request.method, request.path, exc_info=error)
    with contextlib.suppress(Exception):  # the page reads the user: not from a failed transaction
        db.session().rollback()
    message = f"Something went wrong on our side. Incident {incident} is in the server log."
    if request.path.startswith("/api/"):
        return jsonify(error="internal_error", message=message, fields={}), 500
    try:
        page = render_template(
            "errors/error.html", code=500, title="Server error", message=message, incident=incident
        )
    except Exception:  # the layout needs the database (user, bell): when that is what failed
        log.warning("incident %s: the error page fell back to plain HTML", incident, exc_info=True)
        page = PLAIN_ERROR_PAGE.format(message=escape(message))
    return page, 500


PLAIN_ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>500 · Server error · Nomaflow</title>
<link rel="stylesheet" href="/static/css/app.css"></head>
<body><main class="container"><h1>500 · Server error</h1><p>{message}</p>
<p><a href="/">Back to the dashboard</a></p></main></body></html>
"""
