"""Job files in the TOML of DESIGN §8: import all or nothing, export what imports back unchanged."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import tomli_w
from flask import has_app_context
from sqlalchemy.orm import Session, selectinload

from app import crypto
from app.alerts.channels_io import (
    channel_tables,
    channels_to_export,
    export_channel_tables,
    save_channel_tables,
    unknown_channels,
)
from app.connectors import DEFAULT_CONNECTOR
from app.connectors.store import export_connector, save_connector
from app.crypto import SecretsVault
from app.job_graph import cycle_errors, reference_errors, stored_definitions
from app.jobspec import (
    JOB_DEFAULTS,
    PARAM_DEFAULTS,
    RETRY_DEFAULTS,
    STEP_DEFAULTS,
    STEP_KEYS,
    THEN_DEFAULTS,
    apply_job,
    job_definition,
    plan_job,
    validate_job,
)
from app.models import Connector, Job, User, Variable
from app.steps import get_step_type
from app.variables import VariableError, check_variable, export_variables, set_variable

VARIABLE_KEYS = ("name", "secret", "value")
# vars.NAME, secrets.NAME, vars['NAME'] in any string of a job: the variables it uses
VARIABLE_REFERENCE = re.compile(
    r"\b(?:vars|secrets)\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([A-Za-z_]\w*)['\"]\s*\])"
)
EXPORT_HEADER = "# Nomaflow jobs (DESIGN §8); `nomaflow jobs import FILE` reads this file back.\n\n"


class SecretsUnreadableError(LookupError):
    """An export needs a stored secret these keys cannot open.

    A LookupError so that `nomaflow jobs export` reports it as one line, like an unknown job.
    """


@dataclass
class ImportResult:
    """What an import found: every error ("path: message"), else what happened to each thing.

    ``outcomes`` maps a job id, ``connector NAME`` or ``variable NAME`` to created | updated |
    unchanged (job ids never hold a space, so the keys cannot collide).
    """

    errors: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    """One [[connectors]] or [[variables]] table that has the shape to be saved."""

    index: int
    path: str  # "connectors[0] ops"
    table: dict[str, Any]


def import_jobs(
    db: Session,
    text: str,
    user: User | None = None,
    dry_run: bool = False,
    ip: str = "",
    vault: SecretsVault | None = None,
) -> ImportResult:
    """Check a whole file (jobs, connectors, variables), then save all of it, or none of it.

    Connectors and variables are checked by saving them (save_connector and set_variable know
    what is stored: a kind is fixed, an enc: token must open with these keys), so when the file
    has any, an error or a dry run rolls the session back. Otherwise the caller commits.
    ``vault`` defaults to the app's, or outside an app context to this process's settings.
    """
    result = ImportResult()
    errors = result.errors
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        errors.append(f"file: invalid TOML: {error}")
        return result
    for key in document:
        if key not in ("jobs", "connectors", "variables", "channels"):
            errors.append(
                f"{key}: unknown section (a job file holds [[jobs]], [[connectors]], "
                "[[variables]] and [[channels]] tables)"
            )
    connectors = _connector_entries(document, errors)
    variables = _variable_entries(document, errors)
    specs = _read_jobs(db, document, errors, user)
    errors.extend(connector_problems(db, specs, connectors))
    channels = channel_tables(document, errors)
    errors.extend(unknown_channels(db, specs, {table["name"] for _, table in channels}))
    writes = bool(connectors or variables or channels)
    if writes:
        secrets_vault = vault or _current_vault()
        result.outcomes |= _save_connectors(db, secrets_vault, connectors, errors, user, ip)
        result.outcomes |= _save_variables(db, secrets_vault, variables, errors, user, ip)
        result.outcomes |= save_channel_tables(db, secrets_vault, channels, errors, user, ip)
    if errors:
        result.outcomes = {}
        if writes:
            db.rollback()
        return result
    for spec in specs.values():
        if dry_run:
            result.outcomes[spec["id"]] = plan_job(db, spec)
        else:
            result.outcomes[spec["id"]] = apply_job(db, spec, user, ip)
    if dry_run and writes:
        db.rollback()
    return result


def _current_vault() -> SecretsVault:
    """The running app's vault; without an app context the caller must pass ``vault=``.

    (Reading settings here instead would create keys in ./instance behind the caller's back.)
    """
    if has_app_context():
        return crypto.vault()
    raise RuntimeError("this file holds secrets: pass the installation's keys as vault=")


def _section(document: dict, key: str, errors: list[str]) -> list[tuple[int, dict[str, Any]]]:
    tables = document.get(key, [])
    if not isinstance(tables, list):
        errors.append(f"{key}: expected [[{key}]] tables")
        return []
    found = []
    for index, table in enumerate(tables):
        if isinstance(table, dict):
            found.append((index, table))
        else:
            errors.append(f"{key}[{index}]: expected a table")
    return found


def _path(key: str, index: int, name: Any) -> str:
    return f"{key}[{index}] {name}" if isinstance(name, str) and name else f"{key}[{index}]"


def _connector_entries(document: dict, errors: list[str]) -> list[_Entry]:
    """Check what save_connector cannot: the table's shape, and one name once in the file."""
    entries, first = [], {}
    for index, table in _section(document, "connectors", errors):
        path = _path("connectors", index, table.get("name"))
        shape_ok = True
        for key in ("name", "kind"):
            if not isinstance(table.get(key), str) or not table[key]:
                problem = "required" if key not in table else "expected a string"
                errors.append(f"{path} › {key}: {problem}")
                shape_ok = False
        if not isinstance(table.get("description", ""), str):
            errors.append(f"{path} › description: expected a string")
            shape_ok = False
        name = table.get("name")
        if isinstance(name, str) and name in first:
            errors.append(
                f"{path} › name: duplicate connector name {name!r} (also connectors[{first[name]}])"
            )
            shape_ok = False
        elif isinstance(name, str):
            first[name] = index
        if shape_ok:
            entries.append(_Entry(index, path, table))
    return entries


def _variable_entries(document: dict, errors: list[str]) -> list[_Entry]:
    entries, first = [], {}
    for index, table in _section(document, "variables", errors):
        path = _path("variables", index, table.get("name"))
        problems = {}
        for key in table:
            if key not in VARIABLE_KEYS:
                known = ", ".join(VARIABLE_KEYS)
                problems[key] = f"unknown variable field {key!r} (known: {known})"
        secret = table.get("secret", False)
        problems |= check_variable(table.get("name"), table.get("value"), secret)
        if "name" not in table:
            problems["name"] = "required"
        if "value" not in table and secret is not True:
            problems["value"] = "required"  # a secret left out keeps the stored value
        name = table.get("name")
        if isinstance(name, str) and name in first and "name" not in problems:
            problems["name"] = f"duplicate variable name {name!r} (also variables[{first[name]}])"
        elif isinstance(name, str):
            first.setdefault(name, index)
        errors.extend(f"{path} › {key}: {problem}" for key, problem in problems.items())
        if not problems:
            entries.append(_Entry(index, path, table))
    return entries


def _save_connectors(db, secrets_vault, entries, errors, user, ip) -> dict[str, str]:
    outcomes = {}
    for entry in entries:
        values = {k: v for k, v in entry.table.items() if k not in ("name", "kind", "description")}
        try:
            _, outcome = save_connector(
                db,
                secrets_vault,
                entry.table["name"],
                entry.table["kind"],
                values,
                description=entry.table.get("description"),
                user=user,
                ip=ip,
            )
        except ValueError as error:  # ConnectorError, or stored secrets these keys cannot open
            errors.extend(_error_lines(entry.path, error))
        else:
            outcomes[f"connector {entry.table['name']}"] = outcome
    return outcomes


def _save_variables(db, secrets_vault, entries, errors, user, ip) -> dict[str, str]:
    outcomes = {}
    for entry in entries:
        table = entry.table
        try:
            _, outcome = set_variable(
                db,
                secrets_vault,
                table["name"],
                table.get("value"),
                secret=table.get("secret", False),
                user=user,
                ip=ip,
            )
        except VariableError as error:
            errors.extend(_error_lines(entry.path, error))
        else:
            outcomes[f"variable {table['name']}"] = outcome
    return outcomes


def _error_lines(path: str, error: ValueError) -> list[str]:
    fields = getattr(error, "fields", None)
    if fields:
        return [f"{path} › {key}: {problem}" for key, problem in fields.items()]
    return [f"{path}: {getattr(error, 'message', None) or error}"]


def _read_jobs(db: Session, document: dict, errors: list[str], user=None) -> dict[int, dict]:
    tables = document.get("jobs", [])
    if not isinstance(tables, list):
        errors.append("jobs: expected [[jobs]] tables")
        return {}
    specs, first_index = {}, {}
    for index, table in enumerate(tables):
        spec, problems = validate_job(table, index)
        errors.extend(str(problem) for problem in problems)
        job_id = table.get("id") if isinstance(table, dict) else None
        if isinstance(job_id, str) and job_id in first_index:
            errors.append(
                f"jobs[{index}] {job_id} › id: duplicate job id {job_id!r} "
                f"(also jobs[{first_index[job_id]}])"
            )
        elif isinstance(job_id, str):
            first_index[job_id] = index
        if spec is not None:
            specs[index] = spec
    # then, depends_on, call_job: a job the importing user may not see counts as unknown,
    # unless the stored definition of the job being imported already names it
    before = stored_definitions(db, first_index, user) if user is not None else ()
    unknown = reference_errors(db, specs, in_file=set(first_index), user=user, before=before)
    errors.extend(str(problem) for problem in unknown + cycle_errors(db, specs, user))
    return specs


def _step_connector_refs(step: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (field path, connector name, kind) a step names; a templated name is left to runs."""
    config = {key: value for key, value in step.items() if key not in STEP_KEYS}
    refs = get_step_type(step["type"]).connector_refs(config)
    return [ref for ref in refs if isinstance(ref[1], str) and "{{" not in ref[1]]


def connector_problems(db: Session, specs: dict[int, dict], entries: list[_Entry]) -> list[str]:
    """Name every connector a step uses that is neither stored nor in this file, or of a kind
    other than the step needs (``default`` is always the app's own sql database)."""
    wanted = [
        (index, position, step, ref)
        for index, spec in specs.items()
        for position, step in enumerate(spec["steps"])
        for ref in _step_connector_refs(step)
    ]
    kinds = {entry.table["name"]: entry.table["kind"] for entry in entries}
    outside = {ref[1] for *_, ref in wanted} - set(kinds) - {DEFAULT_CONNECTOR}
    if outside:
        query = sa.select(Connector.name, Connector.kind).where(Connector.name.in_(outside))
        kinds |= {name: kind for name, kind in db.execute(query)}
    kinds[DEFAULT_CONNECTOR] = "sql"
    problems = []
    for index, position, step, (path, name, kind) in wanted:
        actual = kinds.get(name)
        if actual != kind:
            job_path = f"jobs[{index}] {specs[index]['id']}"
            where = f"{job_path} › steps[{position}] {step['name']} › {path}"
            also = f" ({name} is a {actual} connector)" if actual else ""
            problems.append(f"{where}: no {kind} connector named {name!r}{also}")
    return problems


def export_jobs(
    db: Session,
    ids: list[str] | None = None,
    vault: SecretsVault | None = None,
    everything: bool | None = None,
) -> str:
    """Return the given jobs (default: every job not deleted) as TOML, ordered by id.

    With them go connectors and variables, secrets as enc: tokens: when exporting every job,
    all of them (the file restores the whole set-up); when exporting named jobs, those the jobs
    use. ``everything`` overrides that choice. Values equal to their defaults are left out so
    files stay short; LookupError names any unknown id, or a secret these keys cannot open.
    """
    query = sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)
    if ids is not None:
        query = query.where(Job.id.in_(ids))
    jobs = list(db.scalars(query.options(selectinload(Job.steps))))
    missing = sorted(set(ids or ()) - {job.id for job in jobs})
    if missing:
        raise LookupError(f"unknown job {', '.join(repr(job_id) for job_id in missing)}")
    definitions = [job_definition(job) for job in jobs]
    if everything is None:
        everything = ids is None
    document: dict[str, Any] = {}
    connector_query = sa.select(Connector).order_by(Connector.name)
    variable_names = None
    if not everything:
        used = _connectors_used(definitions)
        connector_query = connector_query.where(Connector.name.in_(used))
        variable_names = _variables_used(definitions)
    connectors = list(db.scalars(connector_query))
    channels = channels_to_export(db, None if everything else definitions)
    secret_variables = sa.select(Variable.id).where(Variable.secret.is_(True))
    if variable_names is not None:
        secret_variables = secret_variables.where(Variable.name.in_(variable_names))
    needs_keys = any(c.secrets_sealed for c in [*connectors, *channels]) or db.scalar(
        secret_variables.limit(1)
    )
    # only secrets need the keys: a file without any never opens them
    secrets_vault = vault or (_current_vault() if needs_keys else None)
    try:
        if connectors:
            document["connectors"] = [export_connector(secrets_vault, c) for c in connectors]
        if variable_names is None or variable_names:
            variables = export_variables(db, secrets_vault, variable_names)
            if variables:
                document["variables"] = variables
        if channels:
            document["channels"] = export_channel_tables(secrets_vault, channels)
    except ValueError as error:
        raise SecretsUnreadableError(f"cannot export the secrets: {error}") from None
    document["jobs"] = [without_defaults(definition) for definition in definitions]
    return EXPORT_HEADER + dumps_readably(document)


def _connectors_used(definitions: list[dict[str, Any]]) -> set[str]:
    used = {
        ref[1]
        for definition in definitions
        for step in definition["steps"]
        for ref in _step_connector_refs(step)
    }
    for definition in definitions:  # a connector parameter's default names one too
        for param in definition["params"]:
            if param.get("type") == "connector" and isinstance(param.get("default"), str):
                used.add(param["default"])
    return used - {DEFAULT_CONNECTOR}


def _variables_used(definitions: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()

    def scan(value: Any) -> None:
        if isinstance(value, str):
            names.update(a or b for a, b in VARIABLE_REFERENCE.findall(value))
        elif isinstance(value, dict):
            for inner in value.values():
                scan(inner)
        elif isinstance(value, list):
            for inner in value:
                scan(inner)

    scan(definitions)
    return names


def dumps_readably(document: dict[str, Any]) -> str:
    """Dump to TOML with multi-line text (code, SQL, descriptions) written verbatim.

    tomli_w writes multi-line basic strings that escape every quote and backslash, which turns
    Python into something nobody wants to edit, drops the \\r of a \\r\\n, and spreads every
    array over several lines. So such values become long placeholders for tomli_w (the length
    also keeps a step out of an inline table), swapped afterwards for a literal string (or an
    escaped one-line string when the text cannot be a literal) and one-line arrays.
    """
    rendered: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: swap(inner) for key, inner in value.items()}
        if isinstance(value, list) and _is_short_scalar_list(value):
            text = f"[{', '.join(_toml_value(inner) for inner in value)}]"
        elif isinstance(value, list):
            return [swap(inner) for inner in value]
        elif isinstance(value, str) and ("\n" in value or "\r" in value):
            text = f"'''\n{value}'''" if _fits_literal(value) else _toml_value(value)
        else:
            return value
        placeholder = f"nomaflow-verbatim-{len(rendered)}-".ljust(100, "x")
        rendered[f'"{placeholder}"'] = text
        return placeholder

    text = tomli_w.dumps(swap(document))
    for placeholder, literal in rendered.items():
        text = text.replace(placeholder, literal, 1)
    return text


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).partition(" = ")[2].strip()


def _is_short_scalar_list(value: list) -> bool:
    scalars = all(isinstance(v, int | float | bool) or _is_one_line(v) for v in value)
    return bool(value) and scalars and len(repr(value)) <= 80


def _is_one_line(value: Any) -> bool:
    return isinstance(value, str) and "\n" not in value and "\r" not in value


def _fits_literal(value: str) -> bool:
    # a literal string holds neither its own delimiter nor control characters but tab and newline
    controls = any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in value)
    return "'''" not in value and not value.endswith("'") and not controls


def without_defaults(definition: dict[str, Any]) -> dict[str, Any]:
    job = _drop_defaults(definition, JOB_DEFAULTS)
    if "retry" in job:
        job["retry"] = _drop_defaults(job["retry"], RETRY_DEFAULTS)
    job["params"] = [_drop_defaults(param, PARAM_DEFAULTS) for param in job.get("params", [])]
    job["then"] = [_drop_defaults(chained, THEN_DEFAULTS) for chained in job.get("then", [])]
    job["steps"] = [_step_without_defaults(step) for step in job["steps"]]
    return {key: value for key, value in job.items() if value != []}


def _step_without_defaults(step: dict[str, Any]) -> dict[str, Any]:
    step = _drop_defaults(step, STEP_DEFAULTS)
    if "retry" in step:
        step["retry"] = _drop_defaults(step["retry"], RETRY_DEFAULTS)
    return step


def _drop_defaults(table: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    # TOML has no null: None always means "not set"
    return {
        key: value
        for key, value in table.items()
        if value is not None and not (key in defaults and value == defaults[key])
    }
