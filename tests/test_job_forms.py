"""The editor's form fields translate to the job dict of DESIGN §8 and back."""

from app.job_forms import (
    error_field,
    errors_by_field,
    form_to_job,
    job_to_form,
    python_code_problems,
)
from app.jobspec import SpecError, validate_job

FULL_JOB = {
    "id": "reporting-nightly-sync",
    "description": "Refresh the reporting store",
    "tags": ["etl", "nightly"],
    "schedule": "0 2 * * *",
    "timezone": "Europe/Paris",
    "overlap": "parallel",
    "max_parallel": 2,
    "grace_seconds": 60,
    "timeout_seconds": 14400,
    "log_level": "DEBUG",
    "retry": {"attempts": 2, "backoff": "exponential", "base_seconds": 5, "max_seconds": 60},
    "depends_on": ["extract"],
    "params": [
        {"name": "day", "type": "date", "default": "{{ yesterday }}", "required": True},
        {"name": "limit", "type": "int", "default": 10, "help": "rows"},
        {"name": "full", "type": "bool", "default": False},
        {"name": "region", "type": "choice", "choices": ["eu", "us"], "default": "eu"},
    ],
    "steps": [
        {
            "name": "copy",
            "type": "sql_copy",
            "when": "params.full",
            "on_failure": "continue",
            "source": {"connector": "default", "table": "a"},
            "target": {"connector": "default", "table": "b"},
            "mode": "upsert",
            "key": ["id"],
            "create": True,
            "retry": {"attempts": 3},
        },
        {"name": "hello", "type": "python", "code": "x = 1\nctx.log.info('hi')\n"},
        {
            "name": "pull",
            "type": "http",
            "url": "https://example.org/x",
            "headers": {"Accept": "application/json"},
            "expect": [200, 201],
            "enabled": False,
            "timeout_seconds": 30,
        },
    ],
}


def canonical(data):
    spec, errors = validate_job(data)
    assert errors == [], errors
    return spec


def test_a_definition_survives_the_round_trip_through_the_form():
    spec = canonical(FULL_JOB)
    data, problems = form_to_job(job_to_form(spec))
    assert problems == {}
    assert canonical(data) == spec


def test_browser_line_endings_in_code_are_stored_as_newlines():
    form = job_to_form(canonical(FULL_JOB))
    form["steps-1.config.code"] = "a = 1\r\nb = 2\r\n"
    data, _ = form_to_job(form)
    assert data["steps"][1]["code"] == "a = 1\nb = 2\n"


def test_a_value_that_does_not_parse_stays_as_typed_and_validation_names_it():
    form = job_to_form(canonical(FULL_JOB))
    form["grace_seconds"] = "soon"
    form["steps-0.config.source.params"] = "{not json"
    data, problems = form_to_job(form)
    assert data["grace_seconds"] == "soon"
    assert problems == {
        "steps-0.config.source.params": "not valid JSON: Expecting property name "
        "enclosed in double quotes (line 1)"
    }
    _, errors = validate_job(data)
    assert errors_by_field(errors)["grace_seconds"].startswith("expected a whole number")


def test_schedule_kind_decides_which_of_cron_and_interval_is_kept():
    form = {"id": "j", "schedule_kind": "interval", "schedule": "0 2 * * *", "interval": "15m"}
    data, _ = form_to_job(form)
    assert data.get("schedule") is None and data["interval"] == "15m"
    data, _ = form_to_job({**form, "schedule_kind": "none"})
    assert "schedule" not in data and "interval" not in data


def test_error_paths_map_to_form_fields():
    assert error_field("jobs[0] j › schedule") == "schedule"
    assert error_field("jobs[0] j › retry › attempts") == "retry_attempts"
    assert error_field("jobs[0] j › params[1] day › default") == "params-1.default"
    assert error_field("jobs[0] j › steps[2] s › name") == "steps-2.name"
    assert error_field("jobs[0] j › steps[2] s › code") == "steps-2.config.code"
    assert error_field("jobs[0] j › steps[0] › target.table") == "steps-0.config.target.table"
    assert error_field("jobs[0] j › steps[0] s › retry › attempts") == "steps-0.retry"
    assert error_field("jobs[0] j › steps") == "steps"
    assert errors_by_field([SpecError("jobs[0] › id", "required")]) == {"id": "required"}


def test_new_or_changed_python_code_needs_python_edit_but_moving_it_does_not():
    before = canonical(FULL_JOB)
    moved = canonical({**FULL_JOB, "steps": list(reversed(FULL_JOB["steps"]))})
    assert python_code_problems(moved, [before]) == {}
    changed = canonical(
        {**FULL_JOB, "steps": [{"name": "hello", "type": "python", "code": "import os"}]}
    )
    assert list(python_code_problems(changed, [before])) == ["steps-0.config.code"]
    assert list(python_code_problems(before, [])) == ["steps-1.config.code"]
