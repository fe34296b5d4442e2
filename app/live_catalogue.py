"""Live catalogue rows: when a run of a job changes, browsers showing that job's row refetch it.

A row's buttons depend on who looks, so the ``jobs`` room is not sent rows: it is sent a tiny
``jobs/_row_refresh.html`` element per job, swapped out-of-band into the row, whose
``hx-trigger="load"`` makes each browser GET ``/jobs/<id>/row`` with its own permissions. A
page without that row drops the element (static/js/live.js). A role limited to tags watches its
own copy of the room (``jobs:role:<id>``, app.live.room_for), sent only its jobs' elements, so
it never learns another team's job ids. At most one push per job per second: a burst of step
changes becomes one refetch, and the last change is never lost (a push is delayed, not
dropped).
"""

from __future__ import annotations

import logging
import queue
import time

import sqlalchemy as sa
from flask import Flask, render_template

from app.live import RunEventPusher, push_fragment, rooms_for_jobs, watched_list_room
from app.models import Run

log = logging.getLogger(__name__)
EXTENSION = "nomaflow.live_catalogue"
ROOM = "jobs"
MIN_GAP_SECONDS = 1.0  # per job: at most one refresh push a second


class CataloguePusher(RunEventPusher):
    """Turn run events into per-job refresh pushes, throttled, on a thread of its own."""

    thread_name = "live-push-catalogue"

    def __init__(self, app: Flask):
        super().__init__(app)
        self.due: dict[str, float] = {}  # job id -> when its pending push goes out
        self.last_push: dict[str, float] = {}

    def _loop(self) -> None:
        while True:
            wait = max(0.0, min(self.due.values()) - time.monotonic()) if self.due else None
            try:
                run_id = self.events.get(timeout=wait)
            except queue.Empty:
                run_id = 0  # a pending push fell due
            if run_id is None:
                return
            try:
                if run_id:
                    self._schedule(run_id)
                self._push_due()
            except Exception:  # one bad push must not stop every later one
                log.exception("live catalogue push failed")

    def _schedule(self, run_id: int) -> None:
        if not self._watched():
            return  # nobody looks: a page opened later reads the rows fresh
        with self.database.session_scope() as db:
            job_id = db.scalar(sa.select(Run.job_id).where(Run.id == run_id))
        if job_id is not None and job_id not in self.due:
            earliest = self.last_push.get(job_id, 0.0) + MIN_GAP_SECONDS
            self.due[job_id] = max(time.monotonic(), earliest)

    def _push_due(self) -> None:
        now = time.monotonic()
        ready = sorted(job_id for job_id, at in self.due.items() if at <= now)
        if not ready:
            return
        for job_id in ready:
            del self.due[job_id]
            self.last_push[job_id] = now
        with self.database.session_scope() as db:
            rooms = rooms_for_jobs(db, ready, ROOM)  # limited roles: their jobs only
        with self.app.test_request_context("/"):
            pushes = {
                room: render_template("jobs/_row_refresh.html", job_ids=job_ids)
                for room, job_ids in rooms.items()
            }
        for room, html in pushes.items():  # one emit per room
            push_fragment(html, room)

    def _watched(self) -> bool:
        if self.app.config["NOMAFLOW"].redis_url:
            return True  # the browsers of other replicas are not known here
        return watched_list_room(ROOM)


def start_catalogue_push(app: Flask) -> None:
    """Push catalogue row refreshes for this app (called by app.live.start_live_push)."""
    if app.extensions.get(EXTENSION) is None:
        pusher = CataloguePusher(app)
        app.extensions[EXTENSION] = pusher
        pusher.start()


def stop_catalogue_push(app: Flask) -> None:
    pusher = app.extensions.pop(EXTENSION, None)
    if pusher is not None:
        pusher.stop()
