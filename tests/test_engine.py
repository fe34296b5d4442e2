"""The run engine through its one door: dispatch → runner → steps → logs, on a real database."""

import time

import pytest
import sqlalchemy as sa

from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import DispatchError, dispatch, replay, request_abort
from app.engine.service import start_runner, stop_runner
from app.models import Run, StepRun
from tests.engine_helpers import log_messages, make_job, python_step, wait_for_run


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


def trigger(app, job_id, params=None, **options):
    return dispatch(get_database(app), vault(app), job_id, "manual", params, **options)


def test_manual_run_with_parameters_succeeds_and_logs_in_order(app, runner):
    make_job(
        app,
        "greet",
        params=[
            {"name": "who", "type": "string", "required": True},
            {"name": "times", "type": "int", "default": 2},
        ],
        steps=[
            python_step(
                "say",
                "for i in range(ctx.params['times']):\n"
                "    ctx.log.info(f\"hello {ctx.params['who']} {i}\")\n"
                "ctx.set_output({'said': ctx.params['times']})",
            ),
            python_step("after", "print('earlier said', ctx.steps['say'].output['said'])"),
        ],
    )
    run = trigger(app, "greet", {"who": "ada", "times": "3"})
    document = wait_for_run(app, run.id)
    assert document["state"] == "SUCCEEDED"
    assert document["params"] == {"who": "ada", "times": 3}
    assert [s["name"] for s in document["steps"]] == ["say", "after"]
    assert document["steps"][0]["output"] == {"said": 3}
    messages = [m for _, _, m in log_messages(app, run.id)]
    assert [m for m in messages if m.startswith(("hello", "earlier"))] == [
        "hello ada 0",
        "hello ada 1",
        "hello ada 2",
        "earlier said 3",
    ]
    seqs = [seq for seq, _, _ in log_messages(app, run.id)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_bad_parameters_are_refused_and_nothing_is_queued(app):
    make_job(
        app,
        "typed",
        params=[
            {"name": "n", "type": "int", "required": True},
            {"name": "mode", "type": "choice", "choices": ["a", "b"], "default": "a"},
        ],
    )
    with pytest.raises(DispatchError) as raised:
        trigger(app, "typed", {"n": "ten", "mode": "c", "extra": "1"})
    assert raised.value.fields == {
        "extra": "unknown parameter (this job takes: mode, n)",
        "n": "expected a whole number, got 'ten'",
        "mode": "expected one of a, b, got 'c'",
    }
    with pytest.raises(DispatchError) as raised:
        trigger(app, "typed", {})
    assert raised.value.fields == {"n": "required"}
    with get_database(app).session_scope() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Run)) == 0


def test_conditions_disabled_steps_and_switched_off_steps_are_recorded_skipped(app, runner):
    make_job(
        app,
        "flow",
        params=[{"name": "full", "type": "bool", "default": False}],
        steps=[
            python_step("count", "ctx.set_output({'rows': 5})"),
            python_step("big-only", "print('big')", when="steps['count'].output.rows > 1000"),
            python_step("full-only", "print('full')", when="params.full"),
            python_step("off", "print('off')", enabled=False),
            python_step("tail", "print('tail')"),
        ],
    )
    run = trigger(app, "flow", {"full": "true"}, disabled_steps=["tail"])
    document = wait_for_run(app, run.id)
    states = {s["name"]: (s["state"], s["error"]) for s in document["steps"]}
    assert document["state"] == "SUCCEEDED"
    assert states["big-only"] == ("SKIPPED", "when \"steps['count'].output.rows > 1000\" is False")
    assert states["full-only"][0] == "SUCCEEDED"
    assert states["off"] == ("SKIPPED", "disabled in the job")
    assert states["tail"] == ("SKIPPED", "switched off for this run")


def test_continue_ends_partial_and_stop_marks_later_steps_not_run(app, runner):
    make_job(
        app,
        "partial",
        steps=[
            python_step("optional", "1/0", on_failure="continue"),
            python_step("main", "print('main ran')"),
        ],
    )
    document = wait_for_run(app, trigger(app, "partial").id)
    assert document["state"] == "PARTIAL"
    assert document["reason"] == "ZeroDivisionError: division by zero"
    make_job(
        app,
        "stops",
        steps=[
            python_step("breaks", "raise ValueError('bad row 7')"),
            python_step("never", "print('x')"),
        ],
    )
    document = wait_for_run(app, trigger(app, "stops").id)
    assert document["state"] == "FAILED"
    assert [(s["name"], s["state"]) for s in document["steps"]] == [
        ("breaks", "FAILED"),
        ("never", "NOT_RUN"),
    ]
    assert any("ValueError: bad row 7" in m for _, _, m in log_messages(app, document["id"]))


def test_retry_with_backoff_shows_every_attempt(app, runner, tmp_path):
    counter = tmp_path / "attempts"
    make_job(
        app,
        "flaky",
        retry={"attempts": 3, "backoff": "exponential", "base_seconds": 1, "max_seconds": 2},
        steps=[
            python_step(
                "flaky",
                f"""
from pathlib import Path
p = Path({str(counter)!r})
n = int(p.read_text()) + 1 if p.exists() else 1
p.write_text(str(n))
if n < 3:
    raise RuntimeError(f"attempt {{n}} failed")
print("third time lucky")
""",
            )
        ],
    )
    run = trigger(app, "flaky")
    document = wait_for_run(app, run.id)
    assert document["state"] == "SUCCEEDED"
    assert document["steps"][0]["attempts"] == 3
    with get_database(app).session_scope() as db:
        attempts = db.execute(
            sa.select(StepRun.attempt, StepRun.state, StepRun.error)
            .where(StepRun.run_id == run.id)
            .order_by(StepRun.id)
        ).all()
    assert [tuple(a) for a in attempts] == [
        (1, "FAILED", "RuntimeError: attempt 1 failed"),
        (2, "FAILED", "RuntimeError: attempt 2 failed"),
        (3, "SUCCEEDED", None),
    ]
    retries = [m for _, level, m in log_messages(app, run.id) if "retrying in" in m]
    assert retries[0].startswith("flaky: attempt 1/3 FAILED; retrying in 1.0s")
    assert retries[1].startswith("flaky: attempt 2/3 FAILED; retrying in 2.0s")


def test_timeout_ends_a_sleeping_step_in_seconds(app, runner):
    make_job(
        app, "sleepy", steps=[python_step("nap", "import time\ntime.sleep(600)", timeout_seconds=1)]
    )
    started = time.monotonic()
    document = wait_for_run(app, trigger(app, "sleepy").id, timeout=15)
    assert document["state"] == "TIMED_OUT"
    assert time.monotonic() - started < 6
    assert document["steps"][0]["state"] == "TIMED_OUT"


def test_abort_ends_a_running_step_within_five_seconds(app, runner):
    make_job(
        app, "long", steps=[python_step("nap", "import time\nprint('sleeping')\ntime.sleep(600)")]
    )
    run = trigger(app, "long")
    wait_for_run(app, run.id, states={"RUNNING"})
    time.sleep(0.3)
    asked = time.monotonic()
    request_abort(get_database(app), run.id)
    document = wait_for_run(app, run.id, timeout=10)
    assert document["state"] == "CANCELED"
    assert time.monotonic() - asked < 5


def test_abort_of_a_queued_run_cancels_it_at_once(app):
    make_job(app, "queued")
    run = trigger(app, "queued")  # no runner: it stays queued
    assert request_abort(get_database(app), run.id).state == "CANCELED"
    with pytest.raises(DispatchError, match="already ended CANCELED"):
        request_abort(get_database(app), run.id)


def test_overlap_skip_records_the_reason_and_queue_waits(app, runner):
    make_job(app, "single", steps=[python_step("nap", "import time\ntime.sleep(1)")])
    first = trigger(app, "single")
    second = trigger(app, "single")
    assert second.state == "SKIPPED"
    assert second.reason == f"overlap policy skip: run #{first.id} of this job is still active"
    make_job(
        app,
        "queued-job",
        overlap="queue",
        steps=[python_step("nap", "import time\ntime.sleep(0.5)")],
    )
    a, b = trigger(app, "queued-job"), trigger(app, "queued-job")
    a_doc, b_doc = wait_for_run(app, a.id), wait_for_run(app, b.id)
    assert a_doc["state"] == b_doc["state"] == "SUCCEEDED"
    assert b_doc["started_at"] >= a_doc["finished_at"]


def test_undefined_template_value_fails_the_step_with_a_clear_message(app, runner):
    make_job(app, "tpl", steps=[python_step("check", "print(1)", when="params.nope > 1")])
    document = wait_for_run(app, trigger(app, "tpl").id)
    assert document["state"] == "FAILED"
    assert "'dict object' has no attribute 'nope'" in document["steps"][0]["error"]


def test_replay_from_the_failed_step_reuses_earlier_outputs(app, runner, tmp_path):
    flag = tmp_path / "fixed"
    make_job(
        app,
        "two",
        steps=[
            python_step("extract", "ctx.set_output({'rows': 42})"),
            python_step(
                "load",
                f"""
from pathlib import Path
if not Path({str(flag)!r}).exists():
    raise RuntimeError("target down")
print("loading", ctx.steps['extract'].output['rows'])
""",
            ),
        ],
    )
    failed = wait_for_run(app, trigger(app, "two").id)
    assert failed["state"] == "FAILED"
    flag.write_text("yes")
    again = replay(get_database(app), vault(app), failed["id"], from_failed_step=True)
    document = wait_for_run(app, again.id)
    assert document["state"] == "SUCCEEDED"
    assert document["trigger"] == "replay" and document["replay_of"] == failed["id"]
    assert document["steps"][0]["state"] == "SKIPPED"
    assert document["steps"][0]["error"] == f"reused from run #{failed['id']}"
    assert any(m == "loading 42" for _, _, m in log_messages(app, again.id))


def test_secret_parameters_are_masked_in_the_run_and_its_log(app, runner):
    make_job(
        app,
        "secretive",
        params=[{"name": "token", "type": "secret", "required": True}],
        steps=[python_step("leak", "print('token is', ctx.params['token'])")],
    )
    run = trigger(app, "secretive", {"token": "s3cr3t-value"})
    document = wait_for_run(app, run.id)
    assert document["state"] == "SUCCEEDED"
    assert document["params"] == {"token": "••••••"}
    assert ("INFO", "token is ••••••") in [(lvl, m) for _, lvl, m in log_messages(app, run.id)]
    with get_database(app).session_scope() as db:
        assert "s3cr3t" not in db.get(Run, run.id).params_sealed  # encrypted at rest


def test_log_cap_keeps_the_database_safe_and_says_so(make_app):
    app = make_app(log_max_lines="50")
    start_runner(app)
    try:
        make_job(app, "chatty", steps=[python_step("talk", "for i in range(500):\n    print(i)")])
        document = wait_for_run(app, trigger(app, "chatty").id)
    finally:
        stop_runner(app)
    lines = log_messages(app, document["id"])
    assert document["state"] == "SUCCEEDED"
    assert len(lines) == 50
    assert lines[-1][1:] == (
        "WARNING",
        "log cap of 50 lines reached: further lines of this run are dropped "
        "(NOMAFLOW_LOG_MAX_LINES)",
    )


def test_runs_left_running_by_a_dead_process_become_interrupted(app):
    make_job(app, "crashy", requeue_interrupted=True)
    make_job(app, "plain")
    from app.engine.runner import node_name

    host = node_name().rsplit("/", 1)[0]
    with get_database(app).session_scope() as db:
        for job_id in ("crashy", "plain"):
            db.add(
                Run(
                    job_id=job_id,
                    trigger="manual",
                    state="RUNNING",
                    node=f"{host}/999999",
                    params={},
                    params_sealed=vault(app).seal({}),
                )
            )
    start_runner(app)
    try:
        with get_database(app).session_scope() as db:
            runs = db.execute(sa.select(Run.job_id, Run.state, Run.trigger).order_by(Run.id)).all()
        assert [tuple(r) for r in runs[:2]] == [
            ("crashy", "INTERRUPTED", "manual"),
            ("plain", "INTERRUPTED", "manual"),
        ]
        requeued = [r for r in runs[2:]]
        assert [(r.job_id, r.trigger) for r in requeued] == [("crashy", "retry")]
    finally:
        stop_runner(app)


def test_another_hosts_run_is_interrupted_only_once_its_heartbeat_is_stale(app):
    from datetime import timedelta

    from app.db import utcnow
    from app.engine.runner import beat, mark_interrupted
    from app.models import Setting

    make_job(app, "remote")
    with get_database(app).session_scope() as db:
        for node in ("far/1", "near/2", "silent/3"):
            db.add(Run(job_id="remote", trigger="manual", state="RUNNING", node=node, params={}))
    beat(get_database(app), "far/1")
    beat(get_database(app), "near/2")
    with get_database(app).session_scope() as db:
        stale = (utcnow() - timedelta(seconds=60)).isoformat()
        db.get(Setting, "node:far/1").value = {"seen": stale}
    assert mark_interrupted(get_database(app), "this-host") == [1, 3]
    with get_database(app).session_scope() as db:
        states = db.execute(sa.select(Run.node, Run.state).order_by(Run.id)).all()
    assert [tuple(s) for s in states] == [
        ("far/1", "INTERRUPTED"),
        ("near/2", "RUNNING"),
        ("silent/3", "INTERRUPTED"),
    ]


def test_a_secret_in_a_step_error_or_output_is_masked_in_the_run(app, runner):
    make_job(
        app,
        "leaky",
        params=[{"name": "token", "type": "secret", "required": True}],
        steps=[
            python_step("echo", "ctx.set_output({'url': 'https://x/' + ctx.params['token']})"),
            python_step("fail", "raise RuntimeError('bad token ' + ctx.params['token'])"),
        ],
    )
    document = wait_for_run(app, trigger(app, "leaky", {"token": "tok-123456"}).id)
    assert document["state"] == "FAILED"
    assert document["reason"] == "RuntimeError: bad token ••••••"
    assert document["steps"][0]["output"] == {"url": "https://x/••••••"}
    assert "tok-123456" not in str(document)


def test_stopping_the_runner_interrupts_runs_in_flight_and_requeues_if_asked(app):
    make_job(
        app,
        "long-copy",
        requeue_interrupted=True,
        steps=[python_step("nap", "import time\nprint('working')\ntime.sleep(600)")],
    )
    start_runner(app)
    run = trigger(app, "long-copy")
    wait_for_run(app, run.id, states={"RUNNING"})
    time.sleep(0.3)
    stopped_at = time.monotonic()
    stop_runner(app)
    assert time.monotonic() - stopped_at < 5
    document = wait_for_run(app, run.id, timeout=1)
    assert (document["state"], document["reason"]) == (
        "INTERRUPTED",
        "the server stopped during the run",
    )
    with get_database(app).session_scope() as db:
        again = db.execute(sa.select(Run.state, Run.trigger).where(Run.id > run.id)).all()
    assert [tuple(r) for r in again] == [("QUEUED", "retry")]  # the next server runs it
