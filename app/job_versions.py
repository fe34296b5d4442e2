"""A job's saved versions: list them, diff two definitions, restore an old one as a new version."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.db import utcnow
from app.job_graph import graph_errors, stored_definitions

# the export's readable TOML (code verbatim, defaults left out): one format for files and diffs
from app.jobs_io import dumps_readably, without_defaults
from app.jobspec import apply_job, validate_job
from app.models import Job, JobVersion, User


@dataclass(frozen=True)
class VersionRow:
    version: int
    created_at: datetime
    created_by: str | None  # username; None for the CLI / system
    comment: str


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add" | "del" | "hunk" | "same"
    text: str


def list_versions(db: Session, job_id: str) -> list[VersionRow]:
    """Return the job's versions, newest first, with who saved each."""
    rows = db.execute(
        sa.select(JobVersion.version, JobVersion.created_at, User.username, JobVersion.comment)
        .outerjoin(User, User.id == JobVersion.created_by)
        .where(JobVersion.job_id == job_id)
        .order_by(JobVersion.version.desc())
    ).all()
    return [VersionRow(*row) for row in rows]


def get_version(db: Session, job_id: str, version: int) -> JobVersion | None:
    return db.scalar(
        sa.select(JobVersion).where(JobVersion.job_id == job_id, JobVersion.version == version)
    )


def definition_toml(definition: dict[str, Any]) -> str:
    """Return one definition as the TOML an export writes for it."""
    return dumps_readably({"jobs": [without_defaults(copy.deepcopy(definition))]})


def diff_definitions(old: dict[str, Any], new: dict[str, Any], labels=("old", "new")):
    """Return a unified diff of two definitions' TOML as typed lines (empty when equal)."""
    lines = difflib.unified_diff(
        definition_toml(old).splitlines(),
        definition_toml(new).splitlines(),
        fromfile=labels[0],
        tofile=labels[1],
        lineterm="",
        n=3,
    )
    typed = []
    for line in lines:
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            typed.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            typed.append(DiffLine("add", line))
        elif line.startswith("-"):
            typed.append(DiffLine("del", line))
        else:
            typed.append(DiffLine("same", line))
    return typed


def delete_job(db: Session, job: Job, user: User | None, ip: str = "", via: str = "") -> None:
    """Soft-delete a job: it leaves the catalogue and the clock; its runs and versions stay
    readable. The caller commits, then sends ``jobs_changed`` so the clock lets it go."""
    job.deleted_at = utcnow()
    detail = {"version": job.version, **({"via": via} if via else {})}
    record_event(
        db, "job.delete", user=user, target_type="job", target_id=job.id, ip=ip, detail=detail
    )


def restore_version(db: Session, job_id: str, version: int, user: User | None, ip: str = ""):
    """Save version ``version``'s definition as the job's current one; say what apply_job did.

    Restoring writes a new version (history only grows). LookupError for an unknown version,
    ValueError naming the problems when the old definition no longer validates (a step type
    that is gone). The caller commits.
    """
    stored = get_version(db, job_id, version)
    if stored is None:
        raise LookupError(f"{job_id} has no version {version}")
    # a stored definition holds None for "not set"; validate it as its export would read
    spec, errors = validate_job(without_defaults(copy.deepcopy(stored.definition)))
    if spec is not None:  # jobs named since deleted, or a cycle made since by other jobs
        # only jobs the restoring user may see, or that the current definition already names
        errors = graph_errors(db, {0: spec}, user, stored_definitions(db, [job_id], user))
    if errors:
        raise ValueError("; ".join(str(error) for error in errors))
    return apply_job(db, spec, user, ip)
