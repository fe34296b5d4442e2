"""Live rows for the run history: engine events rendered as ``runs/_history_row.html`` pushes.

Pushed to the ``runs`` room, and to the ``runs:role:<id>`` room of each tag-limited role that
may see the run's job (such users join that room instead of ``runs``: app/live.py).
A new run is inserted at the top of the unfiltered first page only
(``afterbegin:#runs-unfiltered-tbody``): a filtered page or an older page does not grow. A
changed run replaces its row by id, and is pushed only while it is on the unfiltered first
page, so that page always has the row the fragment targets.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask, render_template

from app.live import RunEventPusher, push_fragment, rooms_for_jobs, watched_list_room
from app.models import Run
from app.run_history import history_row, newest_page_floor

log = logging.getLogger(__name__)
EXTENSION = "nomaflow.live_history"


class HistoryPusher(RunEventPusher):
    """Render history rows on a thread of its own; a burst of changes to a run renders once."""

    thread_name = "live-push-history"
    newest_seen = 0  # ids above this are new runs: inserted, not replaced

    def start(self) -> None:
        with self.database.session_scope() as db:
            self.newest_seen = db.scalar(sa.select(sa.func.max(Run.id))) or 0
        super().start()

    def _loop(self) -> None:
        while True:
            batch = [self.events.get()]
            while not self.events.empty():
                batch.append(self.events.get())
            for run_id in dict.fromkeys(batch):
                if run_id is None:
                    return
                try:
                    self._push(run_id)
                except Exception:  # one bad render must not stop every later push
                    log.exception("live history push of run %s failed", run_id)

    def _watched(self) -> bool:
        if self.app.config["NOMAFLOW"].redis_url:
            return True  # the browsers of other replicas are not known here
        return watched_list_room("runs")

    def _push(self, run_id: int) -> None:
        is_new = run_id > self.newest_seen
        self.newest_seen = max(self.newest_seen, run_id)
        if not self._watched():
            return
        with self.app.app_context(), self.database.session_scope() as db:
            if not is_new and run_id < newest_page_floor(db):
                return  # not on the live page; other pages refetch over HTTP
            row = history_row(db, run_id)
            if row is None:
                return
            html = render_template("runs/_history_row.html", row=row, oob=not is_new)
            rooms = rooms_for_jobs(db, [row.job_id], "runs")  # limited roles: their jobs only
        if is_new:
            html = f'<tbody hx-swap-oob="afterbegin:#runs-unfiltered-tbody">{html}</tbody>'
        for room in rooms:
            push_fragment(html, room)


def start_history_push(app: Flask) -> None:
    """Push history rows for this app (called by app.live.start_live_push)."""
    if app.extensions.get(EXTENSION) is None:
        pusher = HistoryPusher(app)
        app.extensions[EXTENSION] = pusher
        pusher.start()


def stop_history_push(app: Flask) -> None:
    pusher = app.extensions.pop(EXTENSION, None)
    if pusher is not None:
        pusher.stop()
