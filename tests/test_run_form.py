"""Run with parameters: a form drawn from the job's typed parameters, presets, replay prefill."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from app.models import Connector, Job, Run
from tests.conftest import csrf_token
from tests.engine_helpers import make_job, python_step

PARAMS = [
    {"name": "label", "type": "string", "default": "nightly", "help": "Shown in the log"},
    {"name": "query", "type": "text", "default": "select 1"},
    {"name": "batch", "type": "int", "default": 500},
    {"name": "ratio", "type": "float", "default": 0.5},
    {"name": "dry_run", "type": "bool", "default": True},
    {"name": "day", "type": "date", "default": "{{ yesterday }}"},
    {"name": "since", "type": "datetime", "default": "2026-01-31T08:00:00"},
    {"name": "mode", "type": "choice", "choices": ["full", "delta"], "default": "delta"},
    {"name": "token", "type": "secret"},
    {"name": "source", "type": "connector"},
]


@pytest.fixture
def job(app):
    make_job(
        app,
        "typed",
        params=PARAMS,
        timezone="UTC",
        steps=[python_step("extract", "pass"), python_step("load", "pass")],
    )
    with get_database(app).session_scope() as db:
        db.add(Connector(name="shop-db", kind="sql", config={}))
    return "typed"


def field(html: str, name: str) -> str:
    """Return the markup of one parameter's field block."""
    return html.split(f'id="param-{name}-field"')[1].split('<div class="field')[0]


def form_data(client, **overrides) -> dict:
    data = {
        "csrf_token": csrf_token(client, "/jobs/typed/run"),
        "param.label": "nightly",
        "param.query": "select 1",
        "param.batch": "500",
        "param.ratio": "0.5",
        "param.dry_run": "true",
        "param.day": "2026-02-01",
        "param.since": "2026-01-31T08:00",
        "param.mode": "delta",
        "param.token": "s3cret",
        "param.source": "shop-db",
        "log_level": "INFO",
        "step": ["extract", "load"],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def runs(app) -> list[Run]:
    with get_database(app).session_scope() as db:
        return list(db.scalars(sa.select(Run).order_by(Run.id)))


def test_form_renders_each_parameter_type_with_its_default(as_user, job):
    html = as_user("otto").get("/jobs/typed/run").get_data(as_text=True)
    assert 'type="text" id="param-label" name="param.label"' in html
    assert 'value="nightly"' in field(html, "label") and "Shown in the log" in field(html, "label")
    assert re.search(r"<textarea[^>]*name=\"param.query\"[^>]*>select 1</textarea>", html)
    assert re.search(r'type="number" step="1"[^>]*value="500"', field(html, "batch"))
    assert re.search(r'type="number" step="any"[^>]*value="0.5"', field(html, "ratio"))
    assert re.search(r'type="checkbox"[^>]*name="param.dry_run"[^>]*checked', html)
    yesterday = (date.today() - timedelta(days=1)).isoformat()  # the template default, rendered
    assert re.search(rf'type="date"[^>]*value="{yesterday}"', field(html, "day"))
    assert re.search(r'type="datetime-local"[^>]*value="2026-01-31T08:00:00"', field(html, "since"))
    assert '<option value="delta" selected>delta</option>' in field(html, "mode")
    assert re.search(r'type="password"[^>]*value=""', field(html, "token"))
    assert '<option value="shop-db">shop-db</option>' in field(html, "source")
    assert '<option value="INFO" selected>INFO</option>' in html
    assert re.search(r'name="step" value="extract"\s+checked', html)


def test_bad_values_show_errors_under_their_fields_and_queue_nothing(app, as_user, job):
    otto = as_user("otto")
    response = otto.post(
        "/jobs/typed/run", data=form_data(otto, **{"param.batch": "lots", "param.mode": "x"})
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    batch = field(html, "batch")
    assert 'aria-invalid="true"' in batch and 'value="lots"' in batch  # the value is kept
    assert '<p class="error" id="param-batch-error">expected a whole number' in batch
    assert "expected one of full, delta" in field(html, "mode")
    assert 'value=""' in field(html, "token")  # a secret is never sent back
    assert runs(app) == []


def test_a_good_submit_queues_a_typed_run_with_level_and_steps(app, as_user, job):
    otto = as_user("otto")
    data = form_data(otto, log_level="DEBUG", step=["load"], **{"param.dry_run": None})
    response = otto.post("/jobs/typed/run", data=data)
    assert response.status_code == 302
    (run,) = runs(app)
    assert response.headers["Location"] == f"/runs/{run.id}"
    assert (run.state, run.trigger, run.log_level) == ("QUEUED", "manual", "DEBUG")
    assert run.disabled_steps == ["extract"]
    assert run.params == {
        "label": "nightly",
        "query": "select 1",
        "batch": 500,
        "ratio": 0.5,
        "dry_run": False,
        "day": "2026-02-01",
        "since": "2026-01-31T08:00:00",
        "mode": "delta",
        "token": "••••••",
        "source": "shop-db",
    }
    assert vault(app).unseal(run.params_sealed)["token"] == "s3cret"


def test_viewer_may_not_open_or_post_the_form(app, as_user, job):
    vera = as_user("vera")
    assert vera.get("/jobs/typed/run").status_code == 403
    token = csrf_token(vera, "/jobs")
    assert vera.post("/jobs/typed/run", data={"csrf_token": token}).status_code == 403
    assert runs(app) == []


def test_presets_save_without_secrets_and_fill_the_form(app, as_user, job):
    otto = as_user("otto")
    data = form_data(
        otto,
        preset_name="big batch",
        log_level="WARNING",
        step=["extract"],
        **{"param.batch": "9000", "param.mode": "full"},
    )
    response = otto.post("/jobs/typed/presets", data=data)
    assert response.status_code == 302
    assert response.headers["Location"] == "/jobs/typed/run?preset=big+batch"
    with get_database(app).session_scope() as db:
        preset = db.get(Job, "typed").presets["big batch"]
    assert "token" not in preset["params"]
    assert preset["params"]["batch"] == "9000" and preset["log_level"] == "WARNING"
    assert preset["disabled_steps"] == ["load"]
    html = otto.get("/jobs/typed/run?preset=big+batch").get_data(as_text=True)
    assert 'value="9000"' in field(html, "batch")
    assert '<option value="full" selected>full</option>' in field(html, "mode")
    assert '<option value="WARNING" selected>WARNING</option>' in html
    assert re.search(r'name="step" value="load"\s+>', html)  # left out, as saved
    assert 'value=""' in field(html, "token")
    assert '<option value="big batch" selected>big batch</option>' in html
    response = otto.post(
        "/jobs/typed/presets/big batch/delete",
        data={"csrf_token": csrf_token(otto, "/jobs/typed/run")},
    )
    assert response.status_code == 302
    with get_database(app).session_scope() as db:
        assert db.get(Job, "typed").presets == {}


def test_a_preset_with_a_bad_value_or_no_name_is_not_saved(app, as_user, job):
    otto = as_user("otto")
    response = otto.post(
        "/jobs/typed/presets", data=form_data(otto, preset_name="", **{"param.batch": "x"})
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "expected a whole number" in field(html, "batch")
    assert 'id="preset-name-error"' in html
    with get_database(app).session_scope() as db:
        assert db.get(Job, "typed").presets == {}


def test_replay_with_changes_fills_the_form_from_a_run_but_not_its_secrets(app, as_user, job):
    params = {"batch": 42, "mode": "full", "token": "hunter2", "day": "2025-12-24"}
    original = dispatch(
        get_database(app),
        vault(app),
        "typed",
        "manual",
        params,
        log_level="ERROR",
        disabled_steps=["load"],
    )
    html = as_user("otto").get(f"/jobs/typed/run?from_run={original.id}").get_data(as_text=True)
    assert f'Values from run <a href="/runs/{original.id}">#{original.id}</a>' in html
    assert "Secret parameters are not copied: type them again." in html
    assert 'value="42"' in field(html, "batch")
    assert 'value="2025-12-24"' in field(html, "day")
    assert '<option value="full" selected>full</option>' in field(html, "mode")
    assert "hunter2" not in html and "••••••" not in html
    assert '<option value="ERROR" selected>ERROR</option>' in html
    assert re.search(r'name="step" value="load"\s+>', html)
    make_job(app, "other")
    assert as_user("otto").get(f"/jobs/other/run?from_run={original.id}").status_code == 404
