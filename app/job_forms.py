"""The job editor's form fields, translated to the job dict of DESIGN §8 and back.

Pure translation, no Flask: ``form_to_job`` turns posted fields into the table validate_job()
reads (a value that does not parse stays as typed, so validation names it and the form shows
it again); ``job_to_form`` gives the fields a browser would post for a definition;
``errors_by_field`` puts each SpecError next to the form field it is about.

Field names: top-level job keys by name (``retry_attempts`` for ``retry.attempts``),
``params-N.<key>``, ``steps-N.<key>`` and ``steps-N.config.<field>`` (a nested table field as
``steps-N.config.target.table``). Fields the editor does not show (alerts, chaining, a step's
retry) travel as JSON in hidden ``extras`` / ``steps-N.retry`` fields, so a save keeps them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from app.alerts.form import alerts_error_field, alerts_from_form, alerts_to_form
from app.jobspec import JOB_DEFAULTS, STEP_KEYS, SpecError
from app.steps import STEP_TYPES

SCHEDULE_KINDS = ("none", "cron", "interval")
EXTRA_KEYS = ("requeue_interrupted",)  # kept, not edited here
RETRY_FIELDS = ("attempts", "backoff", "base_seconds", "max_seconds", "jitter")
ROW = re.compile(r"^(params|steps|then)-(\d+)\.(.+)$")
CHECKED = ("true", "on", "1", "yes")


class FormValues:
    """Read posted fields from a MultiDict-like mapping (or a plain dict, in tests)."""

    def __init__(self, form: Mapping[str, Any]):
        self.form = form

    def get(self, key: str) -> str:
        value = self.form.get(key, "")
        return _text(value)

    def has(self, key: str) -> bool:
        return key in self.form

    def __iter__(self):
        return iter(list(self.form))


def _text(value: Any) -> str:
    # browsers post textareas with \r\n; code and SQL are stored with \n
    return str(value if value is not None else "").replace("\r\n", "\n")


def _whole(text: str) -> int | str | None:
    """An int when the text is one, None when empty, else the text (validation names it)."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def row_indexes(form: FormValues, kind: str) -> list[int]:
    """The row numbers posted for ``params`` or ``steps``, in order."""
    found = set()
    for key in form:
        match = ROW.match(key)
        if match and match.group(1) == kind:
            found.add(int(match.group(2)))
    return sorted(found)


def form_to_job(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the job table for validate_job(), and problems found while reading the fields.

    Problems are keyed by form field (a table that is not JSON, an extras field that is not).
    """
    values = FormValues(form)
    problems: dict[str, str] = {}
    data: dict[str, Any] = {"id": values.get("id").strip()}
    data["description"] = values.get("description").strip()
    data["tags"] = _words(values.get("tags"))
    data["enabled"] = values.get("enabled").lower() in CHECKED
    kind = values.get("schedule_kind") or "none"
    if kind == "cron":
        data["schedule"] = values.get("schedule")
    elif kind == "interval":
        data["interval"] = values.get("interval")
    data["timezone"] = values.get("timezone").strip() or JOB_DEFAULTS["timezone"]
    for key in ("grace_seconds", "timeout_seconds", "max_parallel"):
        number = _whole(values.get(key))
        if number is not None:
            data[key] = number
    for key in ("overlap", "log_level"):
        if values.get(key):
            data[key] = values.get(key)
    retry = _retry(values, "retry_")
    if retry is not None:
        data["retry"] = retry
    data["params"] = [_param(values, index) for index in row_indexes(values, "params")]
    data["steps"] = [_step(values, index, problems) for index in row_indexes(values, "steps")]
    extras = _json(values.get("extras"), "extras", problems, dict) or {}
    for key in EXTRA_KEYS:
        if key in extras:
            data[key] = extras[key]
    data.update(_chaining(values, problems))
    posted, alerts = alerts_from_form(values)  # the Alerts fieldset (app/alerts/form.py)
    if alerts is not None:
        data["alerts"] = alerts
    elif not posted and "alerts" in extras:  # a form from before the fieldset
        data["alerts"] = extras["alerts"]
    return data, problems


def _chaining(values: FormValues, problems: dict[str, str]) -> dict[str, Any]:
    """Read ``depends_on`` (comma list) and the ``then-N.*`` rows; a blank row is dropped."""
    then = []
    for index in row_indexes(values, "then"):
        prefix = f"then-{index}."
        job, text = values.get(prefix + "job").strip(), values.get(prefix + "params")
        if not job and not text.strip():
            continue
        row = f"then-{len(then)}.params"  # rows are numbered as kept: errors find their row
        if text.strip()[:1] == "{":
            params = _json(text, row, problems, dict)
        else:
            params = _key_value_lines(text, row, problems)
        chained = {"job": job, "on": values.get(prefix + "on") or "success"}
        chained["params"] = text if params is None and text.strip() else params or {}
        then.append(chained)
    return {"depends_on": _words(values.get("depends_on")), "then": then}


def _retry(values: FormValues, prefix: str) -> dict[str, Any] | None:
    attempts = _whole(values.get(prefix + "attempts"))
    if attempts is None:
        return None  # no retry policy
    retry: dict[str, Any] = {"attempts": attempts}
    if values.get(prefix + "backoff"):
        retry["backoff"] = values.get(prefix + "backoff")
    for key in ("base_seconds", "max_seconds"):
        number = _whole(values.get(prefix + key))
        if number is not None:
            retry[key] = number
    retry["jitter"] = values.get(prefix + "jitter").lower() in CHECKED
    return retry


def _param(values: FormValues, index: int) -> dict[str, Any]:
    prefix = f"params-{index}."
    kind = values.get(prefix + "type") or "string"
    param: dict[str, Any] = {"name": values.get(prefix + "name").strip(), "type": kind}
    default = values.get(prefix + "default")
    if default != "":
        param["default"] = _param_default(kind, default)
    param["required"] = values.get(prefix + "required").lower() in CHECKED
    param["help"] = values.get(prefix + "help").strip()
    if kind == "choice":  # other types have no choices; a type change drops them quietly
        param["choices"] = _words(values.get(prefix + "choices"))
    return param


def _param_default(kind: str, text: str) -> Any:
    if "{{" in text:
        return text  # a template, rendered when the run starts
    if kind == "int":
        return _whole(text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "bool" and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    return text


def _step(values: FormValues, index: int, problems: dict[str, str]) -> dict[str, Any]:
    prefix = f"steps-{index}."
    kind = values.get(prefix + "type").strip()
    step: dict[str, Any] = {"name": values.get(prefix + "name").strip(), "type": kind}
    step["enabled"] = values.get(prefix + "enabled").lower() in CHECKED
    timeout = _whole(values.get(prefix + "timeout_seconds"))
    if timeout is not None:
        step["timeout_seconds"] = timeout
    when = values.get(prefix + "when").strip()
    if when:
        step["when"] = when
    if values.get(prefix + "on_failure"):
        step["on_failure"] = values.get(prefix + "on_failure")
    retry = _json(values.get(prefix + "retry"), prefix + "retry", problems, dict)
    if retry:
        step["retry"] = retry
    config = _config(values, prefix + "config.", kind, problems)
    for key in config:
        if key in STEP_KEYS:  # a config field may never shadow a common one
            problems[f"{prefix}config.{key}"] = f"{key!r} is a step field, not config"
    return {**{k: v for k, v in config.items() if k not in STEP_KEYS}, **step}


def _config(values: FormValues, prefix: str, kind: str, problems: dict[str, str]) -> dict[str, Any]:
    """Read ``steps-N.config.*`` by the kinds the step type declares for its fields."""
    step_type = STEP_TYPES.get(kind)
    kinds = {f.name: f.kind for f in step_type.fields} if step_type else {}
    flat: dict[str, str] = {}
    nested: dict[str, dict[str, str]] = {}
    for key in values:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        outer, dot, inner = name.partition(".")
        if dot:
            nested.setdefault(outer, {})[inner] = values.get(key)
        else:
            flat[name] = values.get(key)
    config: dict[str, Any] = {}
    for name, text in flat.items():
        field_kind = kinds.get(name, "string")
        value = _config_value(text, field_kind, prefix + name, problems)
        if value is not None:
            config[name] = value
    for name, parts in nested.items():
        table = {}
        for inner, text in parts.items():
            if text.strip() == "":
                continue
            if text.strip()[:1] in "{[":
                table[inner] = _json(text, f"{prefix}{name}.{inner}", problems, (dict, list))
            else:
                table[inner] = text.strip()
        if table:
            config[name] = table
    return config


def _config_value(text: str, kind: str, key: str, problems: dict[str, str]) -> Any:
    if kind == "bool":
        return True if text.lower() in CHECKED else None  # unchecked: left out, as in TOML
    if kind in ("code", "text"):
        return text if text.strip() else None
    if text.strip() == "":
        return None
    if kind == "int":
        number = _whole(text)
        if isinstance(number, str):
            problems[key] = "expected a whole number"
        return number
    if kind == "list":
        items = _words(text)
        return [int(item) if item.isdigit() else item for item in items]  # http expect: 200
    if kind == "table":
        if text.strip()[:1] in "{[":
            return _json(text, key, problems, dict)
        return _key_value_lines(text, key, problems)
    return text.strip()


def _key_value_lines(text: str, key: str, problems: dict[str, str]) -> dict[str, str] | None:
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            problems[key] = f'line {number}: expected "name = value" or a JSON object'
            return None
        table[name.strip()] = value.strip()
    return table


def _json(text: str, key: str, problems: dict[str, str], kinds) -> Any:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        problems[key] = f"not valid JSON: {error.msg} (line {error.lineno})"
        return None
    if not isinstance(value, kinds):
        problems[key] = "expected a JSON object"
        return None
    return value


def job_to_form(definition: dict[str, Any]) -> dict[str, str]:
    """Return the fields a browser posts for ``definition`` (the editor's initial values)."""
    form: dict[str, str] = {
        "id": definition.get("id") or "",
        "description": definition.get("description") or "",
        "tags": ", ".join(definition.get("tags") or []),
        "timezone": definition.get("timezone") or "UTC",
        "schedule_kind": schedule_kind(definition),
        "schedule": definition.get("schedule") or "",
        "interval": definition.get("interval") or "",
        "overlap": definition.get("overlap") or "skip",
        "log_level": definition.get("log_level") or "INFO",
    }
    if definition.get("enabled", True):
        form["enabled"] = "true"
    for key in ("grace_seconds", "timeout_seconds", "max_parallel"):
        form[key] = _shown(definition.get(key))
    retry = definition.get("retry")
    if retry:
        form.update({f"retry_{key}": _shown(retry.get(key)) for key in RETRY_FIELDS[:4]})
        if retry.get("jitter"):
            form["retry_jitter"] = "true"
    for index, param in enumerate(definition.get("params") or []):
        prefix = f"params-{index}."
        form[prefix + "name"] = param.get("name") or ""
        form[prefix + "type"] = param.get("type") or "string"
        form[prefix + "default"] = _shown(param.get("default"))
        form[prefix + "help"] = param.get("help") or ""
        form[prefix + "choices"] = ", ".join(param.get("choices") or [])
        if param.get("required"):
            form[prefix + "required"] = "true"
    for index, step in enumerate(definition.get("steps") or []):
        form.update(_step_fields(index, step))
    extras = {key: definition[key] for key in EXTRA_KEYS if definition.get(key)}
    form["extras"] = json.dumps(extras) if extras else ""
    form.update(alerts_to_form(definition.get("alerts")))
    form["depends_on"] = ", ".join(definition.get("depends_on") or [])
    for index, chained in enumerate(definition.get("then") or []):
        prefix = f"then-{index}."
        form[prefix + "job"] = chained.get("job") or ""
        form[prefix + "on"] = chained.get("on") or "success"
        form[prefix + "params"] = _then_params_text(chained.get("params"))
    return form


def _then_params_text(params: Any) -> str:
    """``name = template`` lines when they read back the same, else JSON (or the text typed)."""
    if isinstance(params, str) or not params:
        return params or ""
    as_lines = all(
        isinstance(value, str)
        and value == value.strip()
        and "\n" not in value
        and re.fullmatch(r"[^=\s]+", name)
        for name, value in params.items()
    )
    if as_lines:
        return "\n".join(f"{name} = {value}" for name, value in params.items())
    return json.dumps(params, indent=2)


def _step_fields(index: int, step: dict[str, Any]) -> dict[str, str]:
    prefix = f"steps-{index}."
    form = {
        prefix + "name": step.get("name") or "",
        prefix + "type": step.get("type") or "",
        prefix + "timeout_seconds": _shown(step.get("timeout_seconds")),
        prefix + "when": step.get("when") or "",
        prefix + "on_failure": step.get("on_failure") or "stop",
        prefix + "retry": json.dumps(step["retry"]) if step.get("retry") else "",
    }
    if step.get("enabled", True):
        form[prefix + "enabled"] = "true"
    for name, value in step_config(step).items():
        key = f"{prefix}config.{name}"
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            form.update({f"{key}.{inner}": text for inner, text in value.items()})
        elif isinstance(value, dict | list) and not _is_word_list(value):
            form[key] = json.dumps(value)
        elif isinstance(value, list):
            form[key] = ", ".join(str(item) for item in value)
        elif isinstance(value, bool):
            if value:
                form[key] = "true"
        else:
            form[key] = _shown(value)
    return form


def _is_word_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and "," not in v
        for v in value
    )


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def schedule_kind(definition: dict[str, Any]) -> str:
    if definition.get("schedule"):
        return "cron"
    if definition.get("interval"):
        return "interval"
    return "none"


def step_config(step: dict[str, Any]) -> dict[str, Any]:
    """The type-specific part of a step (every key but the common ones)."""
    return {key: value for key, value in step.items() if key not in STEP_KEYS}


JOB_FIELDS = {"retry": "retry_"}  # SpecError key -> form field prefix


def error_field(path: str) -> str:
    """Map a SpecError path (``jobs[0] x › steps[1] y › code``) to its form field."""
    parts = path.split(" › ")[1:]
    if not parts:
        return ""
    head = parts[0]
    row = re.match(r"^(params|steps|then)\[(\d+)\]", head)
    if row and len(parts) > 1:
        prefix = f"{row.group(1)}-{row.group(2)}."
        key = parts[1]
        if row.group(1) == "steps" and key not in STEP_KEYS:
            return f"{prefix}config.{' › '.join(parts[1:]).replace(' › ', '.')}"
        if key == "retry":
            return prefix + "retry"
        return prefix + key
    if row:
        return f"{row.group(1)}-{row.group(2)}.name"
    if head == "retry":
        return "retry_" + (parts[1] if len(parts) > 1 else "attempts")
    if head == "alerts":
        return alerts_error_field(parts)
    if head in EXTRA_KEYS:
        return "extras"
    return head


def errors_by_field(errors: list[SpecError]) -> dict[str, str]:
    """Group SpecErrors by form field; the first message of a field wins."""
    fields: dict[str, str] = {}
    for error in errors:
        fields.setdefault(error_field(error.path), error.message)
    return fields


def python_code_problems(spec: dict[str, Any], before: list[dict[str, Any]]) -> dict[str, str]:
    """Name each python step whose code is new compared with the ``before`` definitions.

    What needs python:edit is creating or changing code; moving, renaming, disabling or
    deleting a python step, or keeping its code as it was, does not.
    """
    known = [
        _python_identity(step)
        for definition in before
        for step in definition.get("steps", [])
        if step.get("type") == "python"
    ]
    problems = {}
    for index, step in enumerate(spec.get("steps", [])):
        if step.get("type") == "python" and _python_identity(step) not in known:
            problems[f"steps-{index}.config.code"] = (
                "you need the python:edit permission to add or change Python code"
            )
    return problems


def _python_identity(step: dict[str, Any]) -> tuple:
    return (step.get("code"), step.get("callable"), json.dumps(step.get("connectors")))
