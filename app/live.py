"""Socket.IO: signed-in users only, authorised room joins, rendered fragments pushed out.

Pages join the rooms they show (``runs``, ``job:<id>``, ``run:<id>``); fragments are the same
Jinja partials the pages include, sent as HTML and swapped in by id (static/js/live.js).
"""

from __future__ import annotations

import re

from flask import Flask
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, emit, join_room

from app.permissions import JOB_VIEW

socketio = SocketIO()

ROOM_PATTERN = re.compile(r"^(runs|job:[A-Za-z0-9._-]{1,100}|run:\d{1,19})$")


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
def on_join(room):
    """Join a room the page shows, if this user may see it; answer with an ack."""
    if not isinstance(room, str) or not ROOM_PATTERN.match(room):
        return {"ok": False, "error": "unknown room"}
    if not current_user.is_authenticated or not current_user.can(JOB_VIEW):
        return {"ok": False, "error": "forbidden"}
    join_room(room)
    return {"ok": True, "room": room}


def push_fragment(html: str, room: str) -> None:
    """Send a rendered fragment to every browser in ``room``; safe from any thread."""
    socketio.emit("fragment", html, to=room)
