import time

import sqlalchemy as sa

from app.db import get_database
from app.models import AuditEvent
from tests.conftest import PASSWORD, csrf_token, sign_in


def audit_actions(app, action=None):
    with get_database(app).session_scope() as db_session:
        query = sa.select(AuditEvent.action, AuditEvent.username).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return [tuple(row) for row in db_session.execute(query)]


def test_anonymous_user_is_sent_to_sign_in(client):
    response = client.get("/jobs")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/jobs")


def test_anonymous_htmx_request_gets_401_and_a_redirect_header(client):
    response = client.get("/jobs", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_sign_in_shows_the_empty_jobs_page_and_is_audited(app, client):
    response = sign_in(client, "ada", next_path="/jobs")
    assert response.status_code == 302 and response.headers["Location"] == "/jobs"
    page = client.get("/jobs").get_data(as_text=True)
    assert "No jobs yet" in page
    assert "nomaflow jobs import" in page
    assert 'id="live-indicator"' in page
    assert ("login", "ada") in audit_actions(app)


def test_wrong_password_and_unknown_user_get_the_same_clear_message(app, client):
    for username, password in (("ada", "nope-nope"), ("nobody", PASSWORD)):
        response = sign_in(client, username, password)
        assert response.status_code == 401
        assert "Wrong username or password." in response.get_data(as_text=True)
    assert audit_actions(app, "login.failed") == [
        ("login.failed", "ada"),
        ("login.failed", "nobody"),
    ]
    assert client.get("/jobs").status_code == 302  # still signed out


def test_repeated_failures_lock_the_account_even_for_the_right_password(app, client):
    for _ in range(5):
        sign_in(client, "otto", "wrong-password")
    response = sign_in(client, "otto", PASSWORD)
    assert response.status_code == 401
    assert "Too many failed sign-ins for this account" in response.get_data(as_text=True)
    assert client.get("/jobs").status_code == 302
    # other accounts are not affected
    assert sign_in(app.test_client(), "vera").status_code == 302


def test_deactivated_user_cannot_sign_in(app, as_user):
    admin = as_user("ada")
    vera_id = _user_id(app, "vera")
    admin.post(
        f"/admin/users/{vera_id}",
        data={"active": "false", "csrf_token": csrf_token(admin, "/admin/users")},
    )
    response = sign_in(app.test_client(), "vera")
    assert response.status_code == 401
    assert "This account is deactivated" in response.get_data(as_text=True)


def test_sign_out_needs_csrf_and_is_audited(app, as_user):
    client = as_user("otto")
    assert client.post("/logout").status_code == 400  # no token: nothing happens
    assert client.get("/jobs").status_code == 200
    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/jobs")})
    assert response.status_code == 302
    assert client.get("/jobs").status_code == 302
    assert ("logout", "otto") in audit_actions(app)


def test_sign_in_without_csrf_token_is_refused(client):
    response = client.post("/login", data={"username": "ada", "password": PASSWORD})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert client.get("/jobs").status_code == 302


def test_idle_session_expires_with_a_message(as_user):
    client = as_user("vera")
    with client.session_transaction() as session:
        session["last_seen"] = int(time.time()) - 9 * 3600
    response = client.get("/jobs")
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Your session expired after 480 minutes without activity" in page


def test_sign_in_does_not_redirect_off_site(client):
    response = sign_in(client, "ada", next_path="//evil.example/")
    assert response.headers["Location"] == "/jobs"


def test_cookie_and_security_headers(make_app):
    client = make_app().test_client()
    response = client.get("/login")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    https = client.get("/login", base_url="https://nomaflow.example")
    assert "Secure" in https.headers["Set-Cookie"]
    forced = make_app(cookie_secure="true").test_client().get("/login")
    assert "Secure" in forced.headers["Set-Cookie"]


def test_healthz_is_public_and_reports_database_and_scheduler(client):
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["scheduler"] == "disabled"  # this process runs no clock
    assert body["version"]


def _user_id(app, username):
    from app.models import User

    with get_database(app).session_scope() as db_session:
        return db_session.scalar(sa.select(User.id).where(User.username == username))
