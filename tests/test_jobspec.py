"""One job definition: every problem named with its path, defaults filled, saves versioned."""

import copy
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.jobspec import apply_job, job_definition, validate_job
from app.models import AuditEvent, Job, JobVersion, Step, User


def job_table(**fields):
    """A valid [[jobs]] table as tomllib gives it; keyword arguments replace or add fields."""
    table = {
        "id": "nightly",
        "schedule": "0 2 * * *",
        "steps": [{"name": "hello", "type": "python", "code": "ctx.log.info('hi')\n"}],
    }
    table.update(fields)
    return table


def python_step(name, **fields):
    return {"name": name, "type": "python", "code": "pass\n", **fields}


def problems(table, index=0):
    spec, errors = validate_job(table, index)
    assert spec is None or not errors
    return [str(error) for error in errors]


def test_a_minimal_job_gets_every_default_filled():
    spec, errors = validate_job(job_table())
    assert errors == []
    assert spec == {
        "id": "nightly",
        "description": "",
        "tags": [],
        "enabled": True,
        "schedule": "0 2 * * *",
        "interval": None,
        "timezone": "UTC",
        "overlap": "skip",
        "max_parallel": 4,
        "grace_seconds": 300,
        "timeout_seconds": None,
        "log_level": "INFO",
        "requeue_interrupted": False,
        "retry": None,
        "params": [],
        "alerts": None,
        "depends_on": [],
        "then": [],
        "steps": [
            {
                "name": "hello",
                "type": "python",
                "enabled": True,
                "timeout_seconds": 3600,
                "when": None,
                "on_failure": "stop",
                "retry": None,
                "code": "ctx.log.info('hi')\n",
            }
        ],
    }


def test_a_full_job_in_the_design_shape_is_kept():
    table = job_table(
        description="Refresh the reporting store",
        tags=["etl", "nightly"],
        timezone="Europe/Paris",
        overlap="queue",
        grace_seconds=0,
        timeout_seconds=14400,
        log_level="DEBUG",
        retry={"attempts": 2, "backoff": "exponential", "base_seconds": 30, "jitter": True},
        params=[
            {"name": "day", "type": "date", "default": "{{ yesterday }}", "required": True},
            {"name": "since", "type": "date", "default": date(2024, 5, 31)},
            {"name": "at", "type": "datetime", "default": datetime(2024, 5, 31, 2, tzinfo=UTC)},
            {"name": "ratio", "type": "float", "default": 1},
            {"name": "tenant", "type": "choice", "choices": ["acme", "globex"], "default": "acme"},
        ],
        alerts={"channels": ["ops-mail"], "on_failure": True, "after_failures": 3},
        depends_on=["extract"],
        then=[{"job": "publish", "on": "always", "params": {"day": "{{ params.day }}"}}],
        steps=[
            python_step("a", when="params.full", on_failure="continue", timeout_seconds=60),
            {"name": "b", "type": "python", "callable": "tasks.load:run", "retry": {"attempts": 3}},
        ],
    )
    spec, errors = validate_job(table)
    assert errors == []
    assert spec["retry"] == {
        "attempts": 2,
        "backoff": "exponential",
        "base_seconds": 30,
        "max_seconds": 3600,
        "jitter": True,
    }
    assert [param.get("default") for param in spec["params"]] == [
        "{{ yesterday }}",
        "2024-05-31",
        "2024-05-31T02:00:00+00:00",
        1.0,
        "acme",
    ]
    assert spec["then"] == [
        {"job": "publish", "on": "always", "params": {"day": "{{ params.day }}"}}
    ]
    assert spec["steps"][0]["when"] == "params.full"
    assert spec["steps"][1]["callable"] == "tasks.load:run"
    assert spec["steps"][1]["retry"]["attempts"] == 3


def test_duplicate_step_names_are_reported_on_the_second_step():
    table = job_table(steps=[python_step("copy"), python_step("load"), python_step("copy")])
    assert problems(table, index=2) == [
        "jobs[2] nightly › steps[2] copy › name: duplicate step name 'copy' (also steps[0])"
    ]


def test_an_unknown_step_type_names_the_known_ones():
    table = job_table(steps=[{"name": "copy-customers", "type": "sql_copyy", "mode": "append"}])
    from app.steps import STEP_TYPES

    known = ", ".join(sorted(STEP_TYPES))
    assert "python" in known and "maintenance" in known
    assert problems(table) == [
        "jobs[0] nightly › steps[0] copy-customers › type: unknown step type 'sql_copyy' "
        f"(known: {known})"
    ]


def test_a_python_step_with_a_syntax_error_is_reported_by_the_step_type():
    table = job_table(steps=[python_step("say-hello", code="def broken(:\n    pass\n")])
    [error] = problems(table)
    assert error.startswith("jobs[0] nightly › steps[0] say-hello › code: syntax error on line 1")


def test_step_config_problems_come_from_the_step_type_under_the_step_path():
    table = job_table(steps=[{"name": "s", "type": "python", "callable": "nope", "url": "/x"}])
    assert problems(table) == [
        "jobs[0] nightly › steps[0] s › url: unknown field for a python step "
        "(known: callable, code, connectors)",
        "jobs[0] nightly › steps[0] s › callable: expected package.module:function",
    ]


def test_a_when_that_does_not_compile_is_reported():
    table = job_table(steps=[python_step("purge", when="steps['count-old'].output.rows >")])
    [error] = problems(table)
    assert error.startswith("jobs[0] nightly › steps[0] purge › when: not a valid expression:")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"name": "n", "type": "int", "default": "ten"}, "expected a whole number for type int"),
        ({"name": "n", "type": "int", "default": True}, "expected a whole number for type int"),
        ({"name": "b", "type": "bool", "default": "yes"}, "expected true or false for type bool"),
        ({"name": "d", "type": "date", "default": "31/05/2024"}, "expected a date (2024-05-31)"),
        ({"name": "c", "type": "choice", "choices": ["a"], "default": "z"}, "expected one of"),
        ({"name": "s", "type": "secret", "default": "hunter2"}, "a secret's default would be"),
    ],
)
def test_a_param_default_must_fit_its_type(param, message):
    [error] = problems(job_table(params=[param]))
    assert error.startswith(f"jobs[0] nightly › params[0] {param['name']} › default: {message}")


def test_a_template_default_fits_any_type():
    table = job_table(params=[{"name": "n", "type": "int", "default": "{{ params.x + 1 }}"}])
    assert problems(table) == []


def test_a_choice_param_needs_choices_and_names_are_unique():
    table = job_table(
        params=[
            {"name": "tenant", "type": "choice", "required": True},
            {"name": "tenant", "type": "string"},
            {"name": "x", "type": "colour"},
        ]
    )
    assert problems(table) == [
        "jobs[0] nightly › params[0] tenant › choices: a choice parameter needs a non-empty "
        "list of choices",
        "jobs[0] nightly › params[1] tenant › name: duplicate parameter name 'tenant' "
        "(also params[0])",
        "jobs[0] nightly › params[2] x › type: expected one of string, text, int, float, bool, "
        "date, datetime, choice, secret, connector, got 'colour'",
    ]


def test_every_problem_is_reported_not_only_the_first():
    table = job_table(
        id="Nightly Sync",
        colour="blue",
        schedule="61 2 * * *",
        timezone="Mars/Base",
        overlap="sometimes",
        retry={"attempts": 0},
        alerts={"on_failure": True, "page_the_ceo": True},
        then=[{"job": "publish", "on": "later"}],
        steps=[{"name": "a", "type": "python", "code": "x = (", "timeout_seconds": 0}],
    )
    assert problems(table) == [
        "jobs[0] Nightly Sync › colour: unknown job field 'colour' (known: id, description, "
        "tags, enabled, schedule, interval, timezone, overlap, max_parallel, grace_seconds, "
        "timeout_seconds, log_level, requeue_interrupted, retry, params, alerts, depends_on, "
        "then, steps)",
        "jobs[0] Nightly Sync › id: use 1-100 of a-z 0-9 . _ - (starting with a letter or digit)",
        "jobs[0] Nightly Sync › timezone: unknown timezone 'Mars/Base'",
        "jobs[0] Nightly Sync › schedule: minute field '61': the last value (61) is higher than "
        "the maximum value (59)",
        "jobs[0] Nightly Sync › overlap: expected one of skip, queue, parallel, got 'sometimes'",
        "jobs[0] Nightly Sync › retry › attempts: expected a whole number ≥ 1, got 0",
        "jobs[0] Nightly Sync › alerts › page_the_ceo: unknown alerts field 'page_the_ceo' "
        "(known: channels, on_failure, after_failures, on_recovery, long_run_minutes, "
        "min_duration_seconds, on_missed, on_success, subject, message)",
        "jobs[0] Nightly Sync › then[0] publish › on: expected one of success, failure, always, "
        "got 'later'",
        "jobs[0] Nightly Sync › steps[0] a › timeout_seconds: expected a whole number ≥ 1, got 0",
        "jobs[0] Nightly Sync › steps[0] a › code: syntax error on line 1: '(' was never closed",
    ]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"schedule": "0 2 * * *", "interval": "15m"}, "interval: give a schedule or an interval"),
        ({"schedule": None, "interval": "0m"}, "interval: '0m' is zero"),
        ({"steps": []}, "steps: a job needs at least one step"),
        ({"steps": "hello"}, "steps: expected a list of tables"),
        ({"depends_on": ["nightly"]}, "depends_on: a job cannot depend on itself"),
        ({"then": [{"job": "nightly"}]}, "then[0] nightly › job: a job cannot chain to itself"),
        ({"schedule": "0 2 * * " + "1," * 60 + "1"}, "schedule: use at most 120 characters"),
        ({"tags": "etl"}, "tags: expected a list of strings, got 'etl'"),
        ({"enabled": "yes"}, "enabled: expected true or false, got 'yes'"),
        ({"steps": [python_step("a", p={"day": date(2024, 1, 1)})]}, "p.day: TOML dates"),
    ],
)
def test_job_fields_are_checked(fields, error):
    table = {key: value for key, value in job_table(**fields).items() if value is not None}
    found = problems(table)
    assert any(error in problem for problem in found), found


def test_a_job_without_steps_is_refused():
    assert problems({"id": "empty"}) == [
        "jobs[0] empty › steps: a job needs at least one [[jobs.steps]]"
    ]


def user_named(db_session, username):
    return db_session.scalar(sa.select(User).where(User.username == username))


def versions(db_session, job_id):
    query = sa.select(JobVersion).where(JobVersion.job_id == job_id).order_by(JobVersion.version)
    return list(db_session.scalars(query))


def test_saving_creates_versions_only_when_the_definition_changes(any_db_app):
    database = get_database(any_db_app)
    table = job_table(
        tags=["etl"],
        retry={"attempts": 2, "backoff": "exponential"},
        params=[
            {"name": "ratio", "type": "float", "default": 0.1},
            {"name": "day", "type": "date", "default": date(2024, 5, 31), "required": True},
        ],
        alerts={"channels": ["ops"], "after_failures": 3},
        steps=[python_step("extract", retry={"attempts": 3}), python_step("load")],
    )
    spec, errors = validate_job(table)
    assert errors == []

    with database.session_scope() as db_session:
        eddie = user_named(db_session, "eddie")
        assert apply_job(db_session, spec, eddie, ip="10.0.0.1") == "created"
    with database.session_scope() as db_session:
        assert apply_job(db_session, copy.deepcopy(spec), None) == "unchanged"

    changed = copy.deepcopy(spec)
    changed["steps"] = [changed["steps"][1], changed["steps"][0]]  # reorder
    changed["steps"][0]["code"] = "print('load v2')\n"
    changed["steps"].append({**changed["steps"][1], "name": "report"})
    with database.session_scope() as db_session:
        assert apply_job(db_session, changed, user_named(db_session, "ada")) == "updated"

    with database.session_scope() as db_session:
        job = db_session.get(Job, "nightly")
        assert job.version == 2
        assert job_definition(job) == changed
        assert [(s.position, s.name) for s in job.steps] == [
            (0, "load"),
            (1, "extract"),
            (2, "report"),
        ]
        history = versions(db_session, "nightly")
        assert [(v.version, v.definition) for v in history] == [(1, spec), (2, changed)]
        assert history[0].created_by == user_named(db_session, "eddie").id
        events = db_session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.action, e.username, e.target_id, e.ip) for e in events] == [
            ("job.create", "eddie", "nightly", "10.0.0.1"),
            ("job.update", "ada", "nightly", ""),
        ]
        assert events[1].detail == {"version": 2, "changed": ["steps"]}


def test_steps_removed_from_a_definition_are_deleted(app):
    database = get_database(app)
    spec, _ = validate_job(job_table(steps=[python_step("a"), python_step("b")]))
    with database.session_scope() as db_session:
        apply_job(db_session, spec, None)
    spec["steps"] = spec["steps"][1:]
    with database.session_scope() as db_session:
        assert apply_job(db_session, spec, None) == "updated"
    with database.session_scope() as db_session:
        assert db_session.scalars(sa.select(Step.name)).all() == ["b"]


def test_a_deleted_job_with_the_same_id_is_revived_with_a_new_version(app):
    database = get_database(app)
    spec, _ = validate_job(job_table())
    with database.session_scope() as db_session:
        apply_job(db_session, spec, None)
        db_session.get(Job, "nightly").deleted_at = datetime.now(UTC)

    with database.session_scope() as db_session:
        assert apply_job(db_session, spec, None) == "created"

    with database.session_scope() as db_session:
        job = db_session.get(Job, "nightly")
        assert job.deleted_at is None
        assert job.version == 2
        assert [v.version for v in versions(db_session, "nightly")] == [1, 2]
        event = db_session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert (event.action, event.username, event.detail) == (
            "job.create",
            "system",
            {"version": 2, "revived": True},
        )
