"""Jobs that start jobs: `then` chains, depends_on, the call_job step, and cycles refused."""

import time

import pytest
import sqlalchemy as sa

from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch, request_abort
from app.engine.service import start_runner, stop_runner
from app.job_forms import job_to_form
from app.jobs_io import import_jobs
from app.jobspec import job_definition
from app.models import Job, Run
from tests.conftest import csrf_token, sign_in
from tests.engine_helpers import log_messages, make_job, python_step, wait_for_run


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


def trigger(app, job_id, params=None):
    return dispatch(get_database(app), vault(app), job_id, "manual", params)


def children_of(app, run_id: int, wanted: int = 1, timeout: float = 15) -> list[Run]:
    """Wait until the run has started ``wanted`` runs (chains start after it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_database(app).session_scope() as db:
            runs = db.scalars(sa.select(Run).where(Run.parent_run_id == run_id)).all()
        if len(runs) >= wanted:
            return runs
        assert time.monotonic() < deadline, f"run {run_id} started {len(runs)} runs"
        time.sleep(0.05)


def messages(app, run_id: int) -> list[str]:
    return [message for _, _, message in log_messages(app, run_id)]


def call_job(name: str, job: str, **fields) -> dict:
    return {"name": name, "type": "call_job", "job": job, **fields}


def app_on(request, make_app, backend: str, **extra: str):
    """An app on the embedded SQLite or on the session's PostgreSQL / MariaDB database."""
    url = None if backend == "sqlite" else request.getfixturevalue(f"{backend}_url")
    return make_app(url, **extra)


@pytest.fixture
def any_db_runner(any_db_app):
    started = start_runner(any_db_app)
    yield started
    stop_runner(any_db_app)


def test_a_chained_job_starts_with_the_parents_output_and_both_run_pages_link(
    any_db_app, any_db_runner
):
    app = any_db_app
    make_job(
        app,
        "publish",
        params=[{"name": "day", "type": "string", "required": True}],
        steps=[python_step("say", "ctx.log.info('publishing ' + ctx.params['day'])")],
    )
    make_job(app, "cleanup")
    make_job(
        app,
        "extract",
        steps=[python_step("x", "ctx.set_output({'day': '2024-05-31'})")],
        then=[
            {"job": "publish", "on": "success", "params": {"day": "{{ steps['x'].output.day }}"}},
            {"job": "cleanup", "on": "failure"},
        ],
    )
    parent = trigger(app, "extract")
    assert wait_for_run(app, parent.id)["state"] == "SUCCEEDED"
    [child] = children_of(app, parent.id)
    document = wait_for_run(app, child.id)
    assert (document["job"], document["trigger"]) == ("publish", "chain")
    assert document["params"] == {"day": "2024-05-31"}
    assert document["state"] == "SUCCEEDED"
    assert f"chained publish → run #{child.id}" in messages(app, parent.id)
    with get_database(app).session_scope() as db:
        assert db.scalar(sa.select(sa.func.count()).where(Run.job_id == "cleanup")) == 0

    vera = app.test_client()
    sign_in(vera, "vera")
    parent_page = vera.get(f"/runs/{parent.id}").get_data(as_text=True)
    assert f'<a href="/runs/{child.id}">run #{child.id}</a> of <code>publish</code>' in parent_page
    child_page = vera.get(f"/runs/{child.id}").get_data(as_text=True)
    assert f'Started by <a href="/runs/{parent.id}">run #{parent.id}</a>' in child_page
    assert "of job <code>extract</code>" in child_page


def test_on_failure_chains_only_a_failed_run_and_a_deleted_target_is_a_log_line(app, runner):
    make_job(
        app,
        "cleanup",
        params=[{"name": "why", "type": "string"}],
        steps=[python_step("tidy", "ctx.log.info('tidy')")],
    )
    make_job(app, "gone")
    with get_database(app).session_scope() as db:
        db.get(Job, "gone").deleted_at = db.get(Job, "gone").created_at
    make_job(
        app,
        "flaky",
        params=[{"name": "fail", "type": "bool", "default": False}],
        steps=[python_step("work", "if ctx.params['fail']:\n    raise RuntimeError('boom')")],
        then=[
            {"job": "cleanup", "on": "failure", "params": {"why": "{{ run.state }}"}},
            {"job": "gone", "on": "always"},
        ],
    )
    succeeded = trigger(app, "flaky", {"fail": False})
    assert wait_for_run(app, succeeded.id)["state"] == "SUCCEEDED"
    failed = trigger(app, "flaky", {"fail": True})
    assert wait_for_run(app, failed.id)["state"] == "FAILED"
    [cleanup] = children_of(app, failed.id)
    assert wait_for_run(app, cleanup.id)["params"] == {"why": "FAILED"}
    with get_database(app).session_scope() as db:  # hooks run in order: the success's is done
        chained = db.scalars(sa.select(Run.parent_run_id).where(Run.job_id == "cleanup")).all()
    assert chained == [failed.id]
    for run in (succeeded, failed):
        wait_for_run(app, run.id)
        deadline = time.monotonic() + 10
        wanted = "chained gone not started: the job does not exist (deleted?)"
        while wanted not in messages(app, run.id):
            assert time.monotonic() < deadline, messages(app, run.id)
            time.sleep(0.05)
    assert wait_for_run(app, failed.id)["state"] == "FAILED"  # the parent's outcome stays


def test_depends_on_skips_the_run_with_the_reason_until_the_dependency_succeeds(app, runner):
    make_job(
        app,
        "extract",
        params=[{"name": "fail", "type": "bool", "default": False}],
        steps=[python_step("work", "if ctx.params['fail']:\n    raise RuntimeError('boom')")],
    )
    make_job(app, "nightly", depends_on=["extract"])
    never = wait_for_run(app, trigger(app, "nightly").id)
    assert (never["state"], never["reason"]) == ("SKIPPED", "dependency extract: it has never run")
    failed = trigger(app, "extract", {"fail": True})
    wait_for_run(app, failed.id)
    skipped = wait_for_run(app, trigger(app, "nightly").id)
    reason = f"dependency extract: latest run #{failed.id} FAILED"
    assert (skipped["state"], skipped["reason"]) == ("SKIPPED", reason)
    assert skipped["steps"] == []
    assert f"run ended SKIPPED: {reason}" in messages(app, skipped["id"])
    wait_for_run(app, trigger(app, "extract").id)
    assert wait_for_run(app, trigger(app, "nightly").id)["state"] == "SUCCEEDED"


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_call_job_waits_for_the_child_and_takes_its_outcome_with_a_pool_of_one(
    request, make_app, backend
):
    app = app_on(request, make_app, backend, runner_pool_size="1")  # no slot for the child
    assert start_runner(app).pool_size == 1
    try:
        make_job(
            app,
            "child",
            params=[{"name": "n", "type": "int", "required": True}],
            steps=[
                python_step(
                    "calc",
                    "n = ctx.params['n']\n"
                    "if n < 0:\n    raise ValueError('negative')\n"
                    "ctx.set_output({'double': n * 2})",
                )
            ],
        )
        make_job(
            app,
            "caller",
            params=[{"name": "n", "type": "int", "default": 3}],
            steps=[
                call_job("call", "child", params={"n": "{{ params.n }}"}),
                python_step(
                    "use", "ctx.log.info(f\"got {ctx.steps['call'].output['outputs']['calc']}\")"
                ),
            ],
        )
        parent = trigger(app, "caller")
        document = wait_for_run(app, parent.id)
        assert document["state"] == "SUCCEEDED"
        [child] = children_of(app, parent.id)
        assert document["steps"][0]["output"] == {
            "run_id": child.id,
            "state": "SUCCEEDED",
            "outputs": {"calc": {"double": 6}},
        }
        assert "got {'double': 6}" in messages(app, parent.id)
        child_document = wait_for_run(app, child.id)
        assert (child_document["trigger"], child_document["params"]) == ("chain", {"n": 3})

        failing = trigger(app, "caller", {"n": -1})
        document = wait_for_run(app, failing.id)
        [failed_child] = children_of(app, failing.id)
        assert document["state"] == "FAILED"
        assert document["steps"][0]["error"].startswith(
            f"child run #{failed_child.id} ended FAILED"
        )
        assert document["steps"][1]["state"] == "NOT_RUN"
    finally:
        stop_runner(app)


def test_a_run_aborted_before_it_started_chains_nothing_even_always(app):
    make_job(app, "after")
    make_job(app, "work", then=[{"job": "after", "on": "always"}])
    runner = start_runner(app, claim_queued=False)  # runs only what it is told to
    try:
        never_started = trigger(app, "work")
        assert request_abort(get_database(app), never_started.id).state == "CANCELED"
        started = trigger(app, "work")
        assert runner.execute_now(started.id) == "SUCCEEDED"
        [chained] = children_of(app, started.id)  # after-run hooks run one by one, in order
    finally:
        stop_runner(app)
    with get_database(app).session_scope() as db:
        followers = db.scalars(sa.select(Run.parent_run_id).where(Run.job_id == "after")).all()
    assert followers == [started.id]
    assert not [m for m in messages(app, never_started.id) if "chained" in m]


@pytest.mark.parametrize("how", ["abort", "timeout"])
def test_aborting_the_parent_or_its_step_timeout_aborts_the_child(app, runner, how):
    make_job(app, "slow", steps=[python_step("nap", "import time\ntime.sleep(600)")])
    timeout = {"timeout_seconds": 2} if how == "timeout" else {}
    make_job(app, "caller", steps=[call_job("call", "slow", **timeout)])
    parent = trigger(app, "caller")
    [child] = children_of(app, parent.id)
    wait_for_run(app, child.id, states={"RUNNING"})
    if how == "abort":
        request_abort(get_database(app), parent.id)
    parent_document = wait_for_run(app, parent.id, timeout=15)
    assert wait_for_run(app, child.id, timeout=5)["state"] == "CANCELED"
    if how == "abort":
        assert parent_document["state"] == "CANCELED"
    else:
        assert parent_document["state"] == "TIMED_OUT"
        assert f"child run #{child.id} was aborted" in parent_document["steps"][0]["error"]


def run_import(app, text):
    with get_database(app).session_scope() as db:
        return import_jobs(db, text)


def job(job_id: str, extra: str = "") -> str:
    step = '[[jobs.steps]]\nname = "s"\ntype = "python"\ncode = "pass"\n'
    return f'[[jobs]]\nid = "{job_id}"\n{extra}\n{step}\n'


def test_cycles_are_refused_in_a_toml_import_within_the_file_and_with_stored_jobs(app):
    calls_a = '[[jobs.steps]]\nname = "call-a"\ntype = "call_job"\njob = "a"\n'
    within = job("a", 'then = [{ job = "b" }]') + job("b") + calls_a
    assert run_import(app, within).errors == [
        "jobs[0] a › then[0] b › job: cycle: a → b → a",
    ]
    assert run_import(app, job("x", 'then = [{ job = "y" }]') + job("y")).errors == []
    assert run_import(
        app, job("y", 'depends_on = ["z"]\nthen = [{ job = "x" }]') + job("z")
    ).errors == ["jobs[0] y › then[0] x › job: cycle: y → x → y"]
    needs = job("p", 'depends_on = ["q"]') + job("q", 'depends_on = ["p"]')
    assert run_import(app, needs).errors == ["jobs[0] p › depends_on: cycle: p → q → p"]
    usual = job("load", 'depends_on = ["fetch"]') + job("fetch", 'then = [{ job = "load" }]')
    assert run_import(app, usual).errors == []  # needs + starts is the usual pattern, no cycle
    assert run_import(app, job("m") + calls_a.replace('"a"', '"ghost"')).errors == [
        "jobs[0] m › steps[1] call-a › job: unknown job 'ghost'"
    ]


def test_the_editor_saves_chaining_and_shows_a_cycle_next_to_the_field(app):
    make_job(app, "publish", params=[{"name": "day", "type": "string"}])
    make_job(app, "report")
    client = app.test_client()
    sign_in(client, "eddie")
    with get_database(app).session_scope() as db:
        form = job_to_form(job_definition(db.get(Job, "report")))
    form |= {
        "csrf_token": csrf_token(client, "/jobs/report/edit"),
        "depends_on": "",
        "then-0.job": "publish",
        "then-0.on": "always",
        "then-0.params": "day = {{ params.day }}",
        "then-1.job": "",
        "then-1.params": "",
    }
    response = client.post("/jobs/report/edit", data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    with get_database(app).session_scope() as db:
        assert db.get(Job, "report").then == [
            {"job": "publish", "on": "always", "params": {"day": "{{ params.day }}"}}
        ]
    page = client.get("/jobs/report/edit").get_data(as_text=True)
    assert 'name="then-0.params"' in page and "day = {{ params.day }}</textarea>" in page

    with get_database(app).session_scope() as db:
        form = job_to_form(job_definition(db.get(Job, "publish")))
    form |= {"csrf_token": csrf_token(client, "/jobs/publish/edit"), "then-0.job": "report"}
    response = client.post("/jobs/publish/edit", data=form)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert (
        '<p class="error" id="job-then-0-job-error" role="alert">'
        "cycle: publish → report → publish</p>"
    ) in page
    with get_database(app).session_scope() as db:
        assert db.get(Job, "publish").then == []
    form |= {
        "then-0.job": "",
        "steps-1.name": "call",
        "steps-1.type": "call_job",
        "steps-1.enabled": "true",
        "steps-1.config.job": "report",
        "steps-1.config.params": "",
    }
    page = client.post("/jobs/publish/edit", data=form).get_data(as_text=True)
    assert (
        '<p class="error" id="step-1-call-job-job-error">cycle: publish → report → publish</p>'
        in page
    )
