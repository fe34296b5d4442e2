"""The http step through the engine, against a real local HTTP server: auth, templating,
outputs, failures, limits, timeouts, abort, Retry-After, save_to, and no secret in sight."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from flask import render_template

from app.connectors.store import save_connector
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch, request_abort
from app.engine.service import start_runner, stop_runner
from app.jobspec import validate_job
from app.steps import get_step_type
from app.steps.base import StepFailed
from app.steps.http import HttpStep, follow_json_path, parse_retry_after
from tests.engine_helpers import log_messages, make_job, python_step, wait_for_run
from tests.http_test_server import (
    API_KEY,
    API_KEY_HEADER,
    BEARER_TOKEN,
    CLIENT_SECRET,
    PASSWORD,
    USERNAME,
    HttpTestServer,
    http_values,
)


@pytest.fixture
def api():
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


def add_connector(app, name: str, values: dict, kind: str = "http") -> None:
    with get_database(app).session_scope() as db:
        save_connector(db, vault(app), name, kind, values)


def http_step(name: str, url: str, **fields) -> dict:
    return {"name": name, "type": "http", "url": url, **fields}


def run_job(app, job_id: str, steps: list[dict], values=None, **job_fields) -> dict:
    """Save the job, trigger it with parameter ``values`` and wait for the end of the run."""
    make_job(app, job_id, steps=steps, **job_fields)
    run = dispatch(get_database(app), vault(app), job_id, "manual", values)
    return wait_for_run(app, run.id, timeout=30)


def messages(app, run_id: int) -> list[str]:
    return [message for _, _, message in log_messages(app, run_id)]


@pytest.mark.parametrize(
    ("auth", "path", "header", "expected"),
    [
        ("basic", "/basic", "Authorization", "Basic "),
        ("bearer", "/bearer", "Authorization", f"Bearer {BEARER_TOKEN}"),
        ("api_key", "/api-key", API_KEY_HEADER, API_KEY),
        ("oauth2", "/oauth/data", "Authorization", "Bearer at-"),
    ],
)
def test_each_auth_kind_reaches_the_server_with_its_header(
    app, api, runner, auth, path, header, expected
):
    add_connector(app, "api", http_values(api, auth))
    document = run_job(
        app, f"auth-{auth.replace('_', '-')}", [http_step("call", path, connector="api")]
    )
    assert document["state"] == "SUCCEEDED", document["steps"][0]["error"]
    assert document["steps"][0]["output"]["status"] == 200
    sent = api.requests_to(path)[-1].headers[header]
    assert sent.startswith(expected)
    if auth == "basic":
        assert base64.b64decode(sent.removeprefix("Basic ")).decode() == f"{USERNAME}:{PASSWORD}"


def test_a_wrong_token_fails_with_a_clear_401(app, api, runner):
    add_connector(app, "api", http_values(api, "bearer", token="not-the-token"))
    document = run_job(app, "wrong-token", [http_step("call", "/bearer", connector="api")])
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    assert error.startswith(f"HTTP 401 UNAUTHORIZED from GET {api.url}/bearer (expected 2xx)")
    assert "check the connector's credentials" in error
    assert "not-the-token" not in json.dumps(document)


def test_wrong_oauth2_client_secret_fails_naming_the_token_endpoint(app, api, runner):
    add_connector(app, "api", http_values(api, "oauth2", client_secret="wrong-secret-1234"))
    document = run_job(app, "bad-client", [http_step("call", "/oauth/data", connector="api")])
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == (
        f"the OAuth2 token endpoint {api.url}/oauth/token refused: HTTP 401 UNAUTHORIZED "
        "(invalid_client: bad client)"
    )


def test_oauth2_token_is_fetched_once_and_reused_across_steps_and_runs(app, api, runner):
    add_connector(app, "api", http_values(api, "oauth2"))
    steps = [
        http_step("first", "/oauth/data", connector="api"),
        http_step("second", "/oauth/data", connector="api", method="POST"),
    ]
    assert run_job(app, "reuse", steps)["state"] == "SUCCEEDED"
    run = dispatch(get_database(app), vault(app), "reuse", "manual", None)
    assert wait_for_run(app, run.id)["state"] == "SUCCEEDED"
    assert api.token_requests == 1
    assert len(api.requests_to("/oauth/data")) == 4


def test_oauth2_token_is_refreshed_after_expiry(app, api, runner):
    api.token_lifetime = 1
    add_connector(app, "api", http_values(api, "oauth2"))
    first = run_job(app, "expiry", [http_step("call", "/oauth/data", connector="api")])
    assert first["state"] == "SUCCEEDED"
    time.sleep(1.1)
    run = dispatch(get_database(app), vault(app), "expiry", "manual", None)
    assert wait_for_run(app, run.id)["state"] == "SUCCEEDED"
    assert api.token_requests == 2
    assert len(api.requests_to("/oauth/data")) == 2  # refreshed before use, never refused


def test_oauth2_token_is_refreshed_once_when_the_server_refuses_it(app, api, runner):
    add_connector(app, "api", http_values(api, "oauth2"))
    first = run_job(app, "revoked", [http_step("call", "/oauth/data", connector="api")])
    assert first["state"] == "SUCCEEDED"
    api.revoke_tokens()  # the server forgets the token the client still holds
    run = dispatch(get_database(app), vault(app), "revoked", "manual", None)
    assert wait_for_run(app, run.id)["state"] == "SUCCEEDED"
    assert api.token_requests == 2
    sent = [s.headers["Authorization"] for s in api.requests_to("/oauth/data")]
    assert sent[0] == sent[1] != sent[2]  # the old token, refused; then the new one


def test_url_query_headers_and_json_are_templated_from_params_and_earlier_outputs(app, api, runner):
    document = run_job(
        app,
        "templated",
        params=[
            {"name": "customer", "type": "string", "required": True},
            {"name": "day", "type": "date", "required": True},
        ],
        steps=[
            python_step("count", "ctx.set_output({'page': 3})"),
            http_step(
                "push",
                api.url + "/echo/customers/{{ params.customer }}",
                method="POST",
                query={"page": "{{ steps['count'].output.page }}", "day": "{{ params.day }}"},
                headers={"X-Run": "run {{ run.id }}"},
                json={"customer": "{{ params.customer }}", "page": "{{ steps.count.output.page }}"},
            ),
            python_step(
                "use",
                "echo = ctx.steps['push'].output['json']\n"
                "print('pushed', echo['path'], echo['json']['page'] + 1)",
            ),
        ],
        values={"customer": "acme", "day": "2024-03-01"},
    )
    assert document["state"] == "SUCCEEDED", [s["error"] for s in document["steps"]]
    echo = document["steps"][1]["output"]["json"]
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo/customers/acme"
    assert echo["query"] == {"page": ["3"], "day": ["2024-03-01"]}
    assert echo["headers"]["X-Run"] == f"run {document['id']}"
    assert echo["json"] == {"customer": "acme", "page": 3}  # one {{ }} keeps the int
    assert echo["content_type"] == "application/json"
    assert "pushed /echo/customers/acme 4" in messages(app, document["id"])


def test_json_output_and_json_path_feed_a_later_python_step(app, api, runner):
    add_connector(app, "api", http_values(api))
    document = run_job(
        app,
        "feed",
        [
            http_step("fetch", "/items", connector="api", expect=[200]),
            http_step("name", "/items", connector="api", json_path="data.items[1].name"),
            python_step(
                "report",
                "items = ctx.steps['fetch'].output['json']['data']['items']\n"
                "second = ctx.steps['name'].output['json']\n"
                "print('ids', [i['id'] for i in items], 'second', second)",
            ),
        ],
    )
    assert document["state"] == "SUCCEEDED", [s["error"] for s in document["steps"]]
    fetched = document["steps"][0]["output"]
    assert set(fetched) == {"status", "elapsed_ms", "json"}
    assert fetched["status"] == 200 and isinstance(fetched["elapsed_ms"], int)
    assert document["steps"][1]["output"]["json"] == "8"
    lines = messages(app, document["id"])
    assert "ids [7, 8] second 8" in lines
    assert f"GET {api.url}/items" in lines
    assert any(m.startswith("HTTP 200 OK in ") and m.endswith(" bytes") for m in lines)


def test_form_and_raw_bodies_and_text_capture(app, api, runner):
    document = run_job(
        app,
        "bodies",
        [
            http_step("form", api.url + "/echo", method="PUT", form={"a": "1", "b": ["x", "y"]}),
            http_step("raw", api.url + "/echo", method="PATCH", body="line {{ run.id }}"),
            http_step("text", api.url + "/text", capture="text"),
            http_step("nothing", api.url + "/text", capture="none"),
        ],
    )
    assert document["state"] == "SUCCEEDED", [s["error"] for s in document["steps"]]
    outputs = [s["output"] for s in document["steps"]]
    assert outputs[0]["json"]["form"] == {"a": ["1"], "b": ["x", "y"]}
    assert outputs[1]["json"]["body"] == f"line {document['id']}"
    assert outputs[2]["text"] == "hello, plain world\n"
    assert set(outputs[3]) == {"status", "elapsed_ms"}


def test_an_unexpected_status_fails_with_the_status_and_a_body_excerpt(app, api, runner):
    document = run_job(
        app,
        "statuses",
        [
            http_step("created", api.url + "/echo", expect=[201], on_failure="continue"),
            http_step("broken", api.url + "/status/500"),
        ],
    )
    assert document["state"] == "FAILED"
    created, broken = (s["error"] for s in document["steps"])
    assert created.startswith(f"HTTP 200 OK from GET {api.url}/echo (expected 201): {{")
    assert broken == (
        f"HTTP 500 INTERNAL SERVER ERROR from GET {api.url}/status/500 (expected 2xx): "
        "status 500 body: something went wrong"
    )
    assert "HTTP 500 INTERNAL SERVER ERROR in" in " ".join(messages(app, document["id"]))


def test_a_body_that_is_not_json_fails_when_capture_is_json(app, api, runner):
    document = run_job(app, "not-json", [http_step("page", api.url + "/html")])
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == (
        f"GET {api.url}/html: the response is not JSON (text/html; charset=utf-8); "
        'use capture = "text" or "none": <html><body>Not an API</body></html>'
    )


@pytest.mark.parametrize("announced", [False, True])
def test_a_huge_body_fails_at_max_bytes_without_reading_it_all(app, api, runner, announced):
    url = api.url + "/huge" + ("?length=1" if announced else "")
    started = time.monotonic()
    document = run_job(app, "huge", [http_step("download", url, capture="none")])
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    if announced:
        assert "the response announces 1,073,741,824 bytes; max_bytes is 10,485,760" in error
    else:
        assert "the response went past 10,485,760 bytes; max_bytes is 10,485,760" in error
    assert time.monotonic() - started < 10
    assert api.huge_bytes_sent < 100 * 1024 * 1024  # the server was stopped, not drained


def test_max_bytes_is_a_setting(app, api, runner):
    document = run_job(app, "small", [http_step("items", api.url + "/items", max_bytes=10)])
    assert document["state"] == "FAILED"
    assert "max_bytes is 10 (stopped reading)" in document["steps"][0]["error"]


def test_a_hanging_server_times_out_within_the_step_timeout(app, api, runner):
    started = time.monotonic()
    document = run_job(app, "hangs", [http_step("wait", api.url + "/hang", timeout_seconds=2)])
    assert document["state"] == "TIMED_OUT"
    assert document["steps"][0]["error"] == f"timed out after 2s (GET {api.url}/hang)"
    assert time.monotonic() - started < 5


def test_abort_ends_a_hanging_request_within_two_seconds(app, api, runner):
    make_job(app, "stuck", steps=[http_step("wait", api.url + "/hang")])
    run = dispatch(get_database(app), vault(app), "stuck", "manual", None)
    assert api.hanging.wait(10)
    asked = time.monotonic()
    request_abort(get_database(app), run.id)
    document = wait_for_run(app, run.id, timeout=10)
    assert document["state"] == "CANCELED"
    assert time.monotonic() - asked < 2


@pytest.mark.parametrize("how", ["seconds", "http-date"])
def test_retry_after_is_honoured_by_the_job_retry_policy(app, api, runner, how):
    if how == "seconds":
        url = f"{api.url}/busy/{how}?after=1"
    else:
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
        url = f"{api.url}/busy/{how}?status=503&after={when.replace(' ', '%20')}"
    document = run_job(
        app,
        "busy",
        [http_step("call", url)],
        retry={"attempts": 2, "backoff": "fixed", "base_seconds": 0},
    )
    assert document["state"] == "SUCCEEDED", document["steps"][0]["error"]
    assert document["steps"][0]["attempts"] == 2
    assert document["steps"][0]["output"]["json"] == {"attempt": 2}
    first, second = api.requests_to(f"/busy/{how}")
    assert second.at - first.at >= 1.0
    waits = [m for m in messages(app, document["id"]) if "retrying in" in m]
    assert len(waits) == 1 and waits[0].startswith("call: attempt 1/2 FAILED; retrying in ")
    assert float(waits[0].rsplit("retrying in ", 1)[1].rstrip("s")) >= 1.0


def test_save_to_writes_the_body_under_instance_data(app, api, runner):
    document = run_job(
        app,
        "export",
        [
            http_step(
                "save", api.url + "/items", save_to="exports/{{ job.id }}.json", capture="none"
            )
        ],
    )
    assert document["state"] == "SUCCEEDED", document["steps"][0]["error"]
    saved = Path(app.config["NOMAFLOW"].instance_path) / "data" / "exports" / "export.json"
    assert json.loads(saved.read_text())["data"]["items"][0]["id"] == 7
    assert document["steps"][0]["output"]["saved_to"] == "exports/export.json"
    assert [p.name for p in saved.parent.iterdir()] == ["export.json"]  # no partial file left


@pytest.mark.parametrize("path", ["../outside.json", "exports/../../x", "/etc/passwd"])
def test_a_save_to_path_escaping_the_data_folder_is_refused_at_validation(path):
    job = {"id": "escape", "steps": [http_step("save", "http://example.org/", save_to=path)]}
    _, errors = validate_job(job)
    assert [(e.path, e.message) for e in errors] == [
        (
            "jobs[0] escape › steps[0] save › save_to",
            "must stay inside <instance>/data/: a relative path without ..",
        )
    ]


def test_a_templated_save_to_that_escapes_fails_the_step(app, api, runner):
    document = run_job(
        app,
        "escape-later",
        [http_step("save", api.url + "/items", save_to="{{ '..' }}/x.json")],
    )
    assert document["state"] == "FAILED"
    assert "save_to" in document["steps"][0]["error"]


def test_no_secret_reaches_a_log_line_or_the_run_document(app, api, runner):
    for auth in ("basic", "bearer", "api_key", "oauth2"):
        add_connector(app, f"api-{auth}", http_values(api, auth))
    add_connector(app, "api-wrong", http_values(api, "basic", password="wrong-Pa55-6e1d"))
    document = run_job(
        app,
        "careful",
        params=[{"name": "key", "type": "secret", "required": True}],
        steps=[
            http_step("basic", "/basic", connector="api-basic"),
            http_step("bearer", "/bearer", connector="api-bearer"),
            http_step("key", "/api-key", connector="api-api_key"),
            http_step("oauth", "/oauth/data", connector="api-oauth2"),
            http_step(
                "echo",
                "/echo",
                connector="api-oauth2",
                query={"key": "{{ params.key }}"},
                capture="none",  # the echo would hand the secret back as output
            ),
            http_step("wrong", "/basic", connector="api-wrong"),
        ],
        values={"key": "param-S3cret+/x"},
    )
    assert document["state"] == "FAILED"
    assert [s["state"] for s in document["steps"]] == ["SUCCEEDED"] * 5 + ["FAILED"]
    assert api.requests_to("/echo")[0].query == {"key": "param-S3cret+/x"}
    lines = messages(app, document["id"])
    assert f"GET {api.url}/echo?key=•••" in lines
    seen = "\n".join(lines) + json.dumps(document)
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    secrets = [PASSWORD, BEARER_TOKEN, API_KEY, CLIENT_SECRET, basic, "wrong-Pa55-6e1d"]
    secrets += ["param-S3cret", "S3cret%2B", *api.tokens]
    assert api.tokens
    assert [s for s in secrets if s in seen] == []


def test_an_unknown_connector_or_one_of_another_kind_fails_naming_it(app, runner, tmp_path):
    add_connector(app, "warehouse", {"url": f"sqlite:///{tmp_path / 'w.db'}"}, kind="sql")
    document = run_job(
        app,
        "misnamed",
        [
            http_step("missing", "/x", connector="nope", on_failure="continue"),
            http_step("sql", "/x", connector="warehouse"),
        ],
    )
    assert [s["error"] for s in document["steps"]] == [
        "no connector named 'nope'",
        "connector 'warehouse' is sql, not http",
    ]


def test_an_unreachable_host_fails_with_the_cause(app, runner):
    document = run_job(app, "refused", [http_step("call", "http://127.0.0.1:1/x?token=abc")])
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == (
        "GET http://127.0.0.1:1/x?token=•••: cannot reach 127.0.0.1:1: connection refused"
    )


# --- the config, without the engine -------------------------------------------------------


def test_the_step_is_registered():
    assert isinstance(get_step_type("http"), HttpStep)


def test_the_editor_partial_draws_every_field_escaped(app):
    config = {"url": "/x?<script>alert(1)</script>", "headers": {"A": "<b>"}, "expect": [200]}
    with app.test_request_context():
        html = render_template(
            "steps/_http_editor.html",
            config=config,
            problems={"url": "bad <i>url</i>"},
            connectors=["github"],
        )
    for field in HttpStep.fields:
        assert f'name="config.{field.name}"' in html
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html
    assert "/x?&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "bad &lt;i&gt;url&lt;/i&gt;" in html
    assert '<option value="github" >github</option>' in html


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"url": "https://api.example.org/x"}, {}),
        ({"url": "/releases", "connector": "github", "method": "post"}, {}),
        ({"url": "{{ params.url }}"}, {}),
        ({"url": "https://{{ params.host }}/x", "json": {"a": 1}, "expect": [200, 204]}, {}),
        (
            {"url": "/releases"},
            {"url": "a relative URL needs a connector (its base URL); or give http(s)://host/…"},
        ),
        ({"url": "ftp://example.org/x"}, {"url": "expected an http:// or https:// URL"}),
        (
            {"url": "http://host:port/"},
            {"url": "not a well-formed URL: Port could not be cast to integer value as 'port'"},
        ),
        (
            {"url": "https://x.org", "method": "FETCH"},
            {"method": "expected one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"},
        ),
        (
            {"url": "https://x.org", "json": {}, "body": "x"},
            {"body": "give one body: json or body, not both"},
        ),
        (
            {"url": "https://x.org", "expect": [200, 700]},
            {"expect": "700 is not an HTTP status (100-599)"},
        ),
        (
            {"url": "https://x.org", "expect": 200},
            {"expect": "expected a list of HTTP statuses, e.g. [200, 201]"},
        ),
        (
            {"url": "https://x.org", "capture": "xml"},
            {"capture": "expected one of json, text, none"},
        ),
        (
            {"url": "https://x.org", "capture": "text", "json_path": "a"},
            {"json_path": "needs capture = json"},
        ),
        (
            {"url": "https://x.org", "json_path": "a..b"},
            {"json_path": "expected a path like data.items[0].id"},
        ),
        (
            {"url": "https://x.org", "headers": {"X": {"nested": 1}}},
            {"headers": "X: expected text, a number, true/false"},
        ),
        (
            {"url": "https://x.org", "max_bytes": 0},
            {"max_bytes": "expected a whole number of bytes >= 1"},
        ),
        ({}, {"url": "required"}),
    ],
)
def test_validation_names_each_problem(config, problems):
    assert HttpStep().validate(config) == problems


def test_connector_refs_name_the_http_connector():
    assert HttpStep().connector_refs({"url": "/x", "connector": "github"}) == [
        ("connector", "github", "http")
    ]
    assert HttpStep().connector_refs({"url": "https://x.org"}) == []


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= parse_retry_after(when) <= 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("999999") == 3600.0


def test_json_path_walks_keys_and_indexes_and_says_where_it_stopped():
    document = {"data": {"items": [{"id": 7}, {"id": 8}]}}
    assert follow_json_path(document, "data.items[1].id") == 8
    assert follow_json_path(document, "data.items.0.id") == 7
    with pytest.raises(StepFailed, match=r"\$\.data\.items has no item \[5\]"):
        follow_json_path(document, "data.items[5]")
    with pytest.raises(StepFailed, match=r"\$\.data has no key 'rows'"):
        follow_json_path(document, "data.rows")
