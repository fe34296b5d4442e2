"""In-app notifications: the bell in the header (live over the user's own room) and the list.

Each user sees only their own notifications; the alerts of in_app channels create them.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, Flask, abort, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.alerts.signals import notifications_created
from app.auth import requires
from app.db import get_database, utcnow
from app.models import Notification

log = logging.getLogger(__name__)
bp = Blueprint("notifications", __name__)
PAGE_SIZE = 100
PUSH_EXTENSION = "nomaflow.bell_push"


def unread_count(session, user_id: int) -> int:
    query = sa.select(sa.func.count()).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    return session.scalar(query) or 0


@bp.app_template_global()
def unread_notification_count() -> int:
    """The signed-in user's unread notifications (the bell's number)."""
    if not current_user.is_authenticated:
        return 0
    return unread_count(db.session(), current_user.id)


@bp.get("/notifications")
@requires()
def index():
    """List the signed-in user's notifications, newest first."""
    rows = db.session().scalars(
        sa.select(Notification)
        .where(Notification.user_id == current_user.id)
        .order_by(Notification.id.desc())
        .limit(PAGE_SIZE)
    )
    return render_template("notifications/index.html", notifications=list(rows))


@bp.get("/notifications/bell")
@requires()
def bell():
    """The bell alone (refetched when the live channel reconnects)."""
    return render_template("notifications/_bell.html")


@bp.post("/notifications/<int:notification_id>/read")
@requires()
def mark_read(notification_id: int):
    """Mark one of the user's notifications read; answer its row and the bell."""
    session = db.session()
    notification = session.get(Notification, notification_id)
    if notification is None or notification.user_id != current_user.id:
        abort(404, description="There is no such notification.")
    if notification.read_at is None:
        notification.read_at = utcnow()
        session.commit()
    return render_template("notifications/_row.html", n=notification, with_bell=True)


@bp.post("/notifications/read-all")
@requires()
def mark_all_read():
    """Mark every unread notification of the user read."""
    session = db.session()
    session.execute(
        sa.update(Notification)
        .where(Notification.user_id == current_user.id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    session.commit()
    if request.headers.get("HX-Request"):
        return render_template("notifications/_bell.html", oob=True) + index()
    return redirect(url_for("notifications.index"))


class BellPush:
    """Push each notified user's re-rendered bell to their own room ``user:<id>``."""

    def __init__(self, app: Flask):
        self.app = app

    def start(self) -> None:
        notifications_created.connect(self.on_created, weak=False)

    def stop(self) -> None:
        notifications_created.disconnect(self.on_created)

    def on_created(self, _sender, user_ids=(), **_kw) -> None:
        from app.live import push_fragment

        try:
            with get_database(self.app).session_scope() as session:
                counts = {user_id: unread_count(session, user_id) for user_id in user_ids}
            with self.app.test_request_context("/"):
                for user_id, count in counts.items():
                    html = render_template("notifications/_bell.html", bell_count=count, oob=True)
                    push_fragment(html, f"user:{user_id}")
        except Exception:  # a failed push must not fail the alert that caused it
            log.exception("live push of the notification bell failed")


def start_bell_push(app: Flask) -> None:
    if app.extensions.get(PUSH_EXTENSION) is None:
        pusher = BellPush(app)
        app.extensions[PUSH_EXTENSION] = pusher
        pusher.start()


def stop_bell_push(app: Flask) -> None:
    pusher = app.extensions.pop(PUSH_EXTENSION, None)
    if pusher is not None:
        pusher.stop()
