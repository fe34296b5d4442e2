"""The Socket.IO channel: signed-in users only, authorised rooms, fragments reach the room."""

from app.live import push_fragment, socketio


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
