"""Trigger URLs: an outside system starts a job with the job's own token (POST /hooks/<job>)."""

import re

import sqlalchemy as sa

from app.db import get_database
from app.models import AuditEvent, Job, Run
from tests.conftest import csrf_token
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
    wrong = outside.post(
        "/hooks/sync", json={"day": "2026-01-31"}, headers={"Authorization": "Bearer nfh_x"}
    )
    assert (wrong.status_code, wrong.get_json()["error"]) == (401, "unauthorized")
    assert outside.post("/hooks/sync", json={"day": "2026-01-31"}).status_code == 401
    assert outside.post("/hooks/quiet", json={}, headers=auth).status_code == 404  # no hook
    assert outside.post("/hooks/nope", json={}, headers=auth).status_code == 404
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
    assert outside.post(f"/hooks/sync?token={new}", json=body).status_code == 404
    with get_database(app).session_scope() as db:
        actions = db.scalars(
            sa.select(AuditEvent.action)
            .where(AuditEvent.action.like("hook.%"))
            .order_by(AuditEvent.id)
        )
        assert list(actions) == ["hook.enable", "hook.rotate", "hook.trigger", "hook.disable"]


def test_only_editors_manage_trigger_urls(app, as_user):
    sync_job(app)
    otto = as_user("otto")
    assert otto.get("/jobs/sync/trigger-url").status_code == 403
    page = as_user("eddie").get("/jobs/sync/edit").get_data(as_text=True)
    assert 'href="/jobs/sync/trigger-url"' in page
