"""The job definition a run executes: the version it was queued with, not today's edit."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import Job, JobVersion


def load_definition(db: Session, job_id: str, version: int) -> dict[str, Any]:
    """Return the canonical job dict (DESIGN §8 shape, defaults filled) of that version."""
    from app.jobspec import job_definition

    stored = db.scalar(
        sa.select(JobVersion.definition).where(
            JobVersion.job_id == job_id, JobVersion.version == version
        )
    )
    if stored is not None:
        return stored
    return job_definition(db.get(Job, job_id))
