"""The sql_copy step through the engine between real PostgreSQL, MariaDB and SQLite databases:
values that survive every pair of engines, overwrite swaps that readers never see half-done,
failures that leave the target as it was, upsert/append/create/renaming, templated params,
and timeout / abort cancelling the statements on the servers."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import render_template
from sqlalchemy.dialects import mysql

from app.db import get_database
from app.engine.dispatch import request_abort
from app.engine.service import start_runner, stop_runner
from app.steps import get_step_type
from app.steps.sql_copy import SqlCopyStep, side_table
from tests.engine_helpers import log_messages, make_job, wait_for_run
from tests.test_sql_query import (
    LONG_STATEMENTS,
    Database,
    add_sql_connector,
    assert_nothing_left_running,
    assert_succeeded,
    trigger,
)

PLUS_TWO = timezone(timedelta(hours=2))
SAMPLE = [
    {
        "id": 1,
        "name": "Zoë ✓ 漢字",
        "amount": Decimal("12345.6789"),
        "born": date(1990, 5, 17),
        "seen_at": datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        "active": True,
        "photo": b"\x00\x01\xff photo",
    },
    {
        "id": 2,
        "name": None,
        "amount": None,
        "born": None,
        "seen_at": None,
        "active": None,
        "photo": None,
    },
    {
        "id": 3,
        "name": 'it\'s "quoted" \\ back\tslash\nnew line',
        "amount": Decimal("-0.5000"),
        "born": date(2000, 2, 29),
        "seen_at": datetime(2023, 12, 31, 23, 59, 59, tzinfo=PLUS_TWO),
        "active": False,
        "photo": b"",
    },
]
ENGINE_PAIRS = [
    ("postgres", "mariadb"),
    ("mariadb", "postgres"),
    ("sqlite", "postgres"),
    ("postgres", "sqlite"),
    ("postgres", "postgres"),
    ("mariadb", "sqlite"),
    ("sqlite", "mariadb"),
]


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


def people_table(name: str = "people") -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("amount", sa.Numeric(12, 4)),
        sa.Column("born", sa.Date),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")
        ),
        sa.Column("active", sa.Boolean),
        sa.Column("photo", sa.LargeBinary),
    )


def fill_people(database: Database, rows=SAMPLE, name: str = "people") -> None:
    """Create and fill a people table; MariaDB and SQLite keep times as naive UTC."""
    table = people_table(name)
    if database.backend != "postgres":
        rows = [{**r, "seen_at": utc(r["seen_at"])} for r in rows]
    with database.engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), rows)


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_people(database: Database, name: str = "people") -> list[dict]:
    """The rows as SQLAlchemy reads them back, normalised (times UTC, booleans bool)."""
    table = sa.Table(name, sa.MetaData(), autoload_with=database.engine)
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(table).order_by(table.c.id)).mappings().all()
    return [
        {
            **row,
            "seen_at": utc(row["seen_at"]),
            "active": None if row["active"] is None else bool(row["active"]),
            "photo": None if row["photo"] is None else bytes(row["photo"]),
        }
        for row in rows
    ]


def expected_people() -> list[dict]:
    return [{**r, "seen_at": utc(r["seen_at"])} for r in SAMPLE]


def table_names(database: Database) -> list[str]:
    return sorted(sa.inspect(database.engine).get_table_names())


def copy_step(name: str = "copy", **fields) -> dict:
    step = {
        "name": name,
        "type": "sql_copy",
        "source": {"connector": "src", "table": "people"},
        "target": {"connector": "dst", "table": "people"},
        "mode": "overwrite",
    }
    return {**step, **fields}


def connect(app, source: Database, target: Database) -> None:
    add_sql_connector(app, "src", source.url)
    add_sql_connector(app, "dst", target.url)


def run_copy(app, *steps: dict, values=None, job_id: str = "copy", **job_fields) -> dict:
    make_job(app, job_id, steps=list(steps), **job_fields)
    return wait_for_run(app, trigger(app, job_id, values).id, timeout=60)


@pytest.mark.parametrize(("source_backend", "target_backend"), ENGINE_PAIRS)
def test_every_value_survives_a_copy_between_engines(
    app, runner, scratch, source_backend, target_backend
):
    source, target = scratch(source_backend), scratch(target_backend)
    fill_people(source)
    connect(app, source, target)
    document = run_copy(app, copy_step(create=True))
    assert_succeeded(document)
    output = document["steps"][0]["output"]
    assert set(output) == {"source_rows", "target_rows", "elapsed_ms"}
    assert output["source_rows"] == output["target_rows"] == 3
    assert isinstance(output["elapsed_ms"], int)
    assert read_people(target) == expected_people()
    # again, now over the existing table: the stash is swapped in and nothing is left over
    source.run("UPDATE people SET name = 'renamed' WHERE id = 1")
    assert_succeeded(wait_for_run(app, trigger(app, "copy").id, timeout=60))
    again = read_people(target)
    assert again[0]["name"] == "renamed" and again[1:] == expected_people()[1:]
    assert table_names(target) == ["people"]


def test_create_maps_the_source_types(app, runner, scratch):
    source, target = scratch("postgres"), scratch("mariadb")
    fill_people(source)
    connect(app, source, target)
    assert_succeeded(run_copy(app, copy_step(create=True)))
    columns = {c["name"]: str(c["type"]) for c in sa.inspect(target.engine).get_columns("people")}
    assert columns == {
        "id": "INTEGER",
        "name": "VARCHAR(100)",
        "amount": "DECIMAL(12, 4)",
        "born": "DATE",
        "seen_at": "DATETIME",
        "active": "TINYINT",
        "photo": "LONGBLOB",
    }
    assert (
        target.scalar(
            "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'people' AND COLUMN_NAME = 'seen_at'"
        )
        == 6
    )


def test_a_query_source_creates_types_from_the_result_description(app, runner, scratch):
    source, target = scratch("postgres"), scratch("sqlite")
    connect(app, source, target)
    step = copy_step(
        source={
            "connector": "src",
            "query": "SELECT 1 AS id, 2.5::numeric(6, 2) AS price, now() AS at, "
            "'x'::varchar(9) AS v",
        },
        target={"connector": "dst", "table": "typed"},
        create=True,
    )
    assert_succeeded(run_copy(app, step))
    columns = {c["name"]: str(c["type"]) for c in sa.inspect(target.engine).get_columns("typed")}
    assert columns == {
        "id": "INTEGER",
        "price": "NUMERIC(6, 2)",
        "at": "DATETIME",
        "v": "VARCHAR(9)",
    }


def slow_new_rows(rows: int = 300) -> str:
    """A PostgreSQL query that yields ``rows`` rows named 'new', one every 5 ms."""
    return (
        f"SELECT g AS id, 'new' AS name FROM generate_series(1, {rows}) g "
        "WHERE pg_sleep(0.005)::text = ''"
    )


def old_target(target: Database, name: str = "shelf") -> None:
    target.run(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(20))")
    target.run(f"INSERT INTO {name} VALUES (1, 'old'), (2, 'old'), (3, 'old')")


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
def test_readers_see_the_old_rows_until_the_overwrite_swaps(app, runner, scratch, target_backend):
    source, target = scratch("postgres"), scratch(target_backend)
    old_target(target)
    connect(app, source, target)
    seen: set[tuple] = set()
    stop = threading.Event()

    def read_all_the_time() -> None:
        while not stop.is_set():
            # SQLite: locked for a moment while the writer commits
            with contextlib.suppress(sa.exc.OperationalError):
                seen.add(target.rows("SELECT count(*), min(name) FROM shelf")[0])
            time.sleep(0.01)

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        document = run_copy(
            app,
            copy_step(
                source={"connector": "src", "query": slow_new_rows()},
                target={"connector": "dst", "table": "shelf"},
                batch_size=20,
            ),
        )
    finally:
        time.sleep(0.1)
        stop.set()
        reader.join()
    assert_succeeded(document)
    assert seen == {(3, "old"), (300, "new")}
    assert table_names(target) == ["shelf"]


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
@pytest.mark.parametrize("mode", ["overwrite", "append", "upsert"])
def test_a_failure_mid_copy_leaves_the_target_as_it_was(app, runner, scratch, target_backend, mode):
    source, target = scratch("postgres"), scratch(target_backend)
    old_target(target)
    connect(app, source, target)
    document = run_copy(
        app,
        copy_step(
            # division by zero at row 500, after four batches were written
            source={
                "connector": "src",
                "query": "SELECT g + 10 AS id, (1 / (g - 500))::text AS name "
                "FROM generate_series(1, 1000) g",
            },
            target={"connector": "dst", "table": "shelf"},
            mode=mode,
            batch_size=100,
            **({"key": ["id"]} if mode == "upsert" else {}),
        ),
    )
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == "reading the source: division by zero"
    assert target.rows("SELECT id, name FROM shelf ORDER BY id") == [
        (1, "old"),
        (2, "old"),
        (3, "old"),
    ]
    assert table_names(target) == ["shelf"]


def test_a_failure_while_creating_leaves_no_table(app, runner, scratch):
    source, target = scratch("postgres"), scratch("mariadb")
    connect(app, source, target)
    document = run_copy(
        app,
        copy_step(
            source={
                "connector": "src",
                "query": "SELECT g AS id, 1 / (g - 50) AS x FROM generate_series(1, 100) g",
            },
            target={"connector": "dst", "table": "fresh"},
            mode="append",
            create=True,
            batch_size=10,
        ),
    )
    assert document["state"] == "FAILED"
    assert table_names(target) == []


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
def test_upsert_updates_matching_keys_and_inserts_the_rest(app, runner, scratch, target_backend):
    source, target = scratch("sqlite"), scratch(target_backend)
    old_target(target)
    source.run("CREATE TABLE changes (id INTEGER, name TEXT)")
    source.run(
        "INSERT INTO changes VALUES (2, 'two'), (3, 'three'), (4, 'four'), (5, 'x'), (5, 'five')"
    )
    connect(app, source, target)
    document = run_copy(
        app,
        copy_step(
            source={"connector": "src", "table": "changes"},
            target={"connector": "dst", "table": "shelf"},
            mode="upsert",
            key=["id"],
            batch_size=2,
        ),
    )
    assert_succeeded(document)
    assert document["steps"][0]["output"]["target_rows"] == 5
    assert target.rows("SELECT id, name FROM shelf ORDER BY id") == [
        (1, "old"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
        (5, "five"),  # the last row of a key wins
    ]


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
def test_upsert_needs_a_unique_key_on_the_target(app, runner, scratch, target_backend):
    source, target = scratch("postgres"), scratch(target_backend)
    target.run("CREATE TABLE shelf (id INTEGER, name VARCHAR(20))")
    connect(app, source, target)
    document = run_copy(
        app,
        copy_step(
            source={"connector": "src", "query": "SELECT 1 AS id, 'a' AS name"},
            target={"connector": "dst", "table": "shelf"},
            mode="upsert",
            key=["id"],
        ),
    )
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == (
        "upsert needs a primary key or unique index on (id) in shelf"
    )


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
def test_upsert_creates_the_target_with_its_key(app, runner, scratch, target_backend):
    source, target = scratch("postgres"), scratch(target_backend)
    connect(app, source, target)
    step = copy_step(
        source={
            "connector": "src",
            "query": "SELECT g AS id, g * 2 AS twice FROM generate_series(1, 5) g",
        },
        target={"connector": "dst", "table": "keyed"},
        mode="upsert",
        key=["id"],
        create=True,
    )
    assert_succeeded(run_copy(app, step))
    assert sa.inspect(target.engine).get_pk_constraint("keyed")["constrained_columns"] == ["id"]
    assert_succeeded(wait_for_run(app, trigger(app, "copy").id, timeout=30))
    assert target.scalar("SELECT count(*) FROM keyed") == 5


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb", "sqlite"])
def test_append_adds_the_rows_in_one_transaction(app, runner, scratch, target_backend):
    source, target = scratch("mariadb"), scratch(target_backend)
    old_target(target)
    source.run("CREATE TABLE more (id INTEGER, name VARCHAR(20))")
    source.run("INSERT INTO more VALUES (4, 'four'), (5, 'five')")
    connect(app, source, target)
    document = run_copy(
        app,
        copy_step(
            source={"connector": "src", "table": "more"},
            target={"connector": "dst", "table": "shelf"},
            mode="append",
        ),
    )
    assert_succeeded(document)
    assert target.rows("SELECT id, name FROM shelf ORDER BY id")[2:] == [
        (3, "old"),
        (4, "four"),
        (5, "five"),
    ]


def test_columns_are_renamed_and_unknown_ones_are_refused(app, runner, scratch):
    source, target = scratch("postgres"), scratch("postgres")
    fill_people(source)
    target.run("CREATE TABLE contacts (person_id INTEGER PRIMARY KEY, full_name TEXT, extra TEXT)")
    connect(app, source, target)
    step = copy_step(
        source={"connector": "src", "query": "SELECT id, name FROM people ORDER BY id"},
        target={"connector": "dst", "table": "contacts"},
        columns={"id": "person_id", "name": "full_name"},
    )
    assert_succeeded(run_copy(app, step))
    assert target.rows("SELECT person_id, full_name, extra FROM contacts ORDER BY 1") == [
        (1, "Zoë ✓ 漢字", None),
        (2, None, None),
        (3, SAMPLE[2]["name"], None),
    ]
    step["columns"] = {"id": "person_id"}
    document = run_copy(app, step, job_id="copy2")
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == (
        'target table contacts has no column name (rename with columns = {source = "target"})'
    )
    step["columns"] = {"nope": "x"}
    document = run_copy(app, step, job_id="copy3")
    assert (
        document["steps"][0]["error"] == "columns: the source has no column nope (it has id, name)"
    )


@pytest.mark.parametrize("target_backend", ["postgres", "sqlite"])  # COPY, and batches
def test_source_params_are_templated_and_bound(app, runner, scratch, target_backend):
    source, target = scratch("postgres"), scratch(target_backend)
    fill_people(source)
    connect(app, source, target)
    step = copy_step(
        source={
            "connector": "src",
            "query": "SELECT id, name FROM people WHERE id >= :first AND born > :day",
            "params": {"first": "{{ params.first }}", "day": "{{ params.day }}"},
        },
        target={"connector": "dst", "table": "picked"},
        create=True,
    )
    document = run_copy(
        app,
        step,
        values={"first": "2"},
        params=[
            {"name": "first", "type": "int", "required": True},
            {"name": "day", "type": "date", "default": "1999-01-01"},
        ],
    )
    assert_succeeded(document)
    assert target.rows("SELECT id, name FROM picked") == [(3, SAMPLE[2]["name"])]


@pytest.mark.parametrize(
    ("target_backend", "cause"),
    [
        ("postgres", 'invalid input syntax for type integer: "abc"'),
        ("mariadb", "Incorrect integer value: 'abc' for column"),
    ],
)
@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_an_unconvertible_value_fails_with_the_database_message(
    app, runner, scratch, target_backend, cause, mode
):
    source, target = scratch("postgres"), scratch(target_backend)
    target.run("CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER)")
    target.run("INSERT INTO counts VALUES (9, 9)")
    connect(app, source, target)
    step = copy_step(
        source={"connector": "src", "query": "SELECT 1 AS id, 'abc' AS n"},
        target={"connector": "dst", "table": "counts"},
        mode=mode,
    )
    document = run_copy(app, step)
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    assert cause in error and "\n" not in error, error
    assert target.rows("SELECT id, n FROM counts") == [(9, 9)]
    assert table_names(target) == ["counts"]


@pytest.mark.parametrize(
    ("source_config", "create", "error"),
    [
        ({"table": "nope"}, True, "source table nope does not exist"),
        ({"query": "SELEC 1"}, True, 'reading the source: syntax error at or near "SELEC"'),
        (
            {"query": "SELECT * FROM nope"},
            True,
            'reading the source: relation "nope" does not exist',
        ),
        (
            {"table": "people"},
            False,
            "target table people does not exist (set create = true to create it)",
        ),
    ],
)
def test_source_and_target_problems_fail_with_the_cause(
    app, runner, scratch, source_config, create, error
):
    source, target = scratch("postgres"), scratch("sqlite")
    fill_people(source)
    connect(app, source, target)
    step = copy_step(source={"connector": "src", **source_config}, create=create)
    document = run_copy(app, step)
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == error
    assert table_names(target) == []


def test_an_unknown_connector_fails_with_its_name(app, runner, scratch):
    source = scratch("sqlite")
    add_sql_connector(app, "src", source.url)
    document = run_copy(app, copy_step(create=True))
    assert document["steps"][0]["error"] == "no connector named 'dst'"


@pytest.mark.parametrize("source_backend", ["postgres", "mariadb", "sqlite"])
def test_a_timeout_cancels_the_source_statement_on_the_server(app, runner, scratch, source_backend):
    source, target = scratch(source_backend), scratch("postgres")
    connect(app, source, target)
    statement = LONG_STATEMENTS[source_backend]
    step = copy_step(
        source={"connector": "src", "query": statement},
        target={"connector": "dst", "table": "never"},
        create=True,
        timeout_seconds=1,
    )
    started = time.monotonic()
    document = run_copy(app, step)
    assert document["state"] == "TIMED_OUT"
    assert time.monotonic() - started < 5
    assert document["steps"][0]["error"] == "timed out after 1s; the statement was cancelled"
    assert_nothing_left_running(source, statement[:15])
    assert table_names(target) == []


@pytest.mark.parametrize("target_backend", ["postgres", "mariadb"])
def test_an_abort_stops_the_copy_and_leaves_the_old_rows(app, runner, scratch, target_backend):
    source, target = scratch("postgres"), scratch(target_backend)
    old_target(target)
    connect(app, source, target)
    make_job(
        app,
        "copy",
        steps=[
            copy_step(
                source={"connector": "src", "query": slow_new_rows(100_000)},
                target={"connector": "dst", "table": "shelf"},
                batch_size=50,
            )
        ],
    )
    run = trigger(app, "copy")
    wait_for_run(app, run.id, states={"RUNNING"})
    time.sleep(1.5)  # some batches are in the stash by now
    asked = time.monotonic()
    request_abort(get_database(app), run.id)
    document = wait_for_run(app, run.id, timeout=20)
    assert document["state"] == "CANCELED"
    assert time.monotonic() - asked < 4
    assert_nothing_left_running(source, "pg_sleep(0.005)")
    assert target.rows("SELECT count(*), min(name) FROM shelf") == [(3, "old")]
    assert table_names(target) == ["shelf"]


def test_a_postgres_overwrite_keeps_index_names_and_the_serial_sequence(app, runner, scratch):
    source, target = scratch("postgres"), scratch("postgres")
    fill_people(source)
    target.run(
        "CREATE TABLE roster (id SERIAL PRIMARY KEY, name TEXT)",
        "CREATE INDEX roster_name ON roster (name)",
    )
    connect(app, source, target)
    step = copy_step(
        source={"connector": "src", "query": "SELECT id, name FROM people"},
        target={"connector": "dst", "table": "roster"},
    )
    make_job(app, "copy", steps=[step])
    for _ in range(3):
        assert_succeeded(wait_for_run(app, trigger(app, "copy").id, timeout=30))
    indexes = target.rows("SELECT indexname FROM pg_indexes WHERE tablename = 'roster' ORDER BY 1")
    assert indexes == [("roster_name",), ("roster_pkey",)]
    target.run("SELECT setval('roster_id_seq', 100)", "INSERT INTO roster (name) VALUES ('next')")
    assert target.scalar("SELECT id FROM roster WHERE name = 'next'") == 101
    assert table_names(target) == ["roster"]


def test_progress_is_logged_with_rows_rate_and_percent(app, runner, scratch):
    source, target = scratch("postgres"), scratch("sqlite")
    source.run("CREATE TABLE many AS SELECT g AS id FROM generate_series(1, 5000) g")
    connect(app, source, target)
    step = copy_step(
        source={"connector": "src", "table": "many"},
        target={"connector": "dst", "table": "many"},
        create=True,
        batch_size=1000,
    )
    document = run_copy(app, step)
    assert_succeeded(document)
    messages = [m for _, level, m in log_messages(app, document["id"]) if level == "INFO"]
    assert "copying 5,000 rows" in messages
    done = [m for m in messages if m.startswith("done: copied 5,000 rows in ")]
    assert done and done[0].endswith("rows/s), 100%")
    assert document["steps"][0]["output"]["target_rows"] == 5000


def test_a_schema_qualified_target_is_swapped_inside_its_schema(app, runner, scratch):
    source, target = scratch("sqlite"), scratch("postgres")
    fill_people(source)
    target.run("CREATE SCHEMA reporting")
    connect(app, source, target)
    step = copy_step(target={"connector": "dst", "table": "reporting.people"}, create=True)
    assert_succeeded(run_copy(app, step))
    assert_succeeded(wait_for_run(app, trigger(app, "copy").id, timeout=30))
    assert target.scalar("SELECT count(*) FROM reporting.people") == 3
    assert sa.inspect(target.engine).get_table_names(schema="reporting") == ["people"]


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        (
            {
                "source": {"connector": "a", "table": "public.t"},
                "target": {"connector": "b", "table": "t"},
                "mode": "overwrite",
            },
            {},
        ),
        (
            {
                "source": {
                    "connector": "a",
                    "query": "SELECT * FROM t WHERE d > :d",
                    "params": {"d": "{{ params.d }}"},
                },
                "target": {"connector": "{{ params.db }}", "table": "s.t"},
                "mode": "upsert",
                "key": ["id"],
                "create": True,
                "batch_size": 500,
                "columns": {"a": "b"},
            },
            {},
        ),
        (
            {},
            {"source": "required", "target": "required", "mode": "required"},
        ),
        (
            {
                "source": {"connector": "a", "table": "t", "query": "SELECT 1"},
                "target": {"connector": "b", "table": "bad name"},
                "mode": "upsert",
            },
            {
                "source": "give either table or query (exactly one)",
                "target.table": "expected table or schema.table "
                "(letters, digits, _; at most 63 each)",
                "key": "required with mode = upsert",
            },
        ),
        (
            {
                "source": {"connector": "a", "query": "SELECT {{ params.x }}", "extra": 1},
                "target": {"table": "t"},
                "mode": "sideways",
                "key": ["id"],
                "batch_size": 0,
                "columns": ["a"],
                "create": "yes",
            },
            {
                "source.extra": "unknown field (known: connector, table, query, params)",
                "source.query": "values go in bound parameters (:name with params = {name = ...}), "
                "not {{ }}",
                "target.connector": "required",
                "mode": "expected one of overwrite, append, upsert",
                "batch_size": "expected a whole number from 1 to 1,000,000",
                "columns": 'expected source_name = "target_name" pairs, names unique',
                "create": "expected true or false",
            },
        ),
        (
            {
                "source": {"connector": "a", "query": "SELECT :a", "params": {"b": 1}},
                "target": {"connector": "b", "table": "t"},
                "mode": "append",
                "key": ["id"],
            },
            {
                "source.params": "the query uses :a (no value)",
                "source.params.b": "the query does not use :b",
                "key": "only used with mode = upsert",
            },
        ),
    ],
)
def test_validation_names_each_problem(config, problems):
    assert get_step_type("sql_copy").validate(config) == problems


def test_connector_refs_name_both_sides():
    config = {
        "source": {"connector": "ops", "table": "t"},
        "target": {"connector": "reporting", "table": "t"},
        "mode": "append",
    }
    assert get_step_type("sql_copy").connector_refs(config) == [
        ("source.connector", "ops", "sql"),
        ("target.connector", "reporting", "sql"),
    ]


def test_stash_names_stay_valid_identifiers():
    assert side_table("people", "__nomaflow_stash") == "people__nomaflow_stash"
    long = side_table("x" * 60, "__nomaflow_stash")
    assert len(long) == 63 and long.endswith("__nomaflow_stash")
    assert long != side_table("x" * 59 + "y", "__nomaflow_stash")


def test_the_editor_partial_draws_every_field_escaped(app):
    config = {
        "source": {"connector": "ops", "query": "SELECT '<script>'", "params": {"a": "<b>"}},
        "target": {"connector": "reporting", "table": "t"},
        "mode": "upsert",
        "key": ["id", "day"],
        "create": True,
        "batch_size": 500,
        "columns": {"a": "<i>"},
    }
    with app.test_request_context():
        html = render_template(
            "steps/_sql_copy_editor.html",
            config=config,
            problems={"source.query": "bad <u>sql</u>"},
            connectors=["ops", "<x>"],
        )
    names = ["source.connector", "source.table", "source.query", "source.params"]
    names += ["target.connector", "target.table", "mode", "key", "create", "batch_size", "columns"]
    for name in names:
        assert f'name="config.{name}"' in html
    assert {f.name for f in SqlCopyStep.fields} <= {n.split(".")[0] for n in names}
    for raw in ("<script>", "<b>", "<i>", "<u>", "<x>"):
        assert raw not in html
    assert "bad &lt;u&gt;sql&lt;/u&gt;" in html
    assert 'value="id, day"' in html
    assert '<option value="upsert" selected>' in html
