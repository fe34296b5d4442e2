"""Job files in the TOML of DESIGN §8: import all or nothing, export what imports back unchanged."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import tomli_w
from sqlalchemy.orm import Session, selectinload

from app.jobspec import (
    JOB_DEFAULTS,
    PARAM_DEFAULTS,
    RETRY_DEFAULTS,
    STEP_DEFAULTS,
    THEN_DEFAULTS,
    apply_job,
    job_definition,
    plan_job,
    validate_job,
)
from app.models import Job, User

LATER_SECTIONS = ("connectors", "variables", "channels")  # in the format; features still to come
EXPORT_HEADER = "# Nomaflow jobs (DESIGN §8); `nomaflow jobs import FILE` reads this file back.\n\n"


@dataclass
class ImportResult:
    """What an import found: every error ("path: message"), else what happened to each job."""

    errors: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # id -> created | updated | unchanged


def import_jobs(
    db: Session, text: str, user: User | None = None, dry_run: bool = False, ip: str = ""
) -> ImportResult:
    """Check a whole job file, then save every job in it, or none if anything is wrong.

    Nothing is written when there is an error or on a dry run; the caller commits.
    """
    result = ImportResult()
    specs = _read_jobs(db, text, result.errors)
    if result.errors:
        return result
    for spec in specs:
        if dry_run:
            result.outcomes[spec["id"]] = plan_job(db, spec)
        else:
            result.outcomes[spec["id"]] = apply_job(db, spec, user, ip)
    return result


def _read_jobs(db: Session, text: str, errors: list[str]) -> list[dict[str, Any]]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        errors.append(f"file: invalid TOML: {error}")
        return []
    for key in document:
        if key in LATER_SECTIONS:
            errors.append(f"{key}: [[{key}]] is not supported by this version yet")
        elif key != "jobs":
            errors.append(f"{key}: unknown section (a job file holds [[jobs]] tables)")
    tables = document.get("jobs", [])
    if not isinstance(tables, list):
        errors.append("jobs: expected [[jobs]] tables")
        return []
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
    errors.extend(_unknown_references(db, specs, set(first_index)))
    return list(specs.values())


def _unknown_references(db: Session, specs: dict[int, dict], in_file: set[str]) -> list[str]:
    """Name every depends_on / then job that is neither in this file nor in the database."""
    wanted = []
    for index, spec in specs.items():
        wanted += [(index, "depends_on", other) for other in spec["depends_on"]]
        wanted += [(index, "then", chained["job"]) for chained in spec["then"]]
    outside = {other for _, _, other in wanted} - in_file
    stored = set()
    if outside:
        query = sa.select(Job.id).where(Job.id.in_(outside), Job.deleted_at.is_(None))
        stored = set(db.scalars(query))
    return [
        f"jobs[{index}] {specs[index]['id']} › {key}: unknown job {other!r}"
        for index, key, other in wanted
        if other not in in_file and other not in stored
    ]


def export_jobs(db: Session, ids: list[str] | None = None) -> str:
    """Return the given jobs (default: every job not deleted) as TOML, ordered by id.

    Values equal to their defaults are left out so files stay short; LookupError names any
    unknown id.
    """
    query = sa.select(Job).where(Job.deleted_at.is_(None)).order_by(Job.id)
    if ids is not None:
        query = query.where(Job.id.in_(ids))
    jobs = list(db.scalars(query.options(selectinload(Job.steps))))
    missing = sorted(set(ids or ()) - {job.id for job in jobs})
    if missing:
        raise LookupError(f"unknown job {', '.join(repr(job_id) for job_id in missing)}")
    document = {"jobs": [_without_defaults(job_definition(job)) for job in jobs]}
    return EXPORT_HEADER + _dumps_readably(document)


def _dumps_readably(document: dict[str, Any]) -> str:
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


def _without_defaults(definition: dict[str, Any]) -> dict[str, Any]:
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
