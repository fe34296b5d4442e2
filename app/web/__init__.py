"""Blueprints: thin views that parse input, call one domain function and render."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from app import __version__
from app.db import utcnow
from app.engine.history import duration_text
from app.schedules import describe_schedule


def register_blueprints(app: Flask) -> None:
    from app.web import (
        admin,
        auth,
        connectors,
        dashboard,
        editor,
        health,
        jobs,
        runs,
        schedule,
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
    )
    for module in blueprints:
        app.register_blueprint(module.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.context_processor(_layout_context)
    app.add_template_filter(_run_duration, "run_duration")
    app.add_template_filter(_step_duration, "step_duration")
    app.add_template_filter(_schedule_words, "schedule_words")


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
        response = jsonify(error=error.name.lower().replace(" ", "_"), message=error.description)
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
