"""The Socket.IO channel: signed-in users only, authorised rooms, fragments reach the room."""

import re
from datetime import timedelta

from app.db import utcnow
from app.engine.signals import run_changed
from app.live import push_fragment, socketio, start_live_push, stop_live_push
from tests.engine_helpers import make_job
from tests.test_history import add_runs
from tests.test_roles import fragments_until


def test_anonymous_socket_is_refused(app):
    live = socketio.test_client(app, flask_test_client=app.test_client())
    assert not live.is_connected()


def test_signed_in_user_connects_and_joins_a_room(app, as_user):
    live = socketio.test_client(app, flask_test_client=as_user("vera"))
    assert live.is_connected()
    assert live.emit("join", "runs", callback=True) == {"ok": True, "room": "runs"}
    assert live.emit("join", "run:42", callback=True)["ok"] is True
    assert live.emit("join", "everything", callback=True) == {"ok": False, "error": "unknown room"}
    live.disconnect()


def test_a_fragment_reaches_only_the_room_it_is_for(app, as_user):
    watching = socketio.test_client(app, flask_test_client=as_user("vera"))
    elsewhere = socketio.test_client(app, flask_test_client=as_user("otto"))
    watching.emit("join", "run:7", callback=True)
    elsewhere.emit("join", "run:8", callback=True)
    watching.get_received()
    elsewhere.get_received()
    push_fragment('<span id="run-7-status" hx-swap-oob="true">RUNNING</span>', "run:7")
    received = watching.get_received()
    assert [m["args"][0] for m in received if m["name"] == "fragment"] == [
        '<span id="run-7-status" hx-swap-oob="true">RUNNING</span>'
    ]
    assert [m for m in elsewhere.get_received() if m["name"] == "fragment"] == []
    watching.disconnect()
    elsewhere.disconnect()


def test_a_pushed_run_header_and_the_history_say_when_in_relative_time(app, as_user):
    started = utcnow() - timedelta(minutes=3)
    make_job(app, "alpha")
    (run_id,) = add_runs(app, [{"state": "RUNNING", "queued_at": started, "started_at": started}])
    vera = as_user("vera")
    live = socketio.test_client(app, flask_test_client=vera)
    live.emit("join", f"run:{run_id}", callback=True)
    start_live_push(app)
    try:
        run_changed.send(run_id)
        header = fragments_until(live, f'id="run-{run_id}-header"')[-1]
    finally:
        stop_live_push(app)
        live.disconnect()
    relative = r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC" data-relative>'
    assert re.search(rf"<dt>Queued</dt><dd>{relative}3 min ago</time>", header)
    assert re.search(rf"<dt>Started</dt><dd>{relative}3 min ago</time>", header)
    row = vera.get("/runs").get_data(as_text=True).split(f'id="run-{run_id}-row"')[1]
    assert re.search(rf"<td>{relative}3 min ago</time></td>", row.split("</tr>")[0])
