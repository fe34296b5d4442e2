"""The ``sql_query`` step: one statement with bound parameters on a SQL connector."""

from __future__ import annotations

import json
import time
from typing import Any

from app.steps.base import ConfigField, StepContext, StepFailed, StepType
from app.steps.sql_support import (
    StatementGuard,
    bound_statement,
    checked_out,
    connector_problem,
    database_errors,
    dialect_name,
    is_template,
    json_value,
    params_problems,
    query_problem,
    returns_rows_for_sure,
)

FETCH_ROWS = 5000  # rows per round trip while counting a result
MAX_CAPTURE = 10_000
MAX_RECORDS_BYTES = 512 * 1024  # the whole output must stay under the engine's 1 MiB


class SqlQueryStep(StepType):
    kind = "sql_query"
    label = "SQL query"
    fields = (
        ConfigField(
            "connector",
            "string",
            required=True,
            help="SQL connector (default: the app's)",
            templated=True,
        ),
        ConfigField("query", "code", required=True, help="one statement; values as :name"),
        ConfigField(
            "params",
            "table",
            help="values of the :names (templates keep their type)",
            templated=True,
        ),
        ConfigField("capture", "int", help="rows of a SELECT kept as output records (0)"),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        for name, problem in (
            ("connector", connector_problem(config.get("connector"))),
            ("query", query_problem(config.get("query"))),
        ):
            if problem:
                problems[name] = problem
        if "query" not in problems:
            problems.update(params_problems("params", config["query"], config.get("params")))
        capture = config.get("capture", 0)
        if isinstance(capture, bool) or not isinstance(capture, int) or capture < 0:
            problems["capture"] = "expected a whole number ≥ 0"
        elif capture > MAX_CAPTURE:
            problems["capture"] = f"at most {MAX_CAPTURE:,} rows"
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        name = config.get("connector")
        if isinstance(name, str) and name and not is_template(name):
            return [("connector", name, "sql")]
        return []

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Run the statement; return {"rows": N} (+ "records" when capture > 0).

        A query's rows are counted while they stream in; a write's rows are those affected,
        and it is committed. Abort and timeout cancel the statement on the server.
        """
        problems = self.validate(config)
        if problems:
            raise StepFailed("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        name, query = config["connector"], config["query"]
        try:
            engine = ctx.connectors.sql_engine(name)
        except LookupError as error:
            raise StepFailed(str(error)) from None
        sql, args = bound_statement(engine.dialect, query, config.get("params"))
        ctx.log.debug(f"SQL on {name}: {query}")  # the text only: values may be secrets
        capture = config.get("capture") or 0
        started = time.monotonic()
        with StatementGuard(ctx) as guard:
            try:
                with checked_out(engine, f"connector {name}") as connection:
                    guard.watch(engine, connection)
                    result = execute_counted(dialect_name(engine), connection, sql, args, capture)
                    guard.check()  # MariaDB ends a killed SLEEP() without an error
                    connection.commit()
            except database_errors(engine) as error:
                raise guard.failure(error, "the statement failed") from None
        rows, records, kept_all = result
        elapsed = time.monotonic() - started
        what = "rows returned" if records is not None else "rows affected"
        ctx.log.info(f"{rows:,} {what} in {elapsed:.2f}s")
        ctx.metrics["rows"] = rows
        output: dict[str, Any] = {"rows": rows}
        if capture:
            output["records"] = records or []
            if not kept_all:
                ctx.log.warning(
                    f"kept the first {len(output['records'])} of {min(rows, capture)} records: "
                    f"an output holds at most {MAX_RECORDS_BYTES // 1024} KiB of records"
                )
        return output


def execute_counted(dialect: str, connection, sql: str, args, capture: int):
    """Execute; return (rows, first records or None for a write, whether all asked fit).

    Results stream (PostgreSQL in chunks, MariaDB unbuffered, SQLite step by step), so a
    large SELECT is counted without being held in memory.
    """
    driver = connection.driver_connection
    if dialect == "postgresql":
        cursor = driver.cursor()
        if returns_rows_for_sure(sql):
            return _count(cursor, _stream_pg(cursor, sql, args), capture)
        cursor.execute(sql, args)
    elif dialect == "mysql":
        import pymysql.cursors

        cursor = driver.cursor(pymysql.cursors.SSCursor)
        cursor.execute(sql, args)
    else:
        cursor = driver.cursor()
        cursor.execute(sql, args or ())
    try:
        if cursor.description is None:
            return max(cursor.rowcount, 0), None, True
        return _count(cursor, _fetched(cursor), capture)
    finally:
        cursor.close()


def _stream_pg(cursor, sql: str, args):
    yield from cursor.stream(sql, args, size=FETCH_ROWS)


def _fetched(cursor):
    while True:
        rows = cursor.fetchmany(FETCH_ROWS)
        if not rows:
            return
        yield from rows


def _count(cursor, rows, capture: int) -> tuple[int, list[dict[str, Any]], bool]:
    count, records, size, kept_all = 0, [], 0, True
    names: list[str] = []
    for row in rows:
        if count < capture and kept_all:
            if not names:
                names = [column[0] for column in cursor.description]
            record = {name: json_value(value) for name, value in zip(names, row, strict=True)}
            size += len(json.dumps(record))
            if size > MAX_RECORDS_BYTES:
                kept_all = False
            else:
                records.append(record)
        count += 1
    return count, records, kept_all
