"""Job files: import all or nothing, export what imports back unchanged, and `nomaflow jobs`."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.jobs_io import export_jobs, import_jobs
from app.models import AuditEvent, Job, JobVersion
from app.steps import STEP_TYPES

KNOWN = ", ".join(sorted(STEP_TYPES))

NIGHTLY = '''
[[jobs]]
id = "nightly"
schedule = "0 2 * * 1-5"
timezone = "Europe/Paris"
[[jobs.steps]]
name = "say-hello"
type = "python"
code = """
ctx.log.info("hello")
"""
'''

# Every field of DESIGN §8 that this version supports, with code that is hard to quote.
EVERYTHING = r"""
[[jobs]]
id = "reporting-nightly-sync"
description = '''
Refresh the reporting store.
Runs after "extract".'''
tags = ["etl", "nightly"]
schedule = "0 2 * * 1-5"
timezone = "Europe/Paris"
overlap = "queue"
max_parallel = 2
grace_seconds = 0
timeout_seconds = 14400
log_level = "DEBUG"
requeue_interrupted = true
depends_on = ["extract"]

[jobs.retry]
attempts = 2
backoff = "exponential"
base_seconds = 60
max_seconds = 600
jitter = true

[[jobs.params]]
name = "day"
type = "date"
default = "{{ yesterday }}"
required = true
help = "Business day to load"

[[jobs.params]]
name = "since"
type = "date"
default = 2024-05-31

[[jobs.params]]
name = "tenant"
type = "choice"
choices = ["acme", "globex"]

[jobs.alerts]
channels = ["ops-bell"]
on_failure = true
after_failures = 3

[[jobs.then]]
job = "extract"
on = "failure"
params = { day = "{{ params.day }}" }

[[jobs.steps]]
name = "say-hello"
type = "python"
timeout_seconds = 1800
when = "params.full"
on_failure = "continue"
code = '''
ctx.log.info(f"hello {ctx.params['day']}")
path = "C:\temp\new"
print("a \"quoted\" word")
ctx.set_output({"rows": 3})
'''

[jobs.steps.retry]
attempts = 3

[[jobs.steps]]
name = "plugin"
type = "python"
enabled = false
callable = "tasks.load:run"

[[jobs]]
id = "extract"
interval = "15m"

[[jobs.steps]]
name = "awkward"
type = "python"
code = "x = '''a'''\nprint('\\t')\r\n"

[[channels]]
name = "ops-bell"
kind = "in_app"
roles = ["operator"]
"""


def count(app, model) -> int:
    with get_database(app).session_scope() as db_session:
        return db_session.scalar(sa.select(sa.func.count()).select_from(model))


def run_import(app, text, **options):
    with app.app_context(), get_database(app).session_scope() as db_session:
        return import_jobs(db_session, text, **options)  # the app's keys, for [[channels]]


def run_export(app, ids=None):
    with get_database(app).session_scope() as db_session:
        return export_jobs(db_session, ids)


def test_an_import_with_three_errors_in_two_jobs_reports_all_and_writes_nothing(app):
    text = NIGHTLY + textwrap.dedent("""
        [[jobs]]
        id = "weekly"
        schedule = "0 3 * * 8"
        [[jobs.steps]]
        name = "a"
        type = "python"
        code = "x = ("
        [[jobs.steps]]
        name = "b"
        type = "sql_copyy"
        [[jobs]]
        id = "fine"
        [[jobs.steps]]
        name = "ok"
        type = "python"
        callable = "tasks.ok:run"
        timeout_seconds = 0
    """)
    result = run_import(app, text)
    assert result.errors == [
        "jobs[1] weekly › schedule: day-of-week field '8': '8' is not a day "
        "(0-7 with 0 and 7 = Sunday, or sun..sat)",
        "jobs[1] weekly › steps[0] a › code: syntax error on line 1: '(' was never closed",
        f"jobs[1] weekly › steps[1] b › type: unknown step type 'sql_copyy' (known: {KNOWN})",
        "jobs[2] fine › steps[0] ok › timeout_seconds: expected a whole number ≥ 1, got 0",
    ]
    assert result.outcomes == {}
    assert (count(app, Job), count(app, JobVersion), count(app, AuditEvent)) == (0, 0, 0)


def test_a_toml_syntax_error_is_one_error_with_line_and_column(app):
    result = run_import(app, '[[jobs]]\nid = "x"\nschedule = 0 2 * * *\n')
    assert len(result.errors) == 1
    assert result.errors[0].startswith("file: invalid TOML: ")
    assert "(at line 3, column 14)" in result.errors[0]


def test_sections_of_later_features_and_unknown_sections_are_refused(app):
    text = NIGHTLY + textwrap.dedent("""
        [[connectors]]
        name = "ops"
        [[variables]]
        name = "TOKEN"
        [[channels]]
        name = "ops-mail"
        [[widgets]]
        name = "w"
    """)
    assert run_import(app, text).errors == [
        "widgets: unknown section (a job file holds [[jobs]], [[connectors]], [[variables]] "
        "and [[channels]] tables)",
        "connectors[0] ops › kind: required",  # connectors and variables are checked like jobs
        "variables[0] TOKEN › value: required",
        "channels[0] ops-mail › kind: required",
    ]
    assert count(app, Job) == 0


def test_a_job_id_twice_in_one_file_is_refused(app):
    assert run_import(app, NIGHTLY + NIGHTLY).errors == [
        "jobs[1] nightly › id: duplicate job id 'nightly' (also jobs[0])"
    ]


def test_depends_on_and_then_must_name_jobs_in_the_file_or_the_database(app):
    run_import(app, NIGHTLY.replace('"nightly"', '"stored"'))
    text = NIGHTLY.replace(
        'timezone = "Europe/Paris"',
        'depends_on = ["stored", "ghost"]\nthen = [{ job = "stored" }, { job = "phantom" }]',
    )
    assert run_import(app, text).errors == [
        "jobs[0] nightly › depends_on: unknown job 'ghost'",
        "jobs[0] nightly › then[1] phantom › job: unknown job 'phantom'",
    ]


def test_a_dry_run_says_what_would_happen_and_writes_nothing(app):
    run_import(app, NIGHTLY)
    changed = NIGHTLY.replace('"hello"', '"bonjour"') + NIGHTLY.replace("nightly", "weekly")
    result = run_import(app, changed, dry_run=True)
    assert result.errors == []
    assert result.outcomes == {"nightly": "updated", "weekly": "created"}
    assert (count(app, Job), count(app, JobVersion), count(app, AuditEvent)) == (1, 1, 1)
    assert 'ctx.log.info("hello")' in run_export(app)


def test_import_export_import_is_unchanged(app):
    first = run_import(app, EVERYTHING)
    assert first.errors == []
    assert first.outcomes == {
        "reporting-nightly-sync": "created",
        "extract": "created",
        "channel ops-bell": "created",
    }

    exported = run_export(app)
    again = run_import(app, exported)
    assert again.errors == []
    assert again.outcomes == {
        "extract": "unchanged",
        "reporting-nightly-sync": "unchanged",
        "channel ops-bell": "unchanged",
    }
    assert run_export(app) == exported
    assert count(app, JobVersion) == 2


def test_an_export_is_short_and_keeps_code_verbatim(app):
    run_import(app, EVERYTHING)
    exported = run_export(app, ["reporting-nightly-sync"])
    assert "[[jobs.steps]]" in exported
    # Python reads as written: no escaped quotes or backslashes
    assert "ctx.log.info(f\"hello {ctx.params['day']}\")\n" in exported
    assert 'path = "C:\\temp\\new"\n' in exported
    assert 'id = "extract"' not in exported
    defaults = ("enabled = true", 'overlap = "skip"', 'on_failure = "stop"', "required = false")
    assert not [default for default in defaults if default in exported]
    assert "requeue_interrupted = true" in exported
    assert 'tags = ["etl", "nightly"]\n' in exported


def test_exporting_an_unknown_or_deleted_job_names_it(app):
    run_import(app, NIGHTLY + NIGHTLY.replace("nightly", "gone"))
    with get_database(app).session_scope() as db_session:
        db_session.get(Job, "gone").deleted_at = datetime.now(UTC)
    with pytest.raises(LookupError, match="unknown job 'gone', 'nope'"):
        run_export(app, ["nightly", "nope", "gone"])
    assert 'id = "gone"' not in run_export(app)


def test_an_import_with_a_changed_step_bumps_the_version_and_an_unchanged_one_does_not(app):
    run_import(app, NIGHTLY)
    assert run_import(app, NIGHTLY).outcomes == {"nightly": "unchanged"}
    assert count(app, JobVersion) == 1

    result = run_import(app, NIGHTLY.replace("hello", "bonjour"))
    assert result.outcomes == {"nightly": "updated"}
    with get_database(app).session_scope() as db_session:
        assert db_session.get(Job, "nightly").version == 2
        newest = db_session.scalar(sa.select(JobVersion).where(JobVersion.version == 2))
        assert newest.definition["steps"][0]["code"] == 'ctx.log.info("bonjour")\n'


def test_a_deleted_job_is_revived_by_an_import(app):
    run_import(app, NIGHTLY)
    with get_database(app).session_scope() as db_session:
        db_session.get(Job, "nightly").deleted_at = datetime.now(UTC)
    assert "nightly" not in run_export(app)
    assert run_import(app, NIGHTLY).outcomes == {"nightly": "created"}
    assert 'id = "nightly"' in run_export(app)


# The command as a user runs it: the installed entry point (app.cli:main) in a subprocess.


def nomaflow(*args, instance, database_url=None):
    env = {**os.environ, "NOMAFLOW_INSTANCE": str(instance)}
    env.pop("NOMAFLOW_DATABASE_URL", None)
    if database_url:
        env["NOMAFLOW_DATABASE_URL"] = database_url
    command = [sys.executable, "-c", "from app.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def instance(tmp_path, migrated_sqlite_file):
    folder = tmp_path / "instance"
    folder.mkdir()
    shutil.copyfile(migrated_sqlite_file, folder / "nomaflow.db")
    return folder


def test_cli_import_dry_run_then_import_then_list(instance, tmp_path):
    job_file = tmp_path / "jobs.toml"
    job_file.write_text(NIGHTLY + NIGHTLY.replace("nightly", "adhoc").replace("schedule", "#"))

    dry = nomaflow("jobs", "import", str(job_file), "--dry-run", instance=instance)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would create  nightly",
        "would create  adhoc",
        "dry run: nothing was written",
    ]
    assert json.loads(nomaflow("jobs", "list", "--json", instance=instance).stdout) == []

    assert nomaflow("jobs", "import", str(job_file), instance=instance).stdout.splitlines() == [
        "created       nightly",
        "created       adhoc",
    ]
    again = nomaflow("jobs", "import", str(job_file), instance=instance)
    assert again.stdout.splitlines() == ["unchanged     nightly", "unchanged     adhoc"]

    listed = nomaflow("jobs", "list", "--json", instance=instance)
    assert json.loads(listed.stdout) == [
        {
            "id": "adhoc",
            "description": "",
            "tags": [],
            "enabled": True,
            "schedule": None,
            "interval": None,
            "timezone": "Europe/Paris",
            "steps": ["say-hello"],
        },
        {
            "id": "nightly",
            "description": "",
            "tags": [],
            "enabled": True,
            "schedule": "0 2 * * 1-5",
            "interval": None,
            "timezone": "Europe/Paris",
            "steps": ["say-hello"],
        },
    ]
    table = nomaflow("jobs", "list", instance=instance).stdout.splitlines()
    assert table[0].split() == ["ID", "SCHEDULE", "ENABLED", "TAGS", "STEPS"]
    assert table[1].split() == ["adhoc", "manual", "only", "yes", "-", "1"]
    assert "at 02:00 on weekdays (Europe/Paris)" in table[2]


def test_cli_import_errors_go_to_stderr_with_exit_2(instance, tmp_path):
    job_file = tmp_path / "bad.toml"
    job_file.write_text(NIGHTLY.replace("0 2 * * 1-5", "0 2 * *").replace('"python"', '"pyton"'))
    result = nomaflow("jobs", "import", str(job_file), instance=instance)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "jobs[0] nightly › schedule: expected 5 fields (minute hour day-of-month month "
        "day-of-week) or 6 with seconds last, got 4 in '0 2 * *'",
        f"jobs[0] nightly › steps[0] say-hello › type: unknown step type 'pyton' (known: {KNOWN})",
        f"nomaflow: {job_file}: 2 problems; nothing imported",
    ]
    assert json.loads(nomaflow("jobs", "list", "--json", instance=instance).stdout) == []

    missing = nomaflow("jobs", "import", str(tmp_path / "missing.toml"), instance=instance)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"nomaflow: cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    ]


def test_cli_export_writes_a_file_that_imports_back_unchanged(instance, tmp_path):
    job_file, exported = tmp_path / "jobs.toml", tmp_path / "exported.toml"
    job_file.write_text(EVERYTHING)
    assert nomaflow("jobs", "import", str(job_file), instance=instance).returncode == 0

    result = nomaflow("jobs", "export", "extract", "-o", str(exported), instance=instance)
    assert result.returncode == 0, result.stderr
    assert 'id = "extract"' in exported.read_text()
    reimport = nomaflow("jobs", "import", str(exported), instance=instance)
    assert reimport.stdout == "unchanged     extract\n"

    everything = nomaflow("jobs", "export", instance=instance)
    assert everything.stdout.count("[[jobs]]") == 2

    unknown = nomaflow("jobs", "export", "extract", "nope", instance=instance)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == "nomaflow: unknown job 'nope'\n"


def test_cli_jobs_commands_exit_3_when_the_database_cannot_be_reached(tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    for args in (("list",), ("export",)):
        result = nomaflow("jobs", *args, instance=tmp_path, database_url=url)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith("nomaflow: cannot reach the database at postgresql")


# Connectors and variables in the same file (DESIGN §8): sealed on import, enc: on export.

SECRET = "imp0rted-Secret"
WITH_CONNECTORS = f'''
[[connectors]]
name = "api"
kind = "http"
description = "Status API"
base_url = "https://api.example.org"
auth = "bearer"
token = "{SECRET}"
headers = {{ Accept = "application/json" }}

[[connectors]]
name = "mail"
kind = "smtp"
host = "smtp.example.org"
port = 25
tls = "none"
username = "robot"
password = "{SECRET}"
sender = "nomaflow@example.org"

[[variables]]
name = "SLACK_WEBHOOK"
secret = true
value = "{SECRET}"

[[variables]]
name = "REGION"
value = "eu-west-1"

[[jobs]]
id = "fetch"
[[jobs.steps]]
name = "get"
type = "http"
connector = "api"
url = "/status/{{{{ vars.REGION }}}}"
'''


def import_with_keys(app, text, **options):
    with app.app_context(), get_database(app).session_scope() as db_session:
        return import_jobs(db_session, text, **options)


def export_with_keys(app, ids=None):
    with app.app_context(), get_database(app).session_scope() as db_session:
        return export_jobs(db_session, ids)


def raw_rows(app, table) -> str:
    with get_database(app).session_scope() as db_session:
        rows = db_session.execute(sa.text(f"SELECT * FROM {table}")).all()
    return " ".join(str(value) for row in rows for value in row)


def test_connectors_and_variables_are_imported_with_their_secrets_sealed(app):
    from app.connectors.store import load_connector
    from app.crypto import vault

    result = import_with_keys(app, WITH_CONNECTORS)
    assert result.errors == []
    assert result.outcomes == {
        "connector api": "created",
        "connector mail": "created",
        "variable SLACK_WEBHOOK": "created",
        "variable REGION": "created",
        "fetch": "created",
    }
    assert SECRET not in raw_rows(app, "connectors") + raw_rows(app, "variables")
    assert "eu-west-1" in raw_rows(app, "variables")
    with app.app_context(), get_database(app).session_scope() as db_session:
        api = load_connector(db_session, vault(app), "api").values
        assert (api["token"], api["headers"]) == (SECRET, {"Accept": "application/json"})
        assert load_connector(db_session, vault(app), "mail").values["password"] == SECRET
    assert count(app, AuditEvent) == 5


def test_export_writes_enc_tokens_and_imports_back_unchanged(app):
    import_with_keys(app, WITH_CONNECTORS)
    exported = export_with_keys(app)
    assert SECRET not in exported
    assert exported.count('"enc:') == 3
    assert exported.index("[[connectors]]") < exported.index("[[variables]]")
    assert 'value = "eu-west-1"' in exported

    again = import_with_keys(app, exported)
    assert again.errors == []
    assert set(again.outcomes.values()) == {"unchanged"} and len(again.outcomes) == 5
    assert count(app, AuditEvent) == 5  # nothing changed, nothing audited

    def without_tokens(text):
        return "\n".join(line for line in text.splitlines() if '"enc:' not in line)

    assert without_tokens(export_with_keys(app)) == without_tokens(exported)


def test_enc_tokens_of_other_keys_are_a_clear_error_and_nothing_is_written(app, make_app):
    import_with_keys(app, WITH_CONNECTORS)
    exported = export_with_keys(app)
    elsewhere = make_app()  # another instance: other keys
    result = import_with_keys(elsewhere, exported)
    cannot = (
        "cannot decrypt a stored secret: NOMAFLOW_ENCRYPTION_KEYS lacks the key it was sealed with"
    )
    assert result.errors == [
        f"connectors[0] api › token: {cannot}",
        f"connectors[1] mail › password: {cannot}",
        f"variables[1] SLACK_WEBHOOK › value: {cannot}",
    ]
    assert result.outcomes == {}
    for model in (Job, AuditEvent):
        assert count(elsewhere, model) == 0
    assert raw_rows(elsewhere, "connectors") == raw_rows(elsewhere, "variables") == ""


def test_one_bad_connector_or_variable_and_nothing_is_written(app):
    text = WITH_CONNECTORS + textwrap.dedent("""
        [[connectors]]
        name = "broken"
        kind = "smtp"
        host = "h"
        sender = "not-an-address"
        [[connectors]]
        name = "api"
        kind = "http"
        base_url = "https://twice.example.org"
        [[variables]]
        name = "bad-name"
        value = 3
        colour = "red"
    """)
    result = import_with_keys(app, text)
    assert result.errors == [
        "connectors[3] api › name: duplicate connector name 'api' (also connectors[0])",
        "variables[2] bad-name › colour: unknown variable field 'colour' (known: name, secret, "
        "value)",
        "variables[2] bad-name › name: use letters, digits and _ (not starting with a digit)",
        "variables[2] bad-name › value: expected text",
        "connectors[2] broken › sender: expected an email address",
    ]
    for model in (Job, AuditEvent):
        assert count(app, model) == 0
    assert raw_rows(app, "connectors") == raw_rows(app, "variables") == ""


def test_steps_must_name_a_connector_of_their_kind_in_the_file_or_the_database(app):
    import_with_keys(app, '[[connectors]]\nname = "ops"\nkind = "sql"\nurl = "sqlite://"\n')
    text = WITH_CONNECTORS + textwrap.dedent("""
        [[jobs]]
        id = "copy"
        [[jobs.steps]]
        name = "ok"
        type = "sql_copy"
        mode = "append"
        source = { connector = "ops", table = "a" }
        target = { connector = "default", table = "b" }
        [[jobs.steps]]
        name = "wrong"
        type = "sql_copy"
        mode = "append"
        source = { connector = "api", table = "a" }
        target = { connector = "ghost", table = "b" }
        [[jobs.steps]]
        name = "call"
        type = "http"
        connector = "ops"
        url = "/x"
        [[jobs.steps]]
        name = "templated"
        type = "http"
        connector = "{{ params.api }}"
        url = "/x"
    """)
    result = import_with_keys(app, text)
    assert result.errors == [
        "jobs[1] copy › steps[1] wrong › source.connector: no sql connector named 'api' "
        "(api is a http connector)",
        "jobs[1] copy › steps[1] wrong › target.connector: no sql connector named 'ghost'",
        "jobs[1] copy › steps[2] call › connector: no http connector named 'ops' "
        "(ops is a sql connector)",
    ]
    assert count(app, Job) == 0
    fixed = text.replace('connector = "api", table', 'connector = "ops", table')
    fixed = fixed.replace('connector = "ghost"', 'connector = "default"')
    fixed = fixed.replace('connector = "ops"\nurl = "/x"', 'connector = "api"\nurl = "/x"')
    assert import_with_keys(app, fixed).errors == []


def test_a_dry_run_with_connectors_says_what_would_happen_and_writes_nothing(app):
    import_with_keys(app, WITH_CONNECTORS.replace("port = 25", "port = 2525"))
    before = count(app, AuditEvent)
    result = import_with_keys(app, WITH_CONNECTORS, dry_run=True)
    assert result.errors == []
    assert result.outcomes == {
        "connector api": "unchanged",
        "connector mail": "updated",
        "variable SLACK_WEBHOOK": "unchanged",
        "variable REGION": "unchanged",
        "fetch": "unchanged",
    }
    assert count(app, AuditEvent) == before
    assert "port = 2525" in export_with_keys(app)


def test_exporting_named_jobs_brings_only_what_they_use(app):
    text = WITH_CONNECTORS + textwrap.dedent("""
        [[variables]]
        name = "UNUSED"
        value = "x"
        [[jobs]]
        id = "notify"
        [[jobs.steps]]
        name = "post"
        type = "http"
        url = "https://hooks.example.org/{{ secrets['SLACK_WEBHOOK'] }}"
    """)
    assert import_with_keys(app, text).errors == []
    fetch = export_with_keys(app, ["fetch"])
    assert 'name = "api"' in fetch and 'name = "mail"' not in fetch
    assert 'name = "REGION"' in fetch and "SLACK_WEBHOOK" not in fetch
    notify = export_with_keys(app, ["notify"])
    assert "[[connectors]]" not in notify and 'name = "SLACK_WEBHOOK"' in notify
    assert 'name = "UNUSED"' not in notify and 'name = "REGION"' not in notify
    everything = export_with_keys(app)
    assert everything.count("[[connectors]]") == 2 and everything.count("[[variables]]") == 3


def test_cli_imports_and_exports_connectors_and_variables(instance, tmp_path):
    job_file, exported = tmp_path / "setup.toml", tmp_path / "exported.toml"
    job_file.write_text(WITH_CONNECTORS)
    result = nomaflow("jobs", "import", str(job_file), instance=instance)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "created       connector api",
        "created       connector mail",
        "created       variable SLACK_WEBHOOK",
        "created       variable REGION",
        "created       fetch",
    ]
    assert nomaflow("jobs", "export", "-o", str(exported), instance=instance).returncode == 0
    assert SECRET not in exported.read_text()
    again = nomaflow("jobs", "import", str(exported), instance=instance)
    assert again.returncode == 0, again.stderr
    assert {line.split()[0] for line in again.stdout.splitlines()} == {"unchanged"}
