"""``depends_on``: a run starts only when each job it depends on last succeeded.

The rule holds for every trigger (cron, manual, API, chain…): one predictable rule, and an
operator who wants to run anyway edits ``depends_on`` away. The *latest finished* run of each
dependency decides (by id; a run still going does not count): anything but SUCCEEDED — FAILED,
PARTIAL, CANCELED, even a SKIPPED one — or no finished run at all ends this run SKIPPED.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.db import Database
from app.models import FINISHED_STATES, Run


def unmet_dependency(database: Database, depends_on: list[str] | None) -> str | None:
    """Return why the run may not start ("dependency extract: latest run #7 FAILED"), or None."""
    if not depends_on:
        return None
    with database.session_scope() as db:
        for job_id in depends_on:
            latest = db.execute(
                sa.select(Run.id, Run.state)
                .where(Run.job_id == job_id, Run.state.in_(FINISHED_STATES))
                .order_by(Run.id.desc())
                .limit(1)
            ).first()
            if latest is None:
                return f"dependency {job_id}: it has never run"
            if latest.state != "SUCCEEDED":
                return f"dependency {job_id}: latest run #{latest.id} {latest.state}"
    return None
