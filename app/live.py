"""Socket.IO: signed-in users only, authorised room joins, rendered fragments pushed out.

Pages join the rooms they show (``runs``, ``jobs``, ``job:<id>``, ``run:<id>``). Two kinds of
push: ``fragment`` — Jinja partials with ``hx-swap-oob`` that static/js/live.js hands to htmx;
``log`` — rendered log lines that live.js inserts in sequence order, dropping duplicates, so a
page opened mid-run, or one that reconnects, shows every line once and in order.
"""

from __future__ import annotations

import logging
import queue
import re
import threading

import sqlalchemy as sa
from flask import Flask, render_template
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, emit, join_room

from app.db import get_database
from app.engine.history import load_run_view
from app.engine.signals import log_appended, run_changed, run_queued
from app.models import Job, LogLine, Role, Run
from app.permissions import JOB_VIEW
from app.visibility import may_see_job, restricted_tags

log = logging.getLogger(__name__)
socketio = SocketIO()

ROOM_PATTERN = re.compile(r"^(runs|jobs|job:[A-Za-z0-9._-]{1,100}|run:\d{1,19}|user:\d{1,19})$")
BACKLOG_LIMIT = 20_000
LIST_ROOMS = ("runs", "jobs")  # one copy per tag-limited role: room_for
PUSH_EXTENSION = "nomaflow.live_push"


def init_app(app: Flask) -> None:
    settings = app.config["NOMAFLOW"]
    socketio.init_app(
        app,
        async_mode="threading",
        message_queue=settings.redis_url,  # several replicas share pushes through Redis
        manage_session=False,  # read the signed Flask session; never write it from a socket
    )


@socketio.on("connect")
def on_connect(auth=None):
    if not current_user.is_authenticated:
        raise ConnectionRefusedError("sign in first")
    emit("welcome", {"user": current_user.username})


@socketio.on("join")
def on_join(request):
    """Join a room the page shows if this user may see it; a run room also gets missed lines.

    ``request`` is the room name, or ``{"room": "run:7", "after": 41}`` to be sent the log lines
    after sequence 41 — read after joining, so no line falls between the two.
    """
    room, after = (
        (request.get("room"), request.get("after"))
        if isinstance(request, dict)
        else (
            request,
            None,
        )
    )
    if not isinstance(room, str) or not ROOM_PATTERN.match(room):
        return {"ok": False, "error": "unknown room"}
    if room.startswith("user:"):  # the bell: a user may join their own room only
        return join_own_room(room)
    if not current_user.is_authenticated or not current_user.can(JOB_VIEW):
        return {"ok": False, "error": "forbidden"}
    if not may_see_room(current_user, room):
        return {"ok": False, "error": "not found"}  # as the pages answer: 404, not 403
    try:
        join_room(room_for(current_user, room) if room in LIST_ROOMS else room)
    except ValueError:  # the page went away before its join was handled
        return {"ok": False, "error": "disconnected"}
    if room.startswith("run:") and isinstance(after, int):
        run_id = int(room.split(":", 1)[1])
        with get_database().session_scope() as db:
            lines = db.execute(
                sa.select(LogLine.seq, LogLine.ts, LogLine.level, LogLine.message)
                .where(LogLine.run_id == run_id, LogLine.seq > after)
                .order_by(LogLine.seq)
                .limit(BACKLOG_LIMIT)
            ).all()
        if lines:
            emit("log", {"run": run_id, "html": render_log_lines(run_id, lines)})
    return {"ok": True, "room": room}


def may_see_room(user, room: str) -> bool:
    """May a user whose role is limited to some job tags watch this room? (Others: yes.)"""
    if restricted_tags(user) is None or room in LIST_ROOMS:
        return True  # a list room: limited roles join their own copy of it (room_for)
    kind, _, key = room.partition(":")
    with get_database().session_scope() as db:
        job_id = (
            db.scalar(sa.select(Run.job_id).where(Run.id == int(key))) if kind == "run" else key
        )
        return may_see_job(user, db.get(Job, job_id) if job_id else None)


def room_for(user, base: str) -> str:
    """The copy of a list room (``runs``, ``jobs``) this user joins: limited roles get one of
    their own (``runs:role:7``), fed only their jobs' items, so a shared push never names
    another team's job or run to them."""
    return base if restricted_tags(user) is None else f"{base}:role:{user.role_id}"


def rooms_for_jobs(db, job_ids, base: str) -> dict[str, list[str]]:
    """The job ids each copy of a list room gets: ``base`` all of them, every limited role's
    copy those it may see; copies that would get none are left out."""
    ids = list(dict.fromkeys(job_ids))
    tags = dict(db.execute(sa.select(Job.id, Job.tags).where(Job.id.in_(ids))).all())
    rooms = {base: ids} if ids else {}
    for role_id, allowed in db.execute(sa.select(Role.id, Role.job_tags)).all():  # a handful
        seen = [i for i in ids if allowed and set(tags.get(i) or ()) & set(allowed)]
        if seen:
            rooms[f"{base}:role:{role_id}"] = seen
    return rooms


def watched_list_room(base: str) -> bool:
    """Does a browser of this process watch the list room ``base`` or a limited role's copy?"""
    rooms = list(socketio.server.manager.rooms.get("/", {}).items())  # other threads join
    return any(
        sids and isinstance(name, str) and (name == base or name.startswith(f"{base}:role:"))
        for name, sids in rooms
    )


def join_own_room(room: str) -> dict:
    if not current_user.is_authenticated or room != f"user:{current_user.id}":
        return {"ok": False, "error": "forbidden"}
    try:
        join_room(room)
    except ValueError:
        return {"ok": False, "error": "disconnected"}
    return {"ok": True, "room": room}


def push_fragment(html: str, room: str) -> None:
    """Send a rendered fragment to every browser in ``room``; safe from any thread."""
    socketio.emit("fragment", html, to=room)


def render_log_lines(run_id: int, lines) -> str:
    return render_template("runs/_log_lines.html", run_id=run_id, lines=lines)


class RunEventPusher:
    """A push thread fed the ids of runs queued or changed (None stops it): the live history
    rows and the catalogue refreshes each implement ``_loop`` over ``self.events``."""

    thread_name = "live-push"

    def __init__(self, app: Flask):
        self.app = app
        self.database = get_database(app)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    def start(self) -> None:
        run_changed.connect(self.on_run_event, weak=False)
        run_queued.connect(self.on_run_event, weak=False)
        self.thread.start()

    def stop(self) -> None:
        run_changed.disconnect(self.on_run_event)
        run_queued.disconnect(self.on_run_event)
        self.events.put(None)
        self.thread.join(timeout=5)

    def on_run_event(self, run_id, **_kw) -> None:
        self.events.put(run_id)

    def _loop(self) -> None:
        raise NotImplementedError


class LivePusher:
    """Render engine events into fragments on threads of their own, never in the engine.

    Log lines go out on one thread, in the order they were written, with nothing queued before
    them; run changes are rendered on another, a burst for one run rendered once. Which
    buttons a run page shows depends on who looks, so those are re-fetched by each browser,
    and only when the run's state changed.
    """

    def __init__(self, app: Flask):
        self.app = app
        self.database = get_database(app)
        self.log_events: queue.SimpleQueue = queue.SimpleQueue()
        self.run_events: queue.SimpleQueue = queue.SimpleQueue()
        self.states: dict[int, str] = {}
        self.threads = [
            threading.Thread(target=self._log_loop, name="live-push-logs", daemon=True),
            threading.Thread(target=self._run_loop, name="live-push-runs", daemon=True),
        ]

    def start(self) -> None:
        run_changed.connect(self.on_run_changed, weak=False)
        log_appended.connect(self.on_log_appended, weak=False)
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        run_changed.disconnect(self.on_run_changed)
        log_appended.disconnect(self.on_log_appended)
        self.log_events.put(None)
        self.run_events.put(None)
        for thread in self.threads:
            thread.join(timeout=5)

    def on_run_changed(self, run_id, **_kw) -> None:
        self.run_events.put(run_id)

    def on_log_appended(self, run_id, lines=(), **_kw) -> None:
        self.log_events.put((run_id, lines))

    def _log_loop(self) -> None:
        while (event := self.log_events.get()) is not None:
            run_id, lines = event
            if not self._watched(run_id):
                continue  # nobody looks: a page that joins later reads them from the database
            try:
                with self.app.test_request_context("/"):
                    html = render_log_lines(run_id, lines)
                socketio.emit("log", {"run": run_id, "html": html}, to=f"run:{run_id}")
            except Exception:  # one bad render must not stop every later push
                log.exception("live push of log lines of run %s failed", run_id)

    def _run_loop(self) -> None:
        while True:
            batch = [self.run_events.get()]
            while not self.run_events.empty():
                batch.append(self.run_events.get())
            for run_id in dict.fromkeys(batch):  # each run once, in order of first change
                if run_id is None:
                    return
                if not self._watched(run_id):
                    self.states.pop(run_id, None)  # a page that joins later refetches it all
                    continue
                try:
                    with self.app.test_request_context("/"):
                        self._push_run(run_id)
                except Exception:
                    log.exception("live push of run %s failed", run_id)

    def _watched(self, run_id: int) -> bool:
        """Is a browser of this process on the run's page? Always yes with a message queue:
        the browsers of the other replicas are not known here."""
        if self.app.config["NOMAFLOW"].redis_url:
            return True
        return bool(socketio.server.manager.rooms.get("/", {}).get(f"run:{run_id}"))

    def _push_run(self, run_id: int) -> None:
        with self.database.session_scope() as db:
            view = load_run_view(db, run_id)
            if view is None:
                return
            state_changed = self.states.get(run_id) != view.run.state
            self.states[run_id] = view.run.state
            html = render_template(
                "runs/_live_update.html",
                run=view.run,
                step_runs=view.step_runs,
                triggered_by=view.triggered_by,
                refresh_actions=state_changed,
            )
        if view.run.state not in ("QUEUED", "RUNNING"):
            self.states.pop(run_id, None)
        push_fragment(html, f"run:{run_id}")


def start_live_push(app: Flask) -> None:
    """Render and push engine events for this app (process edge: serve, tests that watch)."""
    if app.extensions.get(PUSH_EXTENSION) is None:
        pusher = LivePusher(app)
        app.extensions[PUSH_EXTENSION] = pusher
        pusher.start()
    from app.live_catalogue import start_catalogue_push  # imports this module: import here
    from app.live_history import start_history_push

    start_history_push(app)
    start_catalogue_push(app)
    from app.web.notifications import start_bell_push  # the bell, to user:<id>

    start_bell_push(app)


def stop_live_push(app: Flask) -> None:
    pusher = app.extensions.pop(PUSH_EXTENSION, None)
    if pusher is not None:
        pusher.stop()
    from app.live_catalogue import stop_catalogue_push
    from app.live_history import stop_history_push

    stop_history_push(app)
    stop_catalogue_push(app)
    from app.web.notifications import stop_bell_push

    stop_bell_push(app)
