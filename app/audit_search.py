"""The audit log page's query: filters that combine, keyset pages by event id, newest first.

Action uses ``ix_audit_events_action_at``, the date range ``ix_audit_events_at`` and a typed
target (``job:nightly``) ``ix_audit_events_target``; every page reads at most one page of rows
more than it shows, walking the primary key downwards from ``before``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.list_filters import QueryFilter, day_errors, day_range_clauses
from app.models import AuditEvent

PAGE_SIZE = 100
ANY_OF = ".*"  # "job.*": every action starting with "job."


@dataclass(frozen=True)
class AuditFilter(QueryFilter):
    """What the audit form asks for; empty strings mean "any"."""

    user: str = ""
    action: str = ""  # an action ("job.trigger") or a family ("job.*")
    target: str = ""  # "type:id" ("job:nightly") or an id alone
    since: str = ""  # YYYY-MM-DD, UTC, inclusive
    until: str = ""  # YYYY-MM-DD, UTC, inclusive

    @classmethod
    def from_args(cls, args) -> tuple[AuditFilter, dict[str, str]]:
        """Read the query string; return the filter and a message per unusable field."""
        values = {f.name: (args.get(f.name) or "").strip()[:128] for f in fields(cls)}
        errors = day_errors(values)
        for name in errors:
            values[name] = ""
        return cls(**values), errors


@dataclass
class AuditPage:
    events: list[AuditEvent]
    older: int | None  # the `before` of the next page, None on the last one


def find_events(
    db: Session, audit_filter: AuditFilter, before: int | None = None, limit: int = PAGE_SIZE
) -> AuditPage:
    """Return one page of events matching ``audit_filter`` with ids below ``before``."""
    query = (
        sa.select(AuditEvent)
        .where(*_clauses(audit_filter))
        .order_by(AuditEvent.id.desc())
        .limit(limit + 1)  # one more tells whether an older page exists
    )
    if before:
        query = query.where(AuditEvent.id < before)
    events = list(db.scalars(query))
    older = events[limit - 1].id if len(events) > limit else None
    return AuditPage(events[:limit], older)


def known_actions(db: Session) -> list[str]:
    """Every distinct action, read by skipping through the action index (not a table scan)."""
    skip_scan = sa.text(
        "WITH RECURSIVE seen(action) AS ("
        " SELECT MIN(action) FROM audit_events"
        " UNION ALL"
        " SELECT (SELECT MIN(action) FROM audit_events WHERE action > seen.action)"
        " FROM seen WHERE seen.action IS NOT NULL"
        ") SELECT action FROM seen WHERE action IS NOT NULL"
    )
    return [action for (action,) in db.execute(skip_scan)]


def action_choices(actions: list[str]) -> list[str]:
    """The action select's options: each family ("job.*") before its members."""
    families = {action.split(".", 1)[0] + ANY_OF for action in actions if "." in action}
    return sorted(
        set(actions) | families,
        key=lambda action: (action.split(".", 1)[0], not action.endswith(ANY_OF), action),
    )


def _clauses(audit_filter: AuditFilter) -> list:
    clauses = []
    if audit_filter.user:
        clauses.append(AuditEvent.username == audit_filter.user)
    if audit_filter.action.endswith(ANY_OF):
        family = audit_filter.action.removesuffix("*")
        escaped = family.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(AuditEvent.action.like(f"{escaped}%", escape="\\"))
    elif audit_filter.action:
        clauses.append(AuditEvent.action == audit_filter.action)
    if audit_filter.target:
        kind, colon, target_id = audit_filter.target.partition(":")
        if colon and kind and target_id:
            clauses += [AuditEvent.target_type == kind, AuditEvent.target_id == target_id]
        else:
            clauses.append(AuditEvent.target_id == audit_filter.target)
    return clauses + day_range_clauses(AuditEvent.at, audit_filter.since, audit_filter.until)
