"""The REST API /api/v1 through HTTP with real tokens, as a script or another system uses it."""

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.engine.service import start_runner, stop_runner
from app.jobs_io import import_jobs
from app.models import AuditEvent, Job, JobVersion, Role, Run, User
from app.tokens import create_token, list_tokens, revoke_token
from tests.conftest import PASSWORD_HASH, sign_in
from tests.engine_helpers import make_job, python_step
from tests.test_editor import new_job_form

TEAM_JOB = {"tags": ["team-data"]}


class Api:
    """A test client that sends one user's API token on every call."""

    def __init__(self, app, username: str):
        self.client = app.test_client()
        self.token = new_token(app, username)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def __getattr__(self, method):
        def call(path, headers=None, **kwargs):
            return getattr(self.client, method)(
                "/api/v1" + path, headers={**self.headers, **(headers or {})}, **kwargs
            )

        return call


def new_token(app, username: str) -> str:
    with get_database(app).session_scope() as db:
        user = db.scalar(sa.select(User).where(User.username == username))
        return create_token(db, user, "tests").secret


def runs_of(app, job_id: str) -> list[Run]:
    with get_database(app).session_scope() as db:
        return list(db.scalars(sa.select(Run).where(Run.job_id == job_id).order_by(Run.id)))


@pytest.fixture
def runner(app):
    yield start_runner(app)
    stop_runner(app)


def greet_job(app, job_id="greet", **fields):
    return make_job(
        app,
        job_id,
        params=[
            {"name": "who", "type": "string", "required": True},
            {"name": "times", "type": "int", "default": 1},
        ],
        steps=[
            python_step(
                "say",
                "for i in range(ctx.params['times']):\n"
                "    ctx.log.info(f\"hello {ctx.params['who']} {i}\")\n"
                "ctx.set_output({'said': ctx.params['times']})",
            ),
            python_step("tidy", "ctx.log.info('tidy')"),
        ],
        **fields,
    )


def test_a_signed_in_browser_session_does_not_open_the_api(app, as_user):
    greet_job(app)
    browser = as_user("ada")
    response = browser.post("/api/v1/jobs/greet/runs", json={"params": {"who": "x"}})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["error"] == "unauthorized"
    assert "fields" in response.get_json()
    assert runs_of(app, "greet") == []


def test_wrong_and_revoked_tokens_get_401(app):
    api = Api(app, "otto")
    assert api.get("/jobs").status_code == 200
    wrong = api.get("/jobs", headers={"Authorization": "Bearer nf_not-a-token"})
    assert wrong.status_code == 401
    with get_database(app).session_scope() as db:
        otto = db.scalar(sa.select(User).where(User.username == "otto"))
        revoke_token(db, list_tokens(db, otto)[0])
    revoked = api.get("/jobs")
    assert revoked.status_code == 401
    assert revoked.get_json() == {
        "error": "unauthorized",
        "message": revoked.get_json()["message"],
        "fields": {},
    }


def test_viewer_reads_but_may_not_run_and_nothing_is_queued(app):
    greet_job(app)
    vera = Api(app, "vera")
    assert [job["id"] for job in vera.get("/jobs").get_json()["jobs"]] == ["greet"]
    response = vera.post("/jobs/greet/runs", json={"params": {"who": "x"}})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert "job:run" in response.get_json()["message"]
    assert vera.delete("/jobs/greet").status_code == 403
    assert runs_of(app, "greet") == []


def test_editor_creates_updates_and_deletes_a_job_like_the_editor(app):
    eddie = Api(app, "eddie")
    job = {"id": "hello", "schedule": "0 2 * * *", "steps": [python_step("say", "pass")]}
    created = eddie.post("/jobs", json=job)
    assert created.status_code == 201
    assert created.headers["Location"] == "/api/v1/jobs/hello"
    document = created.get_json()
    assert (document["schedule"], document["interval"], document["steps"][0]["code"]) == (
        "0 2 * * *",
        None,
        "pass",
    )
    assert eddie.post("/jobs", json=job).status_code == 409

    bad = eddie.put(
        "/jobs/hello",
        json={"schedule": "61 * * * *", "steps": [{"name": "x", "type": "nope"}], "colour": 1},
    )
    assert bad.status_code == 422
    assert set(bad.get_json()["fields"]) >= {"schedule", "steps[0].type", "colour"}

    document["description"] = "Say hello"  # what GET returns goes back in unchanged
    updated = eddie.put("/jobs/hello", json=document)
    assert updated.status_code == 200
    assert eddie.get("/jobs/hello").get_json()["description"] == "Say hello"
    assert eddie.put("/jobs/hello", json={**document, "id": "other"}).status_code == 422

    assert eddie.delete("/jobs/hello").status_code == 204
    assert eddie.get("/jobs/hello").status_code == 404
    with get_database(app).session_scope() as db:
        versions = db.scalars(sa.select(JobVersion.version).where(JobVersion.job_id == "hello"))
        assert list(versions) == [1, 2]
        actions = db.execute(
            sa.select(AuditEvent.action, AuditEvent.username).where(AuditEvent.target_id == "hello")
        ).all()
    assert [tuple(a) for a in actions] == [
        ("job.create", "eddie"),
        ("job.update", "eddie"),
        ("job.delete", "eddie"),
    ]


def test_python_code_needs_python_edit(app):
    with get_database(app).session_scope() as db:
        role = db.scalar(sa.select(Role).where(Role.name == "editor"))
        role.permissions = [p for p in role.permissions if p != "python:edit"]
    response = Api(app, "eddie").post(
        "/jobs", json={"id": "sneaky", "steps": [python_step("run", "import os")]}
    )
    assert response.status_code == 403
    assert list(response.get_json()["fields"]) == ["steps[0].code"]
    assert Api(app, "eddie").get("/jobs/sneaky").status_code == 404  # nothing was saved


def test_operator_queues_a_run_with_parameters_and_reads_it_back(app):
    greet_job(app)
    otto = Api(app, "otto")
    response = otto.post(
        "/jobs/greet/runs",
        json={"params": {"who": "ada", "times": 3}, "log_level": "DEBUG", "steps": {"tidy": False}},
    )
    assert response.status_code == 202
    accepted = response.get_json()
    assert accepted["state"] == "QUEUED"
    assert accepted["url"].endswith(f"/runs/{accepted['id']}")
    assert response.headers["Location"] == f"/api/v1/runs/{accepted['id']}"
    run = otto.get(f"/runs/{accepted['id']}").get_json()
    assert (run["trigger"], run["triggered_by"], run["params"], run["log_level"]) == (
        "api",
        "otto",
        {"who": "ada", "times": 3},
        "DEBUG",
    )
    listed = otto.get("/runs?job=greet&trigger=api&state=queued").get_json()
    assert [r["id"] for r in listed["runs"]] == [accepted["id"]]
    assert otto.get("/runs?state=NOPE").status_code == 422
    with get_database(app).session_scope() as db:
        event = db.scalar(sa.select(AuditEvent).where(AuditEvent.action == "job.trigger"))
        assert (event.username, event.detail["trigger"]) == ("otto", "api")
        assert db.get(Run, accepted["id"]).disabled_steps == ["tidy"]


def test_bad_input_gets_its_status_and_nothing_is_queued(app):
    greet_job(app)
    otto = Api(app, "otto")
    wrong_type = otto.post("/jobs/greet/runs", json={"params": {"who": "x", "times": "many"}})
    assert wrong_type.status_code == 422
    assert "times" in wrong_type.get_json()["fields"]
    missing = otto.post("/jobs/greet/runs", json={"params": {}})
    assert missing.get_json()["fields"] == {"who": "required"}
    unknown_step = otto.post(
        "/jobs/greet/runs", json={"params": {"who": "x"}, "steps": {"x": False}}
    )
    assert unknown_step.status_code == 422
    shape = otto.post("/jobs/greet/runs", json={"params": [1], "extra": True})
    assert set(shape.get_json()["fields"]) == {"params", "extra"}
    not_json = otto.post("/jobs/greet/runs", data="{nope", content_type="application/json")
    assert (not_json.status_code, not_json.get_json()["error"]) == (400, "bad_request")
    not_object = otto.post("/jobs/greet/runs", json=[1, 2])
    assert not_object.status_code == 400
    huge = otto.post("/jobs/greet/runs", data=b'{"params": {"who": "' + b"x" * 2_000_000 + b'"}}')
    assert huge.status_code == 413
    assert huge.get_json()["error"] == "request_entity_too_large"
    assert otto.post("/jobs/nope/runs", json={}).status_code == 404
    assert runs_of(app, "greet") == []
    assert otto.get("/no-such-thing").get_json()["error"] == "not_found"
    assert otto.delete("/runs").status_code == 405


@pytest.fixture
def any_db_runner(any_db_app):
    yield start_runner(any_db_app)
    stop_runner(any_db_app)


def test_wait_answers_the_finished_run_and_logs_page_by_seq(any_db_app, any_db_runner):
    app = any_db_app
    greet_job(app)
    otto = Api(app, "otto")
    response = otto.post("/jobs/greet/runs?wait=30", json={"params": {"who": "ada", "times": 3}})
    assert response.status_code == 200
    run = response.get_json()
    assert run["state"] == "SUCCEEDED"
    assert [(s["name"], s["state"], s["output"]) for s in run["steps"]][0] == (
        "say",
        "SUCCEEDED",
        {"said": 3},
    )
    everything = otto.get(f"/runs/{run['id']}/logs").get_json()
    hellos = [line for line in everything["lines"] if line["message"].startswith("hello")]
    assert [line["message"] for line in hellos] == ["hello ada 0", "hello ada 1", "hello ada 2"]
    assert {line["step"] for line in hellos} == {"say"}
    first = hellos[0]["seq"]
    page = otto.get(f"/runs/{run['id']}/logs?after={first}&limit=1").get_json()
    assert [line["message"] for line in page["lines"]] == ["hello ada 1"]
    assert (page["next_after"], page["more"]) == (first + 1, True)


def test_abort_then_replay(app):
    greet_job(app)  # no runner: the run stays queued until aborted
    otto = Api(app, "otto")
    run_id = otto.post("/jobs/greet/runs", json={"params": {"who": "x"}}).get_json()["id"]
    aborted = otto.post(f"/runs/{run_id}/abort")
    assert (aborted.status_code, aborted.get_json()["state"]) == (202, "CANCELED")
    again = otto.post(f"/runs/{run_id}/abort")
    assert (again.status_code, again.get_json()["error"]) == (409, "conflict")
    no_failed_step = otto.post(f"/runs/{run_id}/replay", json={"from_failed_step": True})
    assert no_failed_step.status_code == 409
    replayed = otto.post(f"/runs/{run_id}/replay", json={})
    assert replayed.status_code == 202
    document = otto.get(f"/runs/{replayed.get_json()['id']}").get_json()
    assert (document["trigger"], document["replay_of"], document["params"]["who"]) == (
        "replay",
        run_id,
        "x",
    )
    assert otto.post("/runs/99999/abort").status_code == 404


def test_idempotency_key_gives_the_same_run_or_409(app):
    greet_job(app)
    otto = Api(app, "otto")
    key = {"Idempotency-Key": "nightly-2026-01-31"}
    body = {"params": {"who": "x"}}
    first = otto.post("/jobs/greet/runs", json=body, headers=key)
    repeat = otto.post("/jobs/greet/runs", json={"params": {"who": "x"}}, headers=key)
    assert first.status_code == repeat.status_code == 202
    assert repeat.get_json()["id"] == first.get_json()["id"]
    other = otto.post("/jobs/greet/runs", json={"params": {"who": "y"}}, headers=key)
    assert (other.status_code, other.get_json()["error"]) == (409, "conflict")
    bad = otto.post("/jobs/greet/runs", json={"params": {}}, headers={"Idempotency-Key": "k2"})
    assert bad.status_code == 422  # refused: the key stays free for a corrected request
    fixed = otto.post("/jobs/greet/runs", json={"params": {}}, headers={"Idempotency-Key": "k2"})
    assert fixed.status_code == 422
    assert len(runs_of(app, "greet")) == 1
    # another user's key space is their own
    ada = Api(app, "ada").post("/jobs/greet/runs", json=body, headers=key)
    assert ada.get_json()["id"] != first.get_json()["id"]


def test_idempotency_keys_are_exact_on_mariadb(make_app, mariadb_url):
    app = make_app(mariadb_url)  # MariaDB compares strings without case
    greet_job(app)
    otto = Api(app, "otto")
    body = {"params": {"who": "x"}}
    lower = otto.post("/jobs/greet/runs", json=body, headers={"Idempotency-Key": "abc"})
    upper = otto.post("/jobs/greet/runs", json=body, headers={"Idempotency-Key": "ABC"})
    again = otto.post("/jobs/greet/runs", json=body, headers={"Idempotency-Key": "abc"})
    assert lower.status_code == upper.status_code == again.status_code == 202
    assert upper.get_json()["id"] != lower.get_json()["id"] == again.get_json()["id"]
    assert len(runs_of(app, "greet")) == 2


def test_job_ids_in_urls_are_exact_on_mariadb(make_app, mariadb_url):
    app = make_app(mariadb_url)
    greet_job(app)
    ada = Api(app, "ada")
    assert ada.get("/jobs/GREET").status_code == 404
    assert ada.post("/jobs/Greet/runs", json={"params": {"who": "x"}}).status_code == 404
    assert ada.get("/jobs/greet").status_code == 200
    assert runs_of(app, "greet") == []


def test_an_id_in_capitals_never_revives_a_deleted_job(any_db_app):
    app = any_db_app  # MariaDB compares ids without case: GREET would find greet
    ada = Api(app, "ada")
    body = {"steps": [python_step("say", "ctx.log.info('hi')")]}
    assert ada.post("/jobs", json={"id": "greet", **body}).status_code == 201
    assert ada.delete("/jobs/greet").status_code == 204
    refused = ada.post("/jobs", json={"id": "GREET", **body})
    assert refused.status_code == 422  # ids are lower case: never another case of one
    assert list(refused.get_json()["fields"]) == ["id"]
    editor = app.test_client()
    sign_in(editor, "ada")
    assert editor.post("/jobs/new", data=new_job_form(editor, id="GREET")).status_code == 422
    toml = '[[jobs]]\nid = "GREET"\n[[jobs.steps]]\nname = "s"\ntype = "python"\ncode = "pass"\n'
    with get_database(app).session_scope() as db:
        assert import_jobs(db, toml).errors[0].startswith("jobs[0] GREET › id: ")
    with get_database(app).session_scope() as db:
        jobs = db.execute(sa.select(Job.id, Job.version, Job.deleted_at.is_not(None))).all()
        versions = db.scalars(sa.select(JobVersion.definition)).all()
    assert [tuple(job) for job in jobs] == [("greet", 1, True)]  # still deleted, as it was
    assert [definition["id"] for definition in versions] == ["greet"]
    revived = ada.post("/jobs", json={"id": "greet", **body})  # its own id brings it back
    assert revived.status_code == 201 and revived.get_json()["id"] == "greet"


def test_a_tag_limited_role_sees_only_its_jobs_and_their_runs(app):
    make_job(app, "team-job", **TEAM_JOB)
    make_job(app, "other-job", tags=["finance"])
    with get_database(app).session_scope() as db:
        role = Role(
            name="team-data-ops",
            permissions=["job:view", "job:run", "job:edit"],
            job_tags=["team-data"],
        )
        db.add(role)
        db.add(User(username="tess", role=role, password_hash=PASSWORD_HASH))
    ada = Api(app, "ada")
    hidden_run = ada.post("/jobs/other-job/runs", json={}).get_json()["id"]
    tess = Api(app, "tess")
    assert [job["id"] for job in tess.get("/jobs").get_json()["jobs"]] == ["team-job"]
    assert tess.get("/jobs/other-job").status_code == 404
    assert tess.post("/jobs/other-job/runs", json={}).status_code == 404
    assert tess.get(f"/runs/{hidden_run}").status_code == 404
    assert tess.get(f"/runs/{hidden_run}/logs").status_code == 404
    own_run = tess.post("/jobs/team-job/runs", json={}).get_json()["id"]
    assert [r["id"] for r in tess.get("/runs").get_json()["runs"]] == [own_run]
    outside = tess.post(
        "/jobs", json={"id": "new", "steps": [python_step("a", "pass")], "tags": ["finance"]}
    )
    assert (outside.status_code, list(outside.get_json()["fields"])) == (422, ["tags"])
    assert len(runs_of(app, "other-job")) == 1


def test_runs_are_paged_newest_first_by_keyset(app):
    make_job(app, "tick", overlap="parallel")
    api = Api(app, "otto")
    ids = [api.post("/jobs/tick/runs", json={}).get_json()["id"] for _ in range(5)]
    first = api.get("/runs?limit=2").get_json()
    second = api.get(f"/runs?limit=2&after={first['next_after']}").get_json()
    third = api.get(f"/runs?limit=2&after={second['next_after']}").get_json()
    pages = [[r["id"] for r in page["runs"]] for page in (first, second, third)]
    assert pages == [ids[:-3:-1], ids[2:0:-1], ids[:1]]
    assert third["next_after"] is None
    assert api.get("/runs?since=2000-01-01&until=2000-01-02").get_json()["runs"] == []
    assert api.get("/runs?since=yesterday").status_code == 422
