"""The sql_query step through the engine, on real PostgreSQL, MariaDB and SQLite databases:
bound and templated parameters, counts while streaming, captured records, commits, failures
with the database's message, and timeout / abort cancelling the statement on the server."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import render_template

from app.connectors.store import save_connector
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch, request_abort
from app.engine.service import start_runner, stop_runner
from app.steps import get_step_type
from app.steps.sql_query import SqlQueryStep
from tests.engine_helpers import log_messages, make_job, wait_for_run

BACKENDS = ["postgres", "mariadb", "sqlite"]
# a statement that runs for a minute on each backend
LONG_STATEMENTS = {
    "postgres": "SELECT pg_sleep(60)",
    "mariadb": "SELECT SLEEP(60)",
    "sqlite": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
    "SELECT count(*) FROM r",
}


class Database:
    """A scratch database the test fills and reads with plain SQL."""

    def __init__(self, backend: str, url: str):
        self.backend, self.url = backend, url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def run(self, *statements: str, **params) -> None:
        with self.engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement), params)

    def rows(self, statement: str, **params) -> list[tuple]:
        with self.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(statement), params)]

    def scalar(self, statement: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(sa.text(statement), params).scalar()

    def running_statements(self, fragment: str) -> list[str]:
        """Statements the server still runs that contain ``fragment`` (not this probe)."""
        if self.backend == "postgres":
            return [
                r[0]
                for r in self.rows(
                    "SELECT query FROM pg_stat_activity WHERE state = 'active' "
                    "AND pid <> pg_backend_pid() AND position(:f in query) > 0",
                    f=fragment,
                )
            ]
        if self.backend == "mariadb":
            return [
                r[0]
                for r in self.rows(
                    "SELECT INFO FROM information_schema.PROCESSLIST "
                    "WHERE ID <> CONNECTION_ID() AND INSTR(INFO, :f) > 0",
                    f=fragment,
                )
            ]
        return []


@pytest.fixture
def scratch(make_scratch_database, tmp_path):
    """Make a fresh database on a backend: postgres, mariadb or sqlite."""
    made = []

    def make(backend: str) -> Database:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'scratch{len(made)}.db'}"
        else:
            url = make_scratch_database(backend)
        made.append(Database(backend, url))
        return made[-1]

    yield make
    for database in made:
        database.engine.dispose()


@pytest.fixture
def runner(app, scratch):
    started = start_runner(app)
    yield started
    stop_runner(app)  # before the scratch databases go: it holds the connector pools


def add_sql_connector(app, name: str, url: str) -> None:
    with get_database(app).session_scope() as db:
        save_connector(db, vault(app), name, "sql", {"url": url})


def trigger(app, job_id: str, params=None):
    return dispatch(get_database(app), vault(app), job_id, "manual", params)


def query_step(name: str, query: str, **fields) -> dict:
    return {"name": name, "type": "sql_query", "connector": "db", "query": query, **fields}


def run_query_job(app, steps: list[dict], values=None, **job_fields) -> dict:
    """Save job "q" with these steps (and job fields), run it with ``values``, wait for it."""
    make_job(app, "q", steps=steps, **job_fields)
    return wait_for_run(app, trigger(app, "q", values).id, timeout=30)


def assert_succeeded(document: dict) -> None:
    errors = {s["name"]: s["error"] for s in document["steps"] if s["error"]}
    assert document["state"] == "SUCCEEDED", errors


def people(database: Database) -> None:
    """Create and fill a ``people`` table (25 rows) through SQLAlchemy's types."""
    table = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("amount", sa.Numeric(12, 4)),
        sa.Column("born", sa.Date),
        sa.Column("seen_at", sa.DateTime),
        sa.Column("active", sa.Boolean),
    )
    rows = [
        {
            "id": i,
            "name": "Zoë ✓ 漢字" if i == 1 else f"person {i}",
            "amount": Decimal("12345.6789") if i == 1 else Decimal(i),
            "born": date(1990, 5, 17),
            "seen_at": datetime(2024, 3, 1, 12, 30, 45),
            "active": i % 2 == 1,
        }
        for i in range(1, 26)
    ]
    with database.engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_select_counts_its_rows_and_captures_json_safe_records(app, runner, scratch, backend):
    database = scratch(backend)
    people(database)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "pick",
                "SELECT id, name, amount, born, active FROM people WHERE id <= :top ORDER BY id",
                params={"top": "{{ params.top }}"},
                capture=2,
            ),
            query_step("all", "SELECT * FROM people"),
        ],
        params=[{"name": "top", "type": "int", "default": 20}],
    )
    assert_succeeded(document)
    pick, everything = document["steps"]
    assert pick["output"]["rows"] == 20
    first = pick["output"]["records"][0]
    assert first["id"] == 1 and first["name"] == "Zoë ✓ 漢字"
    assert first["amount"] == 12345.6789
    assert first["born"] == "1990-05-17"
    assert first["active"] in (True, 1)
    assert len(pick["output"]["records"]) == 2
    assert everything["output"] == {"rows": 25}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_write_is_committed_and_reports_the_rows_affected(app, runner, scratch, backend):
    database = scratch(backend)
    people(database)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "purge",
                "DELETE FROM people WHERE id > :keep",
                params={"keep": "{{ params.keep }}"},
            ),
            {
                "name": "after",
                "type": "python",
                "code": "ctx.set_output(ctx.steps['purge'].output)",
            },
        ],
        params=[{"name": "keep", "type": "int", "default": 5}],
    )
    assert_succeeded(document)
    assert document["steps"][0]["output"] == {"rows": 20}
    assert document["steps"][1]["output"] == {"rows": 20}
    assert database.scalar("SELECT count(*) FROM people") == 5


def test_postgres_writes_behind_with_returning_and_select_into_are_counted(app, runner, scratch):
    database = scratch("postgres")
    people(database)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "with-delete",
                "WITH old AS (SELECT id FROM people WHERE id > 20) "
                "DELETE FROM people WHERE id IN (SELECT id FROM old)",
            ),
            query_step(
                "returning",
                "DELETE FROM people WHERE id > 15 RETURNING id",
                capture=2,
            ),
            query_step("select-into", "SELECT * INTO people_copy FROM people"),
        ],
    )
    assert_succeeded(document)
    assert [s["output"] for s in document["steps"]] == [
        {"rows": 5},
        {"rows": 5, "records": [{"id": 16}, {"id": 17}]},
        {"rows": 15},
    ]
    assert database.scalar("SELECT count(*) FROM people_copy") == 15


def test_templated_values_keep_their_type_and_go_as_bound_parameters(app, runner, scratch):
    database = scratch("postgres")
    people(database)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "typed",
                "SELECT pg_typeof(:n)::text AS n, :n + 1 AS next, :quote AS quote",
                params={"n": "{{ params.n }}", "quote": "'; DROP TABLE x"},
                capture=1,
            ),
            query_step(
                "count-old",
                "SELECT count(*) AS n FROM people WHERE born < :day AND name LIKE 'person%'",
                params={"day": "{{ params.d }}"},
                capture=1,
            ),
        ],
        params=[
            {"name": "n", "type": "int", "default": 7},
            {"name": "d", "type": "date", "default": "2000-01-01"},
        ],
    )
    assert_succeeded(document)
    record = document["steps"][0]["output"]["records"][0]
    assert record["n"] in ("smallint", "integer", "bigint")  # an int, not text
    assert record["next"] == 8 and record["quote"] == "'; DROP TABLE x"
    assert document["steps"][1]["output"]["records"] == [{"n": 24}]


def test_records_convert_decimals_dates_bytes_and_time_zones(app, runner, scratch):
    database = scratch("postgres")
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "values",
                "SELECT 12345.6789::numeric AS amount, 0.1::numeric(30, 25) AS tenth, "
                "12::numeric AS whole, '\\x00ff'::bytea AS raw, "
                "timestamptz '2024-03-01 12:30:45.5+02' AS at, interval '90 seconds' AS took, "
                "NULL::text AS nothing, '{\"a\": [1]}'::jsonb AS doc",
                capture=1,
            )
        ],
    )
    assert_succeeded(document)
    assert document["steps"][0]["output"]["records"] == [
        {
            "amount": 12345.6789,
            "tenth": 0.1,
            "whole": 12,
            "raw": "\\x00ff",
            "at": datetime(2024, 3, 1, 10, 30, 45, 500000, tzinfo=UTC).isoformat(),
            "took": 90.0,
            "nothing": None,
            "doc": {"a": [1]},
        }
    ]


def test_a_large_select_streams_and_captured_records_stay_small(app, runner, scratch):
    database = scratch("postgres")
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app,
        [
            query_step(
                "big",
                "SELECT g AS id, repeat('x', 2000) AS filler FROM generate_series(1, 200000) g",
                capture=1000,
            )
        ],
    )
    assert_succeeded(document)
    output = document["steps"][0]["output"]
    assert output["rows"] == 200_000
    assert 0 < len(output["records"]) < 1000  # cut at the size limit, not at 1000 x 2 KB
    messages = [m for _, _, m in log_messages(app, document["id"])]
    assert any("an output holds at most" in m for m in messages)


def test_the_sql_text_is_logged_at_debug_without_parameter_values(app, runner, scratch):
    database = scratch("postgres")
    people(database)
    add_sql_connector(app, "db", database.url)
    make_job(
        app,
        "secretive",
        log_level="DEBUG",
        params=[{"name": "token", "type": "secret", "required": True}],
        steps=[
            query_step(
                "secret",
                "SELECT count(*) FROM people WHERE name <> :token",
                params={"token": "{{ params.token }}"},
            )
        ],
    )
    run = trigger(app, "secretive", {"token": "hunter2-very-secret"})
    document = wait_for_run(app, run.id, timeout=30)
    assert_succeeded(document)
    lines = log_messages(app, run.id)
    assert ("DEBUG", "SQL on db: SELECT count(*) FROM people WHERE name <> :token") in [
        (level, message) for _, level, message in lines
    ]
    assert not any("hunter2" in message for _, _, message in lines)


@pytest.mark.parametrize(
    ("backend", "query", "cause"),
    [
        ("postgres", "SELECT * FROM missing_table", 'relation "missing_table" does not exist'),
        ("postgres", "SELEC 1", 'syntax error at or near "SELEC"'),
        ("mariadb", "SELECT * FROM missing_table", "missing_table' doesn't exist (1146)"),
        ("mariadb", "SELEC 1", "You have an error in your SQL syntax"),
        ("sqlite", "SELECT * FROM missing_table", "no such table: missing_table"),
        ("sqlite", "SELEC 1", 'near "SELEC": syntax error'),
    ],
)
def test_database_errors_fail_the_step_with_the_database_message(
    app, runner, scratch, backend, query, cause
):
    database = scratch(backend)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(app, [query_step("bad", query)])
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    assert error.startswith("the statement failed: ") and cause in error, error
    assert "\n" not in error


def test_a_failed_write_is_rolled_back(app, runner, scratch):
    database = scratch("postgres")
    people(database)
    add_sql_connector(app, "db", database.url)
    document = run_query_job(
        app, [query_step("bad", "UPDATE people SET amount = amount / (id - 25)")]
    )
    assert document["state"] == "FAILED"
    assert "division by zero" in document["steps"][0]["error"]
    assert database.scalar("SELECT amount FROM people WHERE id = 2") == Decimal("2")


def test_an_unknown_connector_fails_with_its_name(app, runner):
    document = run_query_job(app, [query_step("x", "SELECT 1", connector="nowhere")])
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == "no connector named 'nowhere'"


def test_an_unreachable_database_fails_with_the_reason(app, runner):
    add_sql_connector(app, "db", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    document = run_query_job(app, [query_step("x", "SELECT 1")])
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"].startswith("cannot connect to connector db: ")


def test_the_default_connector_is_the_apps_own_database(app, runner):
    document = run_query_job(
        app, [query_step("jobs", "SELECT id FROM jobs", connector="default", capture=5)]
    )
    assert_succeeded(document)
    assert document["steps"][0]["output"] == {"rows": 1, "records": [{"id": "q"}]}


def wait_until_running(database: Database, fragment: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while database.backend != "sqlite" and not database.running_statements(fragment):
        assert time.monotonic() < deadline, f"{fragment} never started"
        time.sleep(0.05)


def assert_nothing_left_running(database: Database, fragment: str) -> None:
    deadline = time.monotonic() + 3
    while database.running_statements(fragment):
        assert time.monotonic() < deadline, database.running_statements(fragment)
        time.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_cancels_the_statement_on_the_server(app, runner, scratch, backend):
    database = scratch(backend)
    add_sql_connector(app, "db", database.url)
    make_job(app, "slow", steps=[query_step("nap", LONG_STATEMENTS[backend], timeout_seconds=1)])
    started = time.monotonic()
    document = wait_for_run(app, trigger(app, "slow").id, timeout=20)
    assert document["state"] == "TIMED_OUT"
    assert time.monotonic() - started < 5
    assert document["steps"][0]["error"] == "timed out after 1s; the statement was cancelled"
    assert_nothing_left_running(database, LONG_STATEMENTS[backend][:15])


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abort_cancels_the_statement_on_the_server(app, runner, scratch, backend):
    database = scratch(backend)
    add_sql_connector(app, "db", database.url)
    make_job(app, "slow", steps=[query_step("nap", LONG_STATEMENTS[backend])])
    run = trigger(app, "slow")
    wait_for_run(app, run.id, states={"RUNNING"})
    wait_until_running(database, LONG_STATEMENTS[backend][:15])
    asked = time.monotonic()
    request_abort(get_database(app), run.id)
    document = wait_for_run(app, run.id, timeout=20)
    assert document["state"] == "CANCELED"
    assert time.monotonic() - asked < 4
    assert_nothing_left_running(database, LONG_STATEMENTS[backend][:15])


def test_the_connection_is_usable_after_a_cancel(app, runner, scratch):
    database = scratch("postgres")
    add_sql_connector(app, "db", database.url)
    make_job(
        app,
        "twice",
        steps=[
            query_step("nap", "SELECT pg_sleep(60)", timeout_seconds=1, on_failure="continue"),
            query_step("after", "SELECT 1 AS one", capture=1),
        ],
    )
    document = wait_for_run(app, trigger(app, "twice").id, timeout=20)
    assert document["state"] == "PARTIAL"
    assert document["steps"][1]["output"] == {"rows": 1, "records": [{"one": 1}]}


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({"connector": "db", "query": "SELECT 1"}, {}),
        ({"connector": "{{ params.db }}", "query": "SELECT :a", "params": {"a": 1}}, {}),
        ({"connector": "db", "query": "SELECT 1;  "}, {}),
        ({"connector": "db", "query": "SELECT ';' AS semi -- ; here\n"}, {}),
        ({}, {"connector": "required", "query": "required: one SQL statement"}),
        ({"connector": "db", "query": "   "}, {"query": "required: one SQL statement"}),
        (
            {"connector": "db", "query": "DELETE FROM a; DELETE FROM b"},
            {"query": "one statement per step (found a ; before the end)"},
        ),
        (
            {"connector": "db", "query": "SELECT * FROM t WHERE id = {{ params.id }}"},
            {
                "query": "values go in bound parameters (:name with params = {name = ...}), "
                "not {{ }}"
            },
        ),
        (
            {"connector": "db", "query": "SELECT :a, :b", "params": {"a": 1, "c": 2}},
            {"params": "the query uses :b (no value)", "params.c": "the query does not use :c"},
        ),
        (
            {"connector": "db", "query": "SELECT 1", "capture": -1},
            {"capture": "expected a whole number ≥ 0"},
        ),
        (
            {"connector": "bad name!", "query": "SELECT 1", "limit": 3},
            {
                "connector": "not a connector name (letters, digits, dots, dashes, underscores)",
                "limit": "unknown field for a sql_query step (known: capture, connector, params, "
                "query)",
            },
        ),
    ],
)
def test_validation_names_each_problem(config, problems):
    assert get_step_type("sql_query").validate(config) == problems


def test_connector_refs_name_the_sql_connector():
    step = get_step_type("sql_query")
    assert step.connector_refs({"connector": "ops", "query": "SELECT 1"}) == [
        ("connector", "ops", "sql")
    ]
    assert step.connector_refs({"connector": "{{ params.db }}", "query": "SELECT 1"}) == []


def test_params_are_templated_and_the_query_is_not():
    templated = {f.name for f in SqlQueryStep.fields if f.templated}
    assert "params" in templated and "query" not in templated


def test_the_editor_partial_draws_every_field_escaped(app):
    config = {
        "connector": "ops",
        "query": "SELECT '<script>alert(1)</script>' WHERE a = :a",
        "params": {"a": "<b>"},
        "capture": 3,
    }
    with app.test_request_context():
        html = render_template(
            "steps/_sql_query_editor.html",
            config=config,
            problems={"query": "bad <i>sql</i>"},
            connectors=["ops", "<x>"],
        )
    for field in SqlQueryStep.fields:
        assert f'name="config.{field.name}"' in html
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html and "<x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "bad &lt;i&gt;sql&lt;/i&gt;" in html


def test_two_runs_at_once_each_get_their_own_connection_and_count(app, runner, scratch):
    database = scratch("postgres")
    people(database)
    add_sql_connector(app, "db", database.url)
    make_job(
        app,
        "slowish",
        overlap="parallel",
        params=[{"name": "n", "type": "int", "required": True}],
        steps=[
            query_step(
                "nap",
                "SELECT id FROM people, pg_sleep(0.5) WHERE id <= :n",
                params={"n": "{{ params.n }}"},
            )
        ],
    )
    runs = [trigger(app, "slowish", {"n": str(n)}) for n in (3, 7)]
    documents = [wait_for_run(app, r.id, timeout=20) for r in runs]
    assert [d["steps"][0]["output"] for d in documents] == [{"rows": 3}, {"rows": 7}]
