"""Templating of step fields and ``when`` conditions: sandboxed Jinja, StrictUndefined.

A value that is one single ``{{ expression }}`` keeps the expression's type (an int stays an
int for a bound SQL parameter); any other string renders to a string.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)

environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class TemplateProblem(ValueError):
    """A template or condition could not be evaluated; the message says which and why."""


def date_helpers(timezone: str, now: datetime | None = None) -> dict[str, Any]:
    """Return today, yesterday, now, month_first, month_previous, week_monday in the job's tz."""
    local_now = (now or datetime.now(ZoneInfo("UTC"))).astimezone(ZoneInfo(timezone))
    today = local_now.date()
    month_first = today.replace(day=1)
    return {
        "now": local_now,
        "today": today,
        "yesterday": today - timedelta(days=1),
        "month_first": month_first,
        "month_previous": (month_first - timedelta(days=1)).replace(day=1),
        "week_monday": today - timedelta(days=today.weekday()),
    }


def render_value(value: Any, namespace: dict[str, Any]) -> Any:
    """Render strings inside ``value`` (recursively through lists and dicts)."""
    if isinstance(value, str):
        return _render_string(value, namespace)
    if isinstance(value, list):
        return [render_value(item, namespace) for item in value]
    if isinstance(value, dict):
        return {key: render_value(item, namespace) for key, item in value.items()}
    return value


def _render_string(text: str, namespace: dict[str, Any]) -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        single = SINGLE_EXPRESSION.match(text)
        if single:
            result = environment.compile_expression(single.group("expr"), undefined_to_none=False)(
                **namespace
            )
            if isinstance(result, StrictUndefined):
                str(result)  # raises UndefinedError naming the missing value
            return result
        return environment.from_string(text).render(**namespace)
    except TemplateError as error:
        raise TemplateProblem(f"template {text!r}: {error}") from error


def evaluate_condition(expression: str, namespace: dict[str, Any]) -> tuple[bool, Any]:
    """Evaluate a ``when`` expression; return (truthy, value)."""
    try:
        value = environment.compile_expression(expression, undefined_to_none=False)(**namespace)
        truthy = bool(value)
    except TemplateError as error:
        raise TemplateProblem(f"when {expression!r}: {error}") from error
    return truthy, value


def json_safe(value: Any) -> Any:
    """Make rendered values storable as JSON (dates become ISO strings)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value
