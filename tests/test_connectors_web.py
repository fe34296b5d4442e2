"""Connectors pages: who may do what, forms drawn from the kinds, write-only secrets, Test."""

import re
import socket
import threading
import time

import pytest
import sqlalchemy as sa

from app.connectors import CONNECTOR_KINDS
from app.connectors.store import load_connector, save_connector
from app.crypto import SecretsVault, vault
from app.db import get_database
from app.models import AuditEvent, Connector
from tests.conftest import csrf_token
from tests.engine_helpers import make_job

SECRET = "Pa55-w0rd_never-shown"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_sink():
    """A real SMTP server (aiosmtpd) on a free local port that accepts and drops mail."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port
    controller.stop()


def connector_row(app, name):
    with get_database(app).session_scope() as db_session:
        return db_session.scalar(sa.select(Connector).where(Connector.name == name))


def stored_values(app, name) -> dict:
    with app.app_context(), get_database(app).session_scope() as db_session:
        return load_connector(db_session, vault(app), name).values


def add_connector(app, name, kind, values, description=""):
    with get_database(app).session_scope() as db_session:
        save_connector(db_session, vault(app), name, kind, values, description=description)


def post(client, path, data, hx=False):
    headers = {"HX-Request": "true"} if hx else {}
    token = csrf_token(client, "/connectors")
    return client.post(path, data={**data, "csrf_token": token}, headers=headers)


def sqlite_form(name, path, **extra):
    return {"kind": "sql", "name": name, "url": f"sqlite:///{path}", **extra}


def test_viewer_is_refused_everything_and_an_operator_only_reads(app, as_user):
    add_connector(app, "ops", "sql", {"url": "sqlite:///ops.db"}, "Operations")
    vera, otto = as_user("vera"), as_user("otto")
    for path in ("/connectors", "/connectors/new", "/connectors/ops/edit"):
        assert vera.get(path).status_code == 403

    page = otto.get("/connectors")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<code>ops</code>" in html and "Operations" in html
    assert 'id="connector-default"' in html and "built in, read-only" in html
    assert "New connector" not in html and "Edit ops" not in html
    for path in ("/connectors/new", "/connectors/new?kind=sql", "/connectors/ops/edit"):
        assert otto.get(path).status_code == 403
    token, vera_token = csrf_token(otto, "/connectors"), csrf_token(vera, "/jobs")
    posts = {
        "/connectors/new": sqlite_form("mine", "mine.db"),
        "/connectors/ops/edit": {"url": "sqlite:///other.db"},
        "/connectors/ops/delete": {},
        "/connectors/ops/test": {},
        "/connectors/test": sqlite_form("mine", "mine.db"),
    }
    for path, data in posts.items():
        assert otto.post(path, data={**data, "csrf_token": token}).status_code == 403, path
        assert vera.post(path, data={**data, "csrf_token": vera_token}).status_code == 403, path
    assert connector_row(app, "mine") is None
    assert connector_row(app, "ops").config == {"url": "sqlite:///ops.db"}


def test_a_post_without_the_csrf_token_is_refused(app, as_user):
    eddie = as_user("eddie")
    response = eddie.post("/connectors/new", data=sqlite_form("ops", "ops.db"))
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert connector_row(app, "ops") is None


def test_every_kind_draws_its_form_from_its_fields(as_user):
    eddie = as_user("eddie")
    choose = eddie.get("/connectors/new").get_data(as_text=True)
    for kind in CONNECTOR_KINDS.values():
        assert f'href="/connectors/new?kind={kind.kind}"' in choose
        page = eddie.get(f"/connectors/new?kind={kind.kind}").get_data(as_text=True)
        for field in kind.fields:
            assert f'id="connector-{field.name}"' in page, (kind.kind, field.name)
            if field.secret:
                assert re.search(
                    rf'type="password" id="connector-{field.name}" [^>]*value=""', page
                )
    http = eddie.get("/connectors/new?kind=http").get_data(as_text=True)
    assert '<textarea id="connector-headers"' in http  # a table: name=value lines
    assert '<select id="connector-auth"' in http and '<option value="none" selected>' in http
    assert 'id="connector-verify_tls" name="verify_tls" value="true" checked' in http
    assert 'type="number" id="connector-timeout_seconds"' in http
    assert eddie.get("/connectors/new?kind=ftp").status_code == 404


def test_an_editor_creates_a_connector_and_the_audit_log_says_who(app, as_user, tmp_path):
    eddie = as_user("eddie")
    form = sqlite_form(
        "warehouse", tmp_path / "w.db", password=SECRET, pool_size="3", description="DWH"
    )
    response = post(eddie, "/connectors/new", form)
    assert response.status_code == 302
    page = eddie.get("/connectors").get_data(as_text=True)
    assert "Connector warehouse created." in page
    assert "<code>warehouse</code>" in page and "DWH" in page and "SQL database" in page

    row = connector_row(app, "warehouse")
    assert row.config == {"url": f"sqlite:///{tmp_path / 'w.db'}", "pool_size": 3}
    assert SECRET not in row.secrets_sealed and SECRET not in str(row.config)
    assert stored_values(app, "warehouse")["password"] == SECRET
    with get_database(app).session_scope() as db_session:
        event = db_session.scalar(sa.select(AuditEvent).where(AuditEvent.action.like("connector%")))
        assert (event.action, event.username, event.target_id) == (
            "connector.create",
            "eddie",
            "warehouse",
        )
        assert event.detail == {"kind": "sql", "secrets_changed": ["password"]}
        assert event.ip == "127.0.0.1"


def test_problems_are_shown_next_to_their_fields_with_422(app, as_user):
    eddie = as_user("eddie")
    form = {"kind": "sql", "name": "bad name", "url": "nosuchdb://x", "pool_size": "many"}
    response = post(eddie, "/connectors/new", {**form, "password": SECRET})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="connector-pool_size-error">expected a whole number<' in page
    assert 'value="bad name"' in page  # what was typed comes back, except the secret
    assert SECRET not in page

    response = post(eddie, "/connectors/new", {**form, "pool_size": "2"})
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="connector-name-error">use letters, digits, dots, dashes, underscores<' in page
    assert 'aria-invalid="true" aria-describedby="connector-name-error"' in page

    response = post(eddie, "/connectors/new", {**form, "name": "ok", "pool_size": "2"})
    assert response.status_code == 422
    assert 'id="connector-url-error">not a usable database URL' in response.get_data(as_text=True)
    with get_database(app).session_scope() as db_session:
        assert db_session.scalar(sa.select(sa.func.count()).select_from(Connector)) == 0


def test_a_secret_appears_in_no_response_and_empty_keeps_it(app, as_user, tmp_path):
    eddie = as_user("eddie")
    responses = [post(eddie, "/connectors/new", sqlite_form("ops", tmp_path / "a.db"))]
    add_connector(app, "mail", "smtp", {"host": "h", "sender": "n@x.org", "username": "u"})
    responses.append(
        post(
            eddie,
            "/connectors/mail/edit",
            {
                "host": "h",
                "sender": "n@x.org",
                "username": "u",
                "password": SECRET,
                "tls": "none",
                "port": "25",
            },
        )
    )
    responses += [
        eddie.get("/connectors"),
        eddie.get("/connectors/mail/edit"),
        post(eddie, "/connectors/mail/edit", {"host": "", "sender": "n@x.org", "username": "u"}),
        post(
            eddie,
            "/connectors/test",
            {
                "kind": "smtp",
                "original": "mail",
                "host": "127.0.0.1",
                "port": str(free_port()),
                "tls": "none",
                "sender": "n@x.org",
                "username": "u",
                "timeout_seconds": "2",
            },
            hx=True,
        ),
        post(eddie, "/connectors/mail/test", {}, hx=True),
        eddie.get("/connectors/mail/delete"),
    ]
    for response in responses:
        assert response.status_code in (200, 302, 422)
        assert SECRET not in response.get_data(as_text=True)

    edit = eddie.get("/connectors/mail/edit").get_data(as_text=True)
    assert 'id="connector-password-status">set — leave empty to keep<' in edit
    assert 'name="clear" value="password"' in edit
    assert 'value="u"' in edit  # plain values are shown
    keep = {"host": "h", "sender": "n@x.org", "username": "u", "password": "", "tls": "none"}
    assert post(eddie, "/connectors/mail/edit", keep).status_code == 302
    assert stored_values(app, "mail")["password"] == SECRET

    assert post(eddie, "/connectors/mail/edit", {**keep, "clear": "password"}).status_code == 302
    assert "password" not in stored_values(app, "mail")
    edit = eddie.get("/connectors/mail/edit").get_data(as_text=True)
    assert 'id="connector-password-status">not set<' in edit
    with get_database(app).session_scope() as db_session:
        events = db_session.scalars(
            sa.select(AuditEvent).where(AuditEvent.target_id == "mail").order_by(AuditEvent.id)
        ).all()
        assert [(e.action, e.detail["secrets_changed"]) for e in events] == [
            ("connector.create", []),  # added by the test itself, without a secret
            ("connector.update", ["password"]),
            ("connector.update", []),  # the password left empty: kept (port and tls went)
            ("connector.update", ["password"]),
        ]
        assert {e.username for e in events[1:]} == {"eddie"}


def test_test_connection_says_what_worked_or_the_exact_error(app, as_user, tmp_path):
    eddie = as_user("eddie")
    add_connector(app, "good", "sql", {"url": f"sqlite:///{tmp_path / 'good.db'}"})
    add_connector(app, "bad", "sql", {"url": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    good, bad = connector_row(app, "good"), connector_row(app, "bad")

    response = post(eddie, "/connectors/good/test", {}, hx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert html.startswith(f'<div id="connector-{good.id}-test"')
    assert "✔ good: connected: SQLite 3." in html

    html = post(eddie, "/connectors/bad/test", {}, hx=True).get_data(as_text=True)
    assert f'<div id="connector-{bad.id}-test"' in html
    assert "✘ bad: unable to open database file" in html

    html = post(eddie, "/connectors/default/test", {}, hx=True).get_data(as_text=True)
    assert 'id="connector-default-test"' in html and "✔ default: connected: SQLite" in html

    # the form's own values, before saving
    form = sqlite_form("draft", tmp_path / "draft.db")
    html = post(eddie, "/connectors/test", form, hx=True).get_data(as_text=True)
    assert 'id="connector-test"' in html and "✔ draft: connected: SQLite" in html
    html = post(eddie, "/connectors/test", {**form, "url": ""}, hx=True).get_data(as_text=True)
    assert "not tested: fix the form first (url: required)" in html
    assert connector_row(app, "draft") is None


def test_smtp_test_connection_against_a_real_server(app, as_user, smtp_sink):
    eddie = as_user("eddie")
    add_connector(
        app,
        "relay",
        "smtp",
        {"host": "127.0.0.1", "port": smtp_sink, "tls": "none", "sender": "nomaflow@example.org"},
    )
    add_connector(
        app,
        "closed",
        "smtp",
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": "none",
            "sender": "nomaflow@example.org",
            "timeout_seconds": 2,
        },
    )
    html = post(eddie, "/connectors/relay/test", {}, hx=True).get_data(as_text=True)
    assert f"✔ relay: connected to 127.0.0.1:{smtp_sink} (NOOP 250)" in html
    html = post(eddie, "/connectors/closed/test", {}, hx=True).get_data(as_text=True)
    assert "✘ closed: ConnectionRefusedError: [Errno 111] Connection refused" in html


def test_the_page_stops_waiting_after_the_kinds_timeout(app, as_user, monkeypatch):
    release = threading.Event()

    def hangs(values):
        release.wait(30)
        return "too late"

    monkeypatch.setattr(CONNECTOR_KINDS["smtp"], "test", hangs)
    add_connector(app, "slow", "smtp", {"host": "h", "sender": "n@x.org", "timeout_seconds": 1})
    started = time.monotonic()
    html = post(as_user("eddie"), "/connectors/slow/test", {}, hx=True).get_data(as_text=True)
    release.set()
    assert "✘ slow: no answer within 3 seconds" in html
    assert time.monotonic() - started < 6


def test_delete_asks_first_and_is_refused_while_jobs_use_the_connector(app, as_user):
    add_connector(app, "api", "http", {"base_url": "https://api.example.org"})
    add_connector(app, "spare", "http", {"base_url": "https://spare.example.org"})
    make_job(
        app, "fetch", steps=[{"name": "get", "type": "http", "connector": "api", "url": "/status"}]
    )
    eddie = as_user("eddie")
    listing = eddie.get("/connectors").get_data(as_text=True)
    api = connector_row(app, "api")
    assert re.search(rf'id="connector-{api.id}".*?<span class="chip">fetch</span>', listing, re.S)

    ask = eddie.get("/connectors/api/delete").get_data(as_text=True)
    assert "api is used by fetch; change those jobs first." in ask
    assert "Delete api</button>" not in ask
    refused = post(eddie, "/connectors/api/delete", {})
    assert refused.status_code == 409
    assert "api is used by fetch; change those jobs first" in refused.get_data(as_text=True)
    assert connector_row(app, "api") is not None

    ask = eddie.get("/connectors/spare/delete").get_data(as_text=True)
    assert "Delete spare</button>" in ask
    assert post(eddie, "/connectors/spare/delete", {}).status_code == 302
    assert connector_row(app, "spare") is None
    assert "Connector spare deleted." in eddie.get("/connectors").get_data(as_text=True)
    with get_database(app).session_scope() as db_session:
        event = db_session.scalar(
            sa.select(AuditEvent).where(AuditEvent.action == "connector.delete")
        )
        assert (event.username, event.target_id) == ("eddie", "spare")


def test_default_is_read_only(app, as_user):
    eddie = as_user("eddie")
    make_job(app, "local", steps=[{"name": "get", "type": "http", "url": "https://x.org/"}])
    assert eddie.get("/connectors/default/edit").status_code == 409
    assert post(eddie, "/connectors/default/edit", {"url": "sqlite://"}).status_code == 409
    assert post(eddie, "/connectors/default/delete", {}).status_code == 409
    page = eddie.get("/connectors").get_data(as_text=True)
    assert "No connectors yet" in page
    assert "Edit default" not in page and "Delete default" not in page
    assert post(eddie, "/connectors/new", sqlite_form("default", "x.db")).status_code == 422


def test_an_unknown_connector_is_404(as_user):
    eddie = as_user("eddie")
    assert eddie.get("/connectors/ghost/edit").status_code == 404
    assert post(eddie, "/connectors/ghost/test", {}, hx=True).status_code == 404


def test_a_kind_is_fixed_and_the_name_cannot_change(app, as_user, tmp_path):
    add_connector(app, "ops", "sql", {"url": f"sqlite:///{tmp_path / 'ops.db'}"})
    eddie = as_user("eddie")
    response = post(
        eddie,
        "/connectors/ops/edit",
        {"kind": "smtp", "name": "renamed", "url": f"sqlite:///{tmp_path / 'b.db'}"},
    )
    assert response.status_code == 302  # the kind and the name come from the stored connector
    row = connector_row(app, "ops")
    assert (row.kind, row.config["url"]) == ("sql", f"sqlite:///{tmp_path / 'b.db'}")
    assert connector_row(app, "renamed") is None


def test_secrets_sealed_with_other_keys_are_reported_not_a_500(app, as_user, tmp_path):
    from cryptography.fernet import Fernet

    other = SecretsVault((Fernet.generate_key().decode(),))
    with get_database(app).session_scope() as db_session:
        save_connector(
            db_session,
            other,
            "old",
            "smtp",
            {"host": "h", "sender": "n@x.org", "username": "u", "password": SECRET},
        )
    eddie = as_user("eddie")
    page = eddie.get("/connectors").get_data(as_text=True)
    assert "cannot decrypt a stored secret: NOMAFLOW_ENCRYPTION_KEYS lacks the key" in page
    assert eddie.get("/connectors/old/edit").status_code == 200
    saved = post(eddie, "/connectors/old/edit", {"host": "h", "sender": "n@x.org", "username": "u"})
    assert saved.status_code == 422
    assert "cannot decrypt a stored secret" in saved.get_data(as_text=True)
    tested = post(eddie, "/connectors/old/test", {}, hx=True).get_data(as_text=True)
    assert "✘ old: cannot decrypt a stored secret" in tested


def test_creating_a_name_that_exists_is_refused_not_an_overwrite(app, as_user, tmp_path):
    add_connector(app, "ops", "sql", {"url": f"sqlite:///{tmp_path / 'ops.db'}"})
    eddie = as_user("eddie")
    response = post(eddie, "/connectors/new", sqlite_form("ops", tmp_path / "other.db"))
    assert response.status_code == 422
    assert 'id="connector-name-error">a connector named ops already exists<' in (
        response.get_data(as_text=True)
    )
    assert connector_row(app, "ops").config["url"] == f"sqlite:///{tmp_path / 'ops.db'}"


def test_testing_an_edited_form_keeps_the_stored_kind(app, as_user, smtp_sink):
    add_connector(
        app,
        "relay",
        "smtp",
        {"host": "127.0.0.1", "port": smtp_sink, "tls": "none", "sender": "n@x.org"},
    )
    form = {
        "original": "relay",
        "name": "relay",
        "host": "127.0.0.1",
        "port": str(smtp_sink),
        "tls": "none",
        "sender": "n@x.org",
    }
    eddie = as_user("eddie")
    html = post(eddie, "/connectors/test", {**form, "kind": "http"}, hx=True).get_data(as_text=True)
    assert f"✔ relay: connected to 127.0.0.1:{smtp_sink} (NOOP 250)" in html


def test_a_connector_of_a_kind_no_longer_known_is_listed_and_can_be_deleted(app, as_user):
    with get_database(app).session_scope() as db_session:
        db_session.add(Connector(name="old", kind="ftp", config={"host": "h"}))
    eddie = as_user("eddie")
    page = eddie.get("/connectors").get_data(as_text=True)
    assert "ftp (unavailable)" in page and "unknown connector kind &#39;ftp&#39;" in page
    assert "Edit old" not in page and "Test connection old" not in page and "Delete old" in page
    assert eddie.get("/connectors/old/edit").status_code == 409
    tested = post(eddie, "/connectors/old/test", {}, hx=True)
    assert tested.status_code == 409
    assert post(eddie, "/connectors/old/delete", {}).status_code == 302
    assert connector_row(app, "old") is None
