"""The job editor through HTTP: forms, validation next to fields, versions, delete, duplicate."""

import re

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.engine.signals import jobs_changed
from app.models import Job, JobVersion, Role, Run, User
from tests.conftest import PASSWORD_HASH, csrf_token
from tests.engine_helpers import make_job, python_step


def new_job_form(client, **overrides):
    form = {
        "csrf_token": csrf_token(client, "/jobs/new"),
        "id": "nightly",
        "description": "Two python steps",
        "tags": "etl, nightly",
        "enabled": "true",
        "schedule_kind": "cron",
        "schedule": "0 2 * * *",
        "interval": "",
        "timezone": "Europe/Paris",
        "grace_seconds": "300",
        "overlap": "skip",
        "log_level": "INFO",
        "retry_attempts": "",
        "params-0.name": "day",
        "params-0.type": "date",
        "params-0.default": "{{ yesterday }}",
        "params-0.required": "true",
        "steps-0.name": "first",
        "steps-0.type": "python",
        "steps-0.enabled": "true",
        "steps-0.timeout_seconds": "60",
        "steps-0.on_failure": "stop",
        "steps-0.config.code": "ctx.log.info('one')\r\n",
        "steps-1.name": "second",
        "steps-1.type": "python",
        "steps-1.enabled": "true",
        "steps-1.timeout_seconds": "60",
        "steps-1.on_failure": "continue",
        "steps-1.config.code": "ctx.set_output({'n': 2})",
        "op": "save",
    }
    form.update(overrides)
    return {key: value for key, value in form.items() if value is not None}


def stored(app, job_id):
    with get_database(app).session_scope() as db:
        job = db.get(Job, job_id)
        if job is None:
            return None
        versions = db.scalars(
            sa.select(JobVersion.version).where(JobVersion.job_id == job_id)
        ).all()
        return {
            "version": job.version,
            "deleted": job.deleted_at is not None,
            "schedule": job.schedule,
            "timezone": job.timezone,
            "steps": [(s.name, s.type, s.enabled, s.config) for s in job.steps],
            "params": job.params,
            "versions": sorted(versions),
        }


@pytest.fixture
def ada(as_user):
    return as_user("ada")


@pytest.fixture
def signals():
    heard = []

    def listen(sender, **kw):
        heard.append(sender)

    jobs_changed.connect(listen)
    yield heard
    jobs_changed.disconnect(listen)


def test_admin_creates_a_job_with_two_python_steps(app, ada, signals):
    response = ada.post("/jobs/new", data=new_job_form(ada))
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == "/jobs"
    job = stored(app, "nightly")
    assert job["schedule"] == "0 2 * * *" and job["timezone"] == "Europe/Paris"
    assert job["steps"] == [
        ("first", "python", True, {"code": "ctx.log.info('one')\n"}),
        ("second", "python", True, {"code": "ctx.set_output({'n': 2})"}),
    ]
    assert job["params"][0]["name"] == "day" and job["params"][0]["required"] is True
    assert job["versions"] == [1]
    assert signals == [None]
    page = ada.get("/jobs").get_data(as_text=True)
    assert "Created job nightly (version 1)." in page


def test_the_cron_preview_shows_five_fires_in_the_timezone_and_words(ada):
    response = ada.get(
        "/jobs/schedule-preview",
        query_string={"schedule_kind": "cron", "schedule": "30 2 * * 1", "timezone": "Asia/Tokyo"},
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="job-schedule-preview"' in html
    fires = re.findall(r'<time datetime="([^"]+)">', html)
    assert len(fires) == 5 and all(f.endswith("T02:30:00+09:00") for f in fires)
    assert "Mon" in html and "JST" in html
    assert 'class="schedule-words"' in html


def test_the_cron_preview_explains_a_bad_expression(ada):
    response = ada.get(
        "/jobs/schedule-preview",
        query_string={"schedule_kind": "cron", "schedule": "61 * * *", "timezone": "UTC"},
    )
    html = response.get_data(as_text=True)
    assert 'id="job-schedule-preview-error"' in html
    assert "schedule:" in html and "<time" not in html


def test_the_interval_preview_and_a_bad_timezone(ada):
    html = ada.get(
        "/jobs/schedule-preview",
        query_string={"schedule_kind": "interval", "interval": "15m", "timezone": "UTC"},
    ).get_data(as_text=True)
    assert "every 15 minutes" in html and html.count("<time") == 5
    html = ada.get(
        "/jobs/schedule-preview",
        query_string={"schedule_kind": "cron", "schedule": "0 2 * * *", "timezone": "Mars/Base"},
    ).get_data(as_text=True)
    assert "timezone:" in html and "<time" not in html


def test_a_bad_field_shows_its_error_beside_it_and_nothing_is_saved(app, ada, signals):
    form = new_job_form(ada, schedule="0 25 * * *", **{"steps-1.config.code": "def broken(:"})
    response = ada.post("/jobs/new", data=form)
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'id="job-schedule"[^>]*aria-invalid="true"', html)
    assert 'id="job-schedule-error"' in html
    assert re.search(r'id="step-1-python-code-error"[^>]*>syntax error on line 1', html)
    assert 'value="0 25 * * *"' in html  # the form keeps what was typed
    assert "def broken(:" in html and "Two python steps" in html
    assert stored(app, "nightly") is None
    assert signals == []


def test_editing_bumps_the_version_and_keeps_the_id(app, ada):
    make_job(app, "edited", steps=[python_step("a", "x = 1")])
    page = ada.get("/jobs/edited/edit").get_data(as_text=True)
    assert re.search(r'id="job-id"[^>]*readonly', page)
    form = new_job_form(ada, id="sneaky", description="new words")
    for key in [k for k in form if k.startswith("steps-1")]:
        del form[key]
    form["steps-0.name"] = "a"
    form["steps-0.config.code"] = "x = 1"
    response = ada.post("/jobs/edited/edit", data=form)
    assert response.status_code == 302
    assert response.headers["Location"] == "/jobs/edited/edit"
    assert stored(app, "sneaky") is None
    job = stored(app, "edited")
    assert job["version"] == 2 and job["versions"] == [1, 2]
    response = ada.post("/jobs/edited/edit", data=form)  # the same again: no new version
    assert stored(app, "edited")["version"] == 2
    assert "No changes to edited." in ada.get("/jobs/edited/edit").get_data(as_text=True)


def test_steps_move_up_and_down_and_delete_asks_first(app, ada):
    form = new_job_form(ada, op="step-down-0")
    html = ada.post("/jobs/new", data=form).get_data(as_text=True)
    assert html.index('value="second"') < html.index('value="first"')
    assert stored(app, "nightly") is None  # moving is not saving
    form = new_job_form(ada, op="remove-step-1")
    html = ada.post("/jobs/new", data=form).get_data(as_text=True)
    assert "Yes, delete step second" in html and 'value="second"' in html
    form = new_job_form(ada, op="confirm-remove-step-1")
    html = ada.post("/jobs/new", data=form).get_data(as_text=True)
    assert 'value="second"' not in html
    form = new_job_form(ada, op="add-step", new_step_type="http")
    html = ada.post("/jobs/new", data=form).get_data(as_text=True)
    assert 'name="steps-2.config.url"' in html and 'value="step-3"' in html
    form = new_job_form(ada, op="add-param")
    html = ada.post("/jobs/new", data=form).get_data(as_text=True)
    assert 'name="params-1.name"' in html


def test_a_saved_reorder_is_a_new_version_with_the_new_order(app, ada):
    ada.post("/jobs/new", data=new_job_form(ada))
    form = new_job_form(ada)
    swapped = {}
    for key, value in form.items():
        if key.startswith("steps-0."):
            swapped["steps-1." + key[8:]] = value
        elif key.startswith("steps-1."):
            swapped["steps-0." + key[8:]] = value
        else:
            swapped[key] = value
    assert ada.post("/jobs/nightly/edit", data=swapped).status_code == 302
    job = stored(app, "nightly")
    assert [s[0] for s in job["steps"]] == ["second", "first"] and job["version"] == 2


@pytest.fixture
def junior(app, as_user):
    """An editor whose role lacks python:edit."""
    with get_database(app).session_scope() as db:
        role = Role(name="junior", permissions=["job:view", "job:run", "job:edit"])
        db.add(User(username="june", role=role, password_hash=PASSWORD_HASH))
    return as_user("june")


def test_an_editor_without_python_edit_cannot_save_python_code(app, junior, ada):
    response = junior.post("/jobs/new", data=new_job_form(junior))
    html = response.get_data(as_text=True)
    assert response.status_code == 403
    assert "you need the python:edit permission" in html
    assert 'id="step-0-python-code-error"' in html
    assert stored(app, "nightly") is None
    assert ada.post("/jobs/new", data=new_job_form(ada)).status_code == 302
    # the junior may still edit the job around the code, but not the code
    form = new_job_form(junior, description="reworded")
    assert junior.post("/jobs/nightly/edit", data=form).status_code == 302
    form["steps-0.config.code"] = "import os"
    assert junior.post("/jobs/nightly/edit", data=form).status_code == 403
    assert stored(app, "nightly")["version"] == 2
    page = junior.get("/jobs/nightly/edit").get_data(as_text=True)
    assert re.search(r'name="steps-0.config.code"[^>]*readonly', page)
    assert '<option value="python">' not in page


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/jobs/new"),
        ("post", "/jobs/new"),
        ("get", "/jobs/demo/edit"),
        ("post", "/jobs/demo/edit"),
        ("get", "/jobs/schedule-preview"),
        ("get", "/jobs/demo/toml"),
        ("get", "/jobs/demo/versions"),
        ("get", "/jobs/demo/versions/diff?from=1&to=1"),
        ("post", "/jobs/demo/versions/1/restore"),
        ("get", "/jobs/demo/delete"),
        ("post", "/jobs/demo/delete"),
        ("get", "/jobs/new?duplicate=demo"),
    ],
)
def test_a_viewer_gets_403_on_every_editor_route(app, as_user, method, path):
    make_job(app, "demo")
    vera = as_user("vera")
    token = csrf_token(vera, "/jobs")
    response = getattr(vera, method)(path, data={"csrf_token": token} if method == "post" else None)
    assert response.status_code == 403


def test_versions_list_diff_and_restore(app, ada, signals):
    ada.post("/jobs/new", data=new_job_form(ada))
    ada.post("/jobs/nightly/edit", data=new_job_form(ada, schedule="0 3 * * *"))
    page = ada.get("/jobs/nightly/versions").get_data(as_text=True)
    assert 'id="job-version-2"' in page and 'id="job-version-1"' in page
    assert page.count(">ada<") == 2
    diff = ada.get("/jobs/nightly/versions/diff?from=1&to=2").get_data(as_text=True)
    assert '<span class="diff-del">-schedule = &#34;0 2 * * *&#34;</span>' in diff
    assert '<span class="diff-add">+schedule = &#34;0 3 * * *&#34;</span>' in diff
    signals.clear()
    token = csrf_token(ada, "/jobs/nightly/versions")
    response = ada.post("/jobs/nightly/versions/1/restore", data={"csrf_token": token})
    assert response.status_code == 302
    job = stored(app, "nightly")
    assert job["version"] == 3 and job["schedule"] == "0 2 * * *" and job["versions"] == [1, 2, 3]
    assert signals == [None]
    assert "Restored version 1 as version 3." in ada.get(response.headers["Location"]).get_data(
        as_text=True
    )


def test_raw_toml_tab_shows_the_export(app, ada):
    ada.post("/jobs/new", data=new_job_form(ada))
    html = ada.get("/jobs/nightly/toml").get_data(as_text=True)
    assert "id = &#34;nightly&#34;" in html and "[[jobs.steps]]" in html


def test_delete_hides_the_job_but_its_runs_stay_readable(app, ada, signals):
    make_job(app, "doomed")
    with get_database(app).session_scope() as db:
        run = Run(job_id="doomed", trigger="manual", state="SUCCEEDED")
        db.add(run)
        db.flush()
        run_id = run.id
    assert "Delete job doomed?" in ada.get("/jobs/doomed/delete").get_data(as_text=True)
    token = csrf_token(ada, "/jobs/doomed/delete")
    response = ada.post("/jobs/doomed/delete", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/jobs"
    assert stored(app, "doomed")["deleted"] is True
    assert signals == [None]
    assert 'id="job-doomed"' not in ada.get("/jobs").get_data(as_text=True)
    assert ada.get("/jobs/doomed/edit").status_code == 404
    assert ada.get(f"/runs/{run_id}").status_code == 200


def test_an_operator_cannot_delete(app, as_user):
    make_job(app, "kept")
    otto = as_user("otto")
    token = csrf_token(otto, "/jobs")
    assert otto.post("/jobs/kept/delete", data={"csrf_token": token}).status_code == 403
    assert stored(app, "kept")["deleted"] is False


def test_duplicate_copies_the_definition_under_a_new_id(app, ada, junior):
    ada.post("/jobs/new", data=new_job_form(ada))
    page = junior.get("/jobs/new?duplicate=nightly").get_data(as_text=True)
    assert 'value="nightly-copy"' in page and "ctx.log.info(&#39;one&#39;)" in page
    form = new_job_form(junior, id="nightly-copy", duplicate_of="nightly")
    response = junior.post("/jobs/new", data=form)  # same code as the source: allowed
    assert response.status_code == 302, response.get_data(as_text=True)
    copy_, source = stored(app, "nightly-copy"), stored(app, "nightly")
    assert copy_["steps"] == source["steps"] and copy_["version"] == 1


def test_creating_over_an_existing_id_is_refused(app, ada):
    make_job(app, "nightly")
    response = ada.post("/jobs/new", data=new_job_form(ada))
    assert response.status_code == 422
    assert "already exists" in response.get_data(as_text=True)
    assert stored(app, "nightly")["version"] == 1
