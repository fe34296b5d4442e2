"""Which jobs a user may see: a role may be limited to jobs carrying given tags (DESIGN §7).

Every list, search, page, room join and API answer about jobs or their runs asks here, so a
team limited to ``team-data`` never learns of another team's jobs (they answer 404, not 403).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import Job


def restricted_tags(user) -> frozenset[str] | None:
    """The tags the user's role is limited to, or None when it sees every job."""
    role = getattr(user, "role", None) if user is not None else None
    tags = getattr(role, "job_tags", None)
    return None if tags is None else frozenset(tags)


def may_see_tags(user, job_tags: Iterable[str] | None) -> bool:
    """May the user see a job carrying these tags?"""
    allowed = restricted_tags(user)
    return allowed is None or bool(allowed & set(job_tags or ()))


def may_see_job(user, job: Job | None) -> bool:
    return job is not None and may_see_tags(user, job.tags)


def visible_job_ids(db: Session, user, *, include_deleted: bool = True) -> set[str] | None:
    """The ids of the jobs the user may see, or None when the user sees every job.

    Tags live in a JSON column, so the filter is made here (one small query over the jobs
    table) and used as ``Run.job_id.in_(ids)`` by the callers; unrestricted users pay nothing.
    """
    allowed = restricted_tags(user)
    if allowed is None:
        return None
    query = sa.select(Job.id, Job.tags)
    if not include_deleted:
        query = query.where(Job.deleted_at.is_(None))
    return {job_id for job_id, tags in db.execute(query) if allowed & set(tags or ())}


def live_job(db: Session, job_id: str) -> Job | None:
    """The live (not deleted) job with exactly this id, or None.

    MariaDB compares ids without case, so ``db.get`` finds ``greet`` for ``GREET``: a URL names
    a job by its exact id only, and the caller goes on with ``job.id``.
    """
    job = db.get(Job, job_id)
    if job is None or job.id != job_id or job.deleted_at is not None:
        return None
    return job


def stored_job(db: Session, job_id: str) -> Job | None:
    """The job with exactly this id, deleted or not, or None (``db.get`` ignores case on
    MariaDB)."""
    job = db.get(Job, job_id)
    return job if job is not None and job.id == job_id else None
