"""Trigger URLs: an outside system starts a job with the job's own token (POST /hooks/<job>)."""

import re

import sqlalchemy as sa

from app.db import get_database, utcnow
from app.models import AuditEvent, Job, Role, Run, User
from tests.conftest import PASSWORD_HASH, csrf_token, sign_in
from tests.engine_helpers import make_job


def enable_hook(editor, job_id: str, action: str = "enable") -> str:
    """Press the button on the trigger URL page; return the token it shows once."""
    page = editor.post(
        f"/jobs/{job_id}/trigger-url",
        data={"action": action, "csrf_token": csrf_token(editor, f"/jobs/{job_id}/trigger-url")},
    ).get_data(as_text=True)
    return re.search(r'id="hook-token-value"[^>]*value="(nfh_[^"]+)"', page).group(1)


def queued_runs(app, job_id: str) -> list[Run]:
    with get_database(app).session_scope() as db:
        return list(db.scalars(sa.select(Run).where(Run.job_id == job_id)))


def sync_job(app):
    make_job(app, "sync", params=[{"name": "day", "type": "date", "required": True}])


def test_a_hook_token_starts_the_job_with_json_parameters(app, as_user):
    sync_job(app)
    token = enable_hook(as_user("eddie"), "sync")
    outside = app.test_client()  # no session, no CSRF token: only the hook's own token
    response = outside.post(
        "/hooks/sync", json={"day": "2026-01-31"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 202
    run_id = response.get_json()["id"]
    assert response.get_json()["url"].endswith(f"/runs/{run_id}")
    by_url = outside.post(f"/hooks/sync?token={token}", json={"day": "2026-02-01"})
    assert by_url.status_code == 202
    runs = queued_runs(app, "sync")
    assert sorted((r.trigger, r.params["day"]) for r in runs) == [
        ("api", "2026-01-31"),
        ("api", "2026-02-01"),
    ]
    with get_database(app).session_scope() as db:
        stored = db.get(Job, "sync")
        assert stored.hook_token_hash != token and token.startswith(stored.hook_token_prefix)
        event = db.scalar(sa.select(AuditEvent).where(AuditEvent.action == "hook.trigger"))
        assert event.detail == {"run": run_id, "token_prefix": stored.hook_token_prefix}


def test_bad_calls_get_json_errors_and_queue_nothing(app, as_user):
    sync_job(app)
    make_job(app, "quiet")
    token = enable_hook(as_user("eddie"), "sync")
    outside = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    refused = {"error": "unauthorized", "message": "invalid trigger token", "fields": {}}
    for path, headers in [
        ("/hooks/sync", {"Authorization": "Bearer nfh_x"}),  # wrong token
        ("/hooks/sync", {}),  # no token
        ("/hooks/quiet", auth),  # a job without a hook
        ("/hooks/nope", auth),  # no such job
        ("/hooks/SYNC", auth),  # ids are exact (MariaDB compares them without case)
    ]:
        answer = outside.post(path, json={"day": "2026-01-31"}, headers=headers)
        assert (answer.status_code, answer.get_json()) == (401, refused), path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    bad_type = outside.post("/hooks/sync", json={"day": "last tuesday"}, headers=auth)
    assert bad_type.status_code == 422
    assert "day" in bad_type.get_json()["fields"]
    not_json = outside.post("/hooks/sync", data="day=1", headers=auth)
    assert (not_json.status_code, not_json.get_json()["error"]) == (400, "bad_request")
    huge = outside.post("/hooks/sync", data=b"{" + b" " * 2_000_000 + b"}", headers=auth)
    assert huge.status_code == 413 and huge.get_json()["error"] == "request_entity_too_large"
    assert queued_runs(app, "sync") == []


def test_rotating_invalidates_the_old_token_and_disabling_closes_the_url(app, as_user):
    sync_job(app)
    eddie = as_user("eddie")
    old = enable_hook(eddie, "sync")
    new = enable_hook(eddie, "sync", action="rotate")
    outside = app.test_client()
    body = {"day": "2026-01-31"}
    assert outside.post(f"/hooks/sync?token={old}", json=body).status_code == 401
    assert outside.post(f"/hooks/sync?token={new}", json=body).status_code == 202
    page = eddie.post(
        "/jobs/sync/trigger-url",
        data={"action": "disable", "csrf_token": csrf_token(eddie, "/jobs/sync/trigger-url")},
    ).get_data(as_text=True)
    assert "No trigger URL" in page
    assert outside.post(f"/hooks/sync?token={new}", json=body).status_code == 401
    with get_database(app).session_scope() as db:
        actions = db.scalars(
            sa.select(AuditEvent.action)
            .where(AuditEvent.action.like("hook.%"))
            .order_by(AuditEvent.id)
        )
        assert list(actions) == ["hook.enable", "hook.rotate", "hook.trigger", "hook.disable"]


def test_a_deleted_jobs_hook_refuses_its_token(app, as_user):
    sync_job(app)
    token = enable_hook(as_user("eddie"), "sync")
    with get_database(app).session_scope() as db:
        db.get(Job, "sync").deleted_at = utcnow()
    answer = app.test_client().post(f"/hooks/sync?token={token}", json={"day": "2026-01-31"})
    assert (answer.status_code, answer.get_json()["message"]) == (401, "invalid trigger token")
    assert queued_runs(app, "sync") == []


def test_only_editors_who_may_run_the_job_manage_trigger_urls(app, as_user):
    sync_job(app)
    otto = as_user("otto")
    assert otto.get("/jobs/sync/trigger-url").status_code == 403
    page = as_user("eddie").get("/jobs/sync/edit").get_data(as_text=True)
    assert 'href="/jobs/sync/trigger-url"' in page
    with get_database(app).session_scope() as db:
        role = Role(name="writers", permissions=["job:view", "job:edit"])
        db.add(User(username="wes", role=role, password_hash=PASSWORD_HASH))
    wes = app.test_client()
    sign_in(wes, "wes")
    assert wes.get("/jobs/sync/trigger-url").status_code == 403
    token = csrf_token(wes, "/jobs/sync/edit")
    enable = wes.post("/jobs/sync/trigger-url", data={"action": "enable", "csrf_token": token})
    assert enable.status_code == 403
    with get_database(app).session_scope() as db:
        assert db.get(Job, "sync").hook_token_hash is None
