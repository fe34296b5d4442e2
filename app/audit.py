"""The audit log: who did what to which thing, written in the caller's transaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import AuditEvent, User


def record_event(
    db: Session,
    action: str,
    *,
    user: User | None = None,
    username: str | None = None,
    target_type: str = "",
    target_id: str | int = "",
    ip: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the session; the caller's commit makes it durable."""
    event = AuditEvent(
        action=action,
        user_id=user.id if user else None,
        username=(username if username is not None else (user.username if user else ""))[:64],
        target_type=target_type,
        target_id=str(target_id)[:128],
        ip=(ip or "")[:64],
        detail=detail or {},
    )
    db.add(event)
    return event


def recent_events(db: Session, limit: int = 100, before_id: int | None = None) -> list[AuditEvent]:
    """Return the newest events first, paged by id."""
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(db.scalars(query))
