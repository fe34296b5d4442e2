"""Typed run parameters: check given values against the job's declarations, fill defaults."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

MASK = "••••••"
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}


class ParamError(ValueError):
    """Parameters do not fit the job; ``fields`` maps each parameter to its problem."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in fields.items()))
        self.fields = fields


def resolve_params(
    declared: list[dict[str, Any]],
    given: dict[str, Any] | None,
    render_default: Callable[[Any], Any] = lambda value: value,
) -> dict[str, Any]:
    """Return the effective, typed values; raise ParamError listing every problem."""
    given = dict(given or {})
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    names = {p["name"] for p in declared}
    for unknown in sorted(set(given) - names):
        problems[unknown] = (
            f"unknown parameter (this job takes: {', '.join(sorted(names)) or 'none'})"
        )
    for param in declared:
        name = param["name"]
        if name in given and given[name] not in (None, ""):
            raw = given[name]
        elif "default" in param and param["default"] not in (None, ""):
            try:
                raw = render_default(param["default"])
            except Exception as error:  # a template default that cannot render
                problems[name] = f"default {param['default']!r} failed: {error}"
                continue
        elif param.get("required"):
            problems[name] = "required"
            continue
        elif param["type"] == "bool":
            raw = False
        else:
            values[name] = None
            continue
        try:
            values[name] = coerce(param, raw)
        except ValueError as error:
            problems[name] = str(error)
    if problems:
        raise ParamError(problems)
    return values


def coerce(param: dict[str, Any], raw: Any) -> Any:
    """Turn a given value (often a string from a form or CLI) into the declared type."""
    kind = param["type"]
    if kind in ("string", "text", "secret", "connector"):
        return str(raw)
    if kind == "int":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected a whole number, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if kind == "float":
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind == "date":
        if isinstance(raw, datetime):
            return raw.date().isoformat()
        if isinstance(raw, date):
            return raw.isoformat()
        try:
            return date.fromisoformat(str(raw).strip()).isoformat()
        except ValueError:
            raise ValueError(f"expected a date like 2026-01-31, got {raw!r}") from None
    if kind == "datetime":
        if isinstance(raw, datetime):
            return raw.isoformat()
        try:
            return datetime.fromisoformat(str(raw).strip()).isoformat()
        except ValueError:
            raise ValueError(
                f"expected a date and time like 2026-01-31T08:00, got {raw!r}"
            ) from None
    if kind == "choice":
        choices = [str(c) for c in param.get("choices", [])]
        if str(raw) not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return str(raw)
    raise ValueError(f"unknown parameter type {kind!r}")


def secret_names(declared: list[dict[str, Any]]) -> set[str]:
    return {p["name"] for p in declared if p["type"] == "secret"}


def mask_params(declared: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """Return the values with secrets replaced, for storage in clear and for display."""
    hidden = secret_names(declared)
    return {k: (MASK if k in hidden and v not in (None, "") else v) for k, v in values.items()}


def parse_cli_params(pairs: list[str]) -> dict[str, str]:
    """Read ``k=v`` pairs (CLI --param); ValueError names the malformed one."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        values[name.strip()] = value
    return values
