"""Alerts with real delivery: an SMTP sink, a local HTTP server, in-app rows and the bell.

Jobs are saved through the real job format, runs go through dispatch and the runner, and the
assertions read what arrived at the receivers (emails, JSON bodies), the alert_events table and
the run's log — what an operator would look at.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from app.alerts.channels import save_channel
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from app.engine.service import start_runner, stop_runner
from app.jobs_io import export_jobs, import_jobs
from app.live import socketio, start_live_push, stop_live_push
from app.models import AlertEvent, Channel, Job, Notification, User
from tests.conftest import csrf_token
from tests.engine_helpers import log_messages, make_job, python_step, wait_for_run
from tests.http_test_server import HttpTestServer
from tests.server_process import free_port

BASE_URL = "http://nomaflow.example.org"
FAILING_CODE = """
for number in range(1, 26):
    ctx.log.info(f"line {number} <b>of</b> the load")
if ctx.params.get("fail", True):
    raise RuntimeError("disk full on /data")
"""


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def app(make_app):
    """An app whose watcher polls every second, retries after 1 s, and groups nothing (the
    personas' clients of ``as_user`` sign in to this app)."""
    return make_app(
        base_url=BASE_URL,
        alert_poll_seconds="1",
        alert_retry_seconds="1",
        alert_group_seconds="0",
    )


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


@pytest.fixture
def receiver():
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_sink():
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


def add_channel(app, name: str, kind: str, **values) -> None:
    with app.app_context(), get_database(app).session_scope() as db:
        save_channel(db, vault(app), name, kind, values)


def failing_job(app, job_id: str = "nightly", **alerts) -> None:
    params = [{"name": "fail", "type": "bool", "default": True}]
    make_job(app, job_id, [python_step("load", FAILING_CODE)], params=params, alerts=alerts)


def run(app, job_id: str, **params) -> dict:
    created = dispatch(get_database(app), vault(app), job_id, "manual", params or None)
    return wait_for_run(app, created.id)


def events(app, **filters) -> list[AlertEvent]:
    with get_database(app).session_scope() as db:
        query = sa.select(AlertEvent).filter_by(**filters).order_by(AlertEvent.id)
        found = list(db.scalars(query))
        db.expunge_all()
        return found


def wait_until(check, timeout: float = 15, what: str = "the alert"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not arrive"
        time.sleep(0.05)


def settled(app) -> list[AlertEvent]:
    """Every event once none is still waiting for (or in) its first delivery."""
    return wait_until(
        lambda: (found := events(app)) and all(e.state != "PENDING" for e in found) and found,
        what="delivery",
    )


def posted(receiver: HttpTestServer, path: str) -> list[dict]:
    return [json.loads(seen.body) for seen in receiver.requests_to(path)]


def test_failure_email_has_the_run_link_the_failing_step_and_the_last_lines(app, runner, smtp_sink):
    sink, port = smtp_sink
    with app.app_context(), get_database(app).session_scope() as db:
        from app.connectors.store import save_connector

        relay = {"host": "127.0.0.1", "port": port, "tls": "none", "sender": "nf@example.org"}
        save_connector(db, vault(app), "mail", "smtp", relay)
    add_channel(app, "ops-mail", "email", connector="mail", to=["ops@example.org"])
    failing_job(app, channels=["ops-mail"], on_failure=True)

    document = run(app, "nightly")

    assert document["state"] == "FAILED"
    (mail,) = wait_until(lambda: sink.messages, what="the email")
    assert mail["Subject"] == f"[Nomaflow] nightly: run #{document['id']} FAILED"
    assert mail["To"] == "ops@example.org" and mail["From"] == "nf@example.org"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    link = f"{BASE_URL}/runs/{document['id']}"
    assert link in text and f'href="{link}"' in html
    assert "Failing step: load (FAILED): RuntimeError: disk full on /data" in text
    assert "line 25 <b>of</b> the load" in text  # the last lines...
    assert "line 3 <b>" not in text  # ...and only the last 20
    assert "line 25 &lt;b&gt;of&lt;/b&gt; the load" in html and "<b>of</b>" not in html
    wait_until(lambda: log_messages(app, document["id"])[-1][2].startswith("alert"))
    assert log_messages(app, document["id"])[-1][2] == "alert failure sent to channel ops-mail"
    assert [(e.rule, e.channel, e.state) for e in events(app)] == [("failure", "ops-mail", "SENT")]


def test_slack_teams_and_webhook_receive_their_payloads_and_tags_route(app, runner, receiver):
    add_channel(app, "chat", "slack", url=f"{receiver.url}/echo/slack")
    add_channel(app, "teams", "teams", url=f"{receiver.url}/echo/teams")
    add_channel(
        app,
        "team-data-hook",
        "webhook",
        url=f"{receiver.url}/echo/hook",
        headers={"X-Hook-Token": "s3cret-hook"},
        tags=["team-data"],  # not named by the job: routed by its tag
    )
    params = [{"name": "fail", "type": "bool", "default": True}]
    alerts = {"channels": ["chat", "teams"], "on_failure": True}
    steps = [python_step("load", FAILING_CODE)]
    make_job(app, "nightly", steps, params=params, alerts=alerts, tags=["team-data"])

    document = run(app, "nightly")
    assert {e.state for e in settled(app)} == {"SENT"}

    (slack,) = posted(receiver, "/echo/slack")
    assert f"nightly: run #{document['id']} FAILED" in slack["text"]
    assert f"{BASE_URL}/runs/{document['id']}" in slack["blocks"][0]["text"]["text"]
    assert "disk full" in json.dumps(slack["blocks"])
    (teams,) = posted(receiver, "/echo/teams")
    assert teams["@type"] == "MessageCard"
    assert {"name": "State", "value": "FAILED"} in teams["sections"][0]["facts"]
    assert teams["potentialAction"][0]["targets"][0]["uri"].endswith(f"/runs/{document['id']}")
    (hook,) = posted(receiver, "/echo/hook")
    assert hook["job"] == "nightly" and hook["run_id"] == document["id"]
    assert (hook["state"], hook["rule"], hook["failing_step"]) == ("FAILED", "failure", "load")
    assert hook["error"] == "RuntimeError: disk full on /data"
    assert any(line.endswith("line 25 <b>of</b> the load") for line in hook["last_lines"])
    assert len(hook["last_lines"]) == 20
    assert receiver.requests_to("/echo/hook")[0].headers["X-Hook-Token"] == "s3cret-hook"


def test_three_failures_in_a_row_alert_once_and_the_next_success_recovers(app, runner, receiver):
    add_channel(app, "hook", "webhook", url=f"{receiver.url}/echo/hook")
    failing_job(app, channels=["hook"], after_failures=3, on_recovery=True)

    runs = [run(app, "nightly") for _ in range(4)]
    recovered = run(app, "nightly", fail=False)  # ends the streak: success
    assert [r["state"] for r in runs] == ["FAILED"] * 4
    assert recovered["state"] == "SUCCEEDED"
    wait_until(lambda: len(posted(receiver, "/echo/hook")) == 2)

    received = [(p["rule"], p["run_id"]) for p in posted(receiver, "/echo/hook")]
    assert received == [("failure", runs[2]["id"]), ("recovery", recovered["id"])]
    assert posted(receiver, "/echo/hook")[1]["reason"] == "succeeded after 4 failures in a row"
    run(app, "nightly", fail=False)  # a second success is no recovery
    # after-run hooks run in order on one thread: once a later run's alert is in, so is any
    make_job(app, "marker", alerts={"channels": ["hook"], "on_success": True})
    run(app, "marker")
    wait_until(lambda: len(posted(receiver, "/echo/hook")) == 3)
    assert [p["job"] for p in posted(receiver, "/echo/hook")] == ["nightly", "nightly", "marker"]


def test_a_too_fast_success_and_a_long_run_alert_while_it_still_runs(app, runner, receiver):
    add_channel(app, "hook", "webhook", url=f"{receiver.url}/echo/hook")
    make_job(app, "quick", alerts={"channels": ["hook"], "min_duration_seconds": 60})
    slow = python_step("wait", "import time\nwhile not ctx.is_cancelled():\n    time.sleep(0.05)")
    # 0.02 minutes = 1.2 s: the real setting, in a fraction of a minute
    make_job(app, "slow", [slow], alerts={"channels": ["hook"], "long_run_minutes": 0.02})

    quick = run(app, "quick")
    slow_run = dispatch(get_database(app), vault(app), "slow", "manual", None)
    alerts = wait_until(
        lambda: len(posted(receiver, "/echo/hook")) == 2 and posted(receiver, "/echo/hook")
    )
    by_rule = {a["rule"]: a for a in alerts}
    assert by_rule["too_fast"]["run_id"] == quick["id"]
    assert "under the minimum of 60s" in by_rule["too_fast"]["reason"]
    assert by_rule["long_run"]["run_id"] == slow_run.id
    assert by_rule["long_run"]["state"] == "RUNNING"  # told while it still runs
    assert by_rule["long_run"]["reason"] == "running for more than 1 seconds"
    time.sleep(1.5)  # two more watcher rounds: still one long-run alert for this run
    assert len(events(app, run_id=slow_run.id, rule="long_run")) == 1
    from app.engine.dispatch import request_abort

    request_abort(get_database(app), slow_run.id)
    assert wait_for_run(app, slow_run.id)["state"] == "CANCELED"


def test_a_failed_delivery_is_logged_on_the_run_retried_and_never_changes_it(app, runner):
    closed = free_port()  # nothing listens there
    add_channel(app, "dead-hook", "webhook", url=f"http://127.0.0.1:{closed}/hook")
    failing_job(app, channels=["dead-hook"], on_failure=True)

    document = run(app, "nightly")

    def warnings():
        lines = log_messages(app, document["id"])
        return [message for _, level, message in lines if level == "WARNING"]

    wait_until(lambda: len(warnings()) >= 2, what="a retry")
    assert warnings()[0].startswith(
        "alert failure to channel dead-hook failed (attempt 1/5, retrying in 1s): POST to "
    )
    assert "(attempt 2/5, retrying in 2s)" in warnings()[1]
    (event,) = events(app)
    assert event.state == "FAILED" and event.attempts == 2 and event.next_attempt_at is not None
    assert "ConnectionError" in event.error and f"127.0.0.1:{closed}" in event.error
    assert wait_for_run(app, document["id"])["state"] == "FAILED"  # the run is as it ended


def test_repeats_within_the_window_are_grouped_counted_and_told_when_the_window_closes(
    make_app, receiver
):
    app = make_app(base_url=BASE_URL, alert_group_seconds="600", alert_poll_seconds="1")
    start_runner(app)
    try:
        add_channel(app, "hook", "webhook", url=f"{receiver.url}/echo/hook")
        failing_job(app, channels=["hook"], on_failure=True)
        for _ in range(3):
            run(app, "nightly")
        wait_until(lambda: len(events(app)) == 3)  # the third run's hook has recorded it
        assert [e.state for e in settled(app)] == ["SENT", "GROUPED", "GROUPED"]
        assert len(posted(receiver, "/echo/hook")) == 1
        with get_database(app).session_scope() as db:  # ten minutes pass (the watcher is slow)
            for event in db.scalars(sa.select(AlertEvent)):
                event.created_at -= timedelta(minutes=11)
                if event.sent_at is not None:
                    event.sent_at -= timedelta(minutes=11)
        fourth = run(app, "nightly")
        wait_until(lambda: len(posted(receiver, "/echo/hook")) == 2)
        last = posted(receiver, "/echo/hook")[-1]
        assert last["run_id"] == fourth["id"] and last["grouped"] == 2
        assert "(+2 similar since " in last["title"]

        fifth, sixth = run(app, "nightly"), run(app, "nightly")  # held back again...
        wait_until(lambda: len(events(app)) == 6)
        assert [e.state for e in events(app)][-2:] == ["GROUPED", "GROUPED"]
        with get_database(app).session_scope() as db:  # ...and their window closes, quietly
            for event in db.scalars(sa.select(AlertEvent)):
                event.created_at -= timedelta(minutes=11)
                if event.sent_at is not None:
                    event.sent_at -= timedelta(minutes=11)
                if event.next_attempt_at is not None:
                    event.next_attempt_at -= timedelta(minutes=11)
        wait_until(lambda: len(posted(receiver, "/echo/hook")) == 3, what="the digest")
        digest = posted(receiver, "/echo/hook")[-1]  # the last held, counting the one before
        assert digest["run_id"] == sixth["id"] and digest["grouped"] == 1
        assert "(+1 similar since " in digest["title"] and fifth["id"] < sixth["id"]
        assert [e.state for e in settled(app)][-2:] == ["GROUPED", "SENT"]

        run(app, "nightly")  # the digest just went out: its window starts now, not 11 min ago
        wait_until(lambda: len(events(app)) == 7)
        assert events(app)[-1].state == "GROUPED"
        assert len(posted(receiver, "/echo/hook")) == 3
    finally:
        stop_runner(app)


def test_a_new_failure_streak_is_told_even_within_the_grouping_window(make_app, receiver):
    app = make_app(base_url=BASE_URL, alert_group_seconds="600")
    start_runner(app)
    try:
        add_channel(app, "hook", "webhook", url=f"{receiver.url}/echo/hook")
        failing_job(app, channels=["hook"], after_failures=3, on_recovery=True)
        outcomes = [True, True, True, False, True, True, True]  # F F F S F F F
        runs = [run(app, "nightly", fail=fail) for fail in outcomes]
        wait_until(lambda: len(events(app)) == 3)
        assert [e.state for e in settled(app)] == ["SENT"] * 3
        received = [(p["rule"], p["run_id"]) for p in posted(receiver, "/echo/hook")]
        assert received == [
            ("failure", runs[2]["id"]),
            ("recovery", runs[3]["id"]),
            ("failure", runs[6]["id"]),  # failing again: said at once, not held back
        ]
    finally:
        stop_runner(app)


def test_in_app_alerts_reach_only_users_whose_role_may_see_the_job(app, runner, as_user):
    from app.models import Role
    from tests.conftest import PASSWORD_HASH

    with get_database(app).session_scope() as db:  # operators work on team-data jobs only
        db.scalar(sa.select(Role).where(Role.name == "operator")).job_tags = ["team-data"]
        mailroom = Role(name="mailroom", permissions=["connector:view"])  # sees no job at all
        db.add(User(username="mo", role=mailroom, password_hash=PASSWORD_HASH))
    add_channel(app, "bell", "in_app", roles=["operator", "admin", "mailroom"])
    steps = [python_step("load", FAILING_CODE)]
    alerts = {"channels": ["bell"], "on_failure": True}
    make_job(app, "team-job", steps, alerts=alerts, tags=["team-data"])
    make_job(app, "finance-job", steps, alerts=alerts, tags=["finance"])

    ours, theirs = run(app, "team-job"), run(app, "finance-job")
    wait_until(lambda: len(events(app)) == 2)
    assert {e.state for e in settled(app)} == {"SENT"}
    with get_database(app).session_scope() as db:
        notified = db.execute(
            sa.select(Notification.run_id, User.username).join(User).order_by(Notification.id)
        ).all()
    assert sorted(notified) == sorted(
        [(ours["id"], "ada"), (ours["id"], "otto"), (theirs["id"], "ada")]
    )  # mo's role lacks job:view: no run of any job reaches mo

    ada = as_user("ada")  # nor does the channel's test alert
    headers = {"X-CSRFToken": csrf_token(ada, "/settings/channels")}
    answer = ada.post("/settings/channels/bell/test", headers=headers).get_data(as_text=True)
    assert "notified 2 user(s)" in answer
    with get_database(app).session_scope() as db:
        tested = db.scalars(
            sa.select(User.username).join(Notification).where(Notification.run_id.is_(None))
        ).all()
    assert sorted(tested) == ["ada", "otto"]


HOSTILE_CODE = """
ctx.log.info("<!channel> look <b>x</b> & <https://evil.example|Open run>")
ctx.log.info("[Reset your password](https://evil.example) *now* _or_ `never` ~ok~")
raise RuntimeError("<!channel> <b>x</b> & <https://evil.example|Open run> [Log in](https://x.example)")
"""


def test_slack_and_teams_show_run_text_as_text(app, runner, receiver):
    add_channel(app, "chat", "slack", url=f"{receiver.url}/echo/slack")
    add_channel(app, "teams", "teams", url=f"{receiver.url}/echo/teams")
    subject = "{{ job.id }} *failed*: [Reset your password](https://evil.example)"
    alerts = {"channels": ["chat", "teams"], "on_failure": True, "subject": subject}
    make_job(app, "nightly", [python_step("load", HOSTILE_CODE)], alerts=alerts)

    document = run(app, "nightly")
    assert {e.state for e in settled(app)} == {"SENT"}

    (slack,) = posted(receiver, "/echo/slack")
    blocks = json.dumps(slack["blocks"])
    assert "<!channel>" not in blocks and "<https://evil" not in blocks and "<b>" not in blocks
    assert "&lt;!channel&gt; &lt;b&gt;x&lt;/b&gt; &amp; &lt;https://evil.example|Open run&gt;" in (
        blocks
    )
    assert f"<{BASE_URL}/runs/{document['id']}|" in slack["blocks"][0]["text"]["text"]  # ours
    (teams,) = posted(receiver, "/echo/teams")
    section = teams["sections"][0]
    assert "<b>" not in json.dumps(teams) and section["text"].startswith("<pre>")
    assert (
        "look &lt;b&gt;x&lt;/b&gt; &amp; &lt;https://evil.example|Open run&gt;" in (section["text"])
    )
    failing = next(f["value"] for f in section["facts"] if f["name"] == "Failing step")
    assert failing == "load: RuntimeError: &lt;!channel&gt; &lt;b&gt;x&lt;/b&gt; &amp; " + (
        "&lt;https://evil.example|Open run&gt; [Log in](https://x.example)"
    )
    # the section renders no Markdown, so its text shows as written; the card title (always
    # Markdown) has every sign backslashed: no link or emphasis is left to render anywhere
    assert section["markdown"] is False
    assert "[Reset your password](https://evil.example) *now* _or_ `never` ~ok~" in section["text"]
    assert section["activityTitle"] == (
        "nightly *failed*: [Reset your password](https://evil.example)"
    )
    assert teams["title"] == (
        "\\[Nomaflow\\] nightly \\*failed\\*: \\[Reset your password\\](https://evil.example)"
    )


def test_slack_keeps_the_end_of_one_long_last_log_line(app, runner, receiver):
    from app.engine.dispatch import request_abort

    add_channel(app, "chat", "slack", url=f"{receiver.url}/echo/slack")
    code = (  # one JSON document of 5,000 characters, the last line while the run goes on
        'ctx.log.info("{" + "a" * 4990 + "[end]}")\n'
        "import time\nwhile not ctx.is_cancelled():\n    time.sleep(0.05)"
    )
    alerts = {"channels": ["chat"], "long_run_minutes": 0.01}  # told after 0.6 s
    make_job(app, "dump", [python_step("load", code)], alerts=alerts)

    started = dispatch(get_database(app), vault(app), "dump", "manual", None)
    (slack,) = wait_until(lambda: posted(receiver, "/echo/slack"))
    request_abort(get_database(app), started.id)
    assert wait_for_run(app, started.id)["state"] == "CANCELED"
    tail = slack["blocks"][-1]["text"]["text"]
    assert tail.startswith("```a") and tail.endswith("a[end]}```")
    assert 2800 < len(tail) <= 3000


def test_an_email_subject_is_one_line_however_the_template_breaks_it(app, runner, smtp_sink):
    sink, port = smtp_sink
    with app.app_context(), get_database(app).session_scope() as db:
        from app.connectors.store import save_connector

        relay = {"host": "127.0.0.1", "port": port, "tls": "none", "sender": "nf@example.org"}
        save_connector(db, vault(app), "mail", "smtp", relay)
    add_channel(app, "ops-mail", "email", connector="mail", to=["ops@example.org"])
    subject = "{{ job.id }}\n  failed:\r\n\t{{ run.state }} " + "z" * 300
    failing_job(app, channels=["ops-mail"], on_failure=True, subject=subject)

    run(app, "nightly")

    assert [e.state for e in settled(app)] == ["SENT"]
    (mail,) = wait_until(lambda: sink.messages, what="the email")
    assert mail["Subject"].startswith("[Nomaflow] nightly failed: FAILED zzz")
    assert len(mail["Subject"]) == 200 and mail["Subject"].endswith("z…")


def test_the_api_refuses_a_job_naming_an_alert_channel_that_does_not_exist(app):
    from app.tokens import create_token

    with get_database(app).session_scope() as db:
        ada = db.scalar(sa.select(User).where(User.username == "ada"))
        headers = {"Authorization": f"Bearer {create_token(db, ada, 'tests').secret}"}
    add_channel(app, "hook", "webhook", url="https://hooks.example.org/x")
    job = {"id": "nightly", "steps": [python_step("load", "ctx.log.info('hi')")]}
    api = app.test_client()
    body = {**job, "alerts": {"channels": ["hook", "nope"]}}
    refused = api.post("/api/v1/jobs", json=body, headers=headers)
    assert refused.status_code == 422
    assert refused.get_json()["fields"]["alerts.channels"] == "no channel named 'nope'"
    body = {**job, "alerts": {"channels": ["hook"]}}
    assert api.post("/api/v1/jobs", json=body, headers=headers).status_code == 201


def test_an_in_app_channel_notifies_the_users_of_its_roles_live(app, runner, as_user):
    add_channel(app, "bell", "in_app", roles=["operator", "admin"])
    failing_job(app, channels=["bell"], on_failure=True)
    otto = as_user("otto")
    with get_database(app).session_scope() as db:
        ids = dict(db.execute(sa.select(User.username, User.id)).all())
    live = socketio.test_client(app, flask_test_client=otto)
    assert live.emit("join", f"user:{ids['otto']}", callback=True)["ok"]
    assert not live.emit("join", f"user:{ids['ada']}", callback=True)["ok"]  # not someone else's
    start_live_push(app)
    try:
        document = run(app, "nightly")
        pushed = wait_for_fragment(live, 'id="notification-bell"')
        assert 'hx-swap-oob="true"' in pushed and 'aria-label="Notifications: 1 unread"' in pushed
    finally:
        stop_live_push(app)
        live.disconnect()
    with get_database(app).session_scope() as db:
        notified = db.execute(
            sa.select(User.username, Notification.run_id).join(User).order_by(User.username)
        ).all()
    assert notified == [("ada", document["id"]), ("otto", document["id"])]
    page = otto.get("/notifications").get_data(as_text=True)
    assert f"nightly: run #{document['id']} FAILED" in page
    assert 'aria-label="Notifications: 1 unread"' in otto.get("/jobs").get_data(as_text=True)
    with get_database(app).session_scope() as db:
        mine = db.scalar(sa.select(Notification.id).where(Notification.user_id == ids["otto"]))
        adas = db.scalar(sa.select(Notification.id).where(Notification.user_id == ids["ada"]))
    token = csrf_token(otto, "/notifications")
    headers = {"X-CSRFToken": token, "HX-Request": "true"}
    assert otto.post(f"/notifications/{adas}/read", headers=headers).status_code == 404
    answer = otto.post(f"/notifications/{mine}/read", headers=headers).get_data(as_text=True)
    assert 'aria-label="Notifications: 0 unread"' in answer
    assert "Notifications: 0 unread" in otto.get("/jobs").get_data(as_text=True)
    assert "Notifications: 1 unread" in as_user("ada").get("/jobs").get_data(as_text=True)


def wait_for_fragment(live, marker: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in live.get_received():
            if message["name"] == "fragment" and marker in message["args"][0]:
                return message["args"][0]
        time.sleep(0.05)
    raise AssertionError(f"no fragment with {marker}")


def test_channels_are_managed_in_settings_with_write_only_secrets_and_send_test(
    app, as_user, receiver
):
    assert as_user("eddie").get("/settings/channels").status_code == 403
    ada = as_user("ada")
    chooser = ada.get("/settings/channels/new")  # no kind yet: choose it on the list page
    assert chooser.status_code == 302
    assert chooser.location.endswith("/settings/channels#channel-new")
    token = csrf_token(ada, "/settings/channels/new?kind=webhook")
    secret_url = f"{receiver.url}/echo/team?key=hunter2-webhook"
    form = {"csrf_token": token, "kind": "webhook", "name": "team", "url": secret_url}
    form["headers"] = "X-Team: data"
    assert ada.post("/settings/channels/new", data=form).status_code == 302
    listing = ada.get("/settings/channels").get_data(as_text=True)
    assert "team" in listing and "hunter2" not in listing
    edit_page = ada.get("/settings/channels/team/edit").get_data(as_text=True)
    assert "hunter2" not in edit_page and "set — leave empty to keep" in edit_page
    form = {"csrf_token": token, "kind": "webhook", "name": "team", "url": "", "tags": "etl"}
    assert ada.post("/settings/channels/team/edit", data=form).status_code == 302  # URL kept
    with get_database(app).session_scope() as db:
        stored = db.scalar(sa.select(Channel).where(Channel.name == "team"))
        assert stored.config == {"tags": ["etl"]} and "hunter2" not in stored.secrets_sealed

    result = ada.post("/settings/channels/team/test", headers={"X-CSRFToken": token})
    assert "✔ team: test alert sent through webhook" in result.get_data(as_text=True)
    (test_alert,) = posted(receiver, "/echo/team")
    assert test_alert["rule"] == "test" and test_alert["url"] == BASE_URL
    assert receiver.requests_to("/echo/team")[0].headers["X-Team"] == "data"

    bad = {"csrf_token": token, "kind": "slack", "name": "chat", "url": "ftp://nope"}
    page = ada.post("/settings/channels/new", data=bad)
    assert page.status_code == 422
    assert "expected an http:// or https:// URL" in page.get_data(as_text=True)

    make_job(app, "nightly")  # the job editor offers the channel and saves the alerts
    editor = ada.get("/jobs/nightly/edit").get_data(as_text=True)
    assert 'name="alerts_channel.team"' in editor
    from app.job_forms import job_to_form
    from app.jobspec import job_definition

    with get_database(app).session_scope() as db:
        fields = job_to_form(job_definition(db.get(Job, "nightly")))
    fields |= {"csrf_token": token, "op": "save", "alerts_channel.team": "true"}
    fields |= {"alerts_after_failures": "3", "alerts_on_recovery": "true"}
    fields["alerts_long_run_minutes"] = "soon"
    refused = ada.post("/jobs/nightly/edit", data=fields)
    assert refused.status_code == 422
    assert 'id="job-alerts-long-run-minutes-error" role="alert">expected a number &gt; 0, got ' in (
        refused.get_data(as_text=True)
    )
    fields["alerts_long_run_minutes"] = "1.5"
    assert ada.post("/jobs/nightly/edit", data=fields).status_code == 302
    with get_database(app).session_scope() as db:
        assert db.get(Job, "nightly").alerts == {
            "channels": ["team"],
            "on_recovery": True,
            "after_failures": 3,
            "long_run_minutes": 1.5,
        }
    confirm = ada.get("/settings/channels/team/delete").get_data(as_text=True)
    assert "The alerts of nightly name" in confirm
    assert ada.post("/settings/channels/team/delete", data={"csrf_token": token}).status_code == 302
    assert "No channels yet" in ada.get("/settings/channels").get_data(as_text=True)
    stale = ada.post("/jobs/nightly/edit", data=fields)  # the form still ticks the deleted one
    assert stale.status_code == 422
    assert 'id="job-alerts-channels-error" role="alert">no channel named &#39;team&#39;<' in (
        stale.get_data(as_text=True)
    )


CHANNELS_FILE = """
[[connectors]]
name = "mail"
kind = "smtp"
host = "smtp.example.org"
sender = "nomaflow@example.org"

[[channels]]
name = "ops-mail"
kind = "email"
connector = "mail"
to = ["ops@example.org"]

[[channels]]
name = "ops-chat"
kind = "webhook"
url = "https://hooks.example.org/T0/secret-path"
headers = { Authorization = "Bearer chat-token-1" }
tags = ["team-data"]

[[jobs]]
id = "nightly"
tags = ["team-data"]
[jobs.alerts]
channels = ["ops-mail"]
after_failures = 3
on_recovery = true
long_run_minutes = 30
min_duration_seconds = 2
on_missed = true
subject = "{{ job.id }} is {{ run.state }}"
[[jobs.steps]]
name = "hello"
type = "python"
code = "ctx.log.info('hi')"
"""


def test_channels_and_alerts_travel_in_the_jobs_toml_with_secrets_sealed(app):
    with app.app_context(), get_database(app).session_scope() as db:
        result = import_jobs(db, CHANNELS_FILE)
    assert result.errors == []
    assert result.outcomes == {
        "connector mail": "created",
        "channel ops-mail": "created",
        "channel ops-chat": "created",
        "nightly": "created",
    }
    with app.app_context(), get_database(app).session_scope() as db:
        chat = db.scalar(sa.select(Channel).where(Channel.name == "ops-chat"))
        assert chat.config == {"tags": ["team-data"]}
        assert "secret-path" not in chat.secrets_sealed
        exported = export_jobs(db)
    assert "secret-path" not in exported and "chat-token-1" not in exported
    assert 'url = "enc:' in exported and 'headers = "enc:' in exported
    assert 'subject = "{{ job.id }} is {{ run.state }}"' in exported
    with app.app_context(), get_database(app).session_scope() as db:
        again = import_jobs(db, exported)
    assert again.errors == [] and set(again.outcomes.values()) == {"unchanged"}

    broken = CHANNELS_FILE.replace('connector = "mail"', 'connector = "nope"').replace(
        'kind = "webhook"', 'kind = "pager"'
    )
    with app.app_context(), get_database(app).session_scope() as db:
        refused = import_jobs(db, broken)
    assert refused.errors == [
        "channels[0] ops-mail › connector: no smtp connector named 'nope'",
        "channels[1] ops-chat › kind: unknown channel kind 'pager' (known: email, slack, teams, "
        "webhook, in_app)",
    ]
