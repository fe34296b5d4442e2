"""The ``sql_copy`` step: a table or a query on one connector into a table on another.

Rows stream from a server-side cursor in batches and are written with COPY (PostgreSQL
targets) or multi-row INSERTs (MariaDB, SQLite); PostgreSQL to PostgreSQL pipes COPY text
straight through. Modes keep readers safe:

* ``overwrite`` loads a stash table and swaps it in. PostgreSQL: one transaction (the stash is
  a ``LIKE ... INCLUDING ALL`` copy, renamed into place). MariaDB: DDL commits, so the stash is
  loaded beside the target and ``RENAME TABLE target TO old, stash TO target`` swaps both at
  once. SQLite: DELETE and INSERT in one transaction (WAL readers keep the old rows meanwhile).
* ``append`` and ``upsert`` write in one target transaction; a missing MariaDB target is loaded
  as a stash and renamed into place, so a failure never leaves a half-filled table.

This module holds the step, its planning and the three target writers: one concept, a copy,
whose engine-specific halves read better side by side than spread over files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from app.steps.base import ConfigField, StepContext, StepFailed, StepType
from app.steps.sql_support import (
    StatementGuard,
    bound_statement,
    checked_out,
    connector_problem,
    database_errors,
    database_reason,
    described_type,
    dialect_name,
    is_template,
    params_problems,
    portable_type,
    query_problem,
    quote_table,
    split_table,
    sqlite_rows,
    statement_text,
    table_problem,
    target_type,
    value_type,
)

MODES = ("overwrite", "append", "upsert")
DEFAULT_BATCH_SIZE = 10_000
MAX_BATCH_SIZE = 1_000_000
PROGRESS_SECONDS = 5.0
PIPE_CHECK_ROWS = 10_000  # COPY rows piped between two looks at abort and deadline
MAX_STATEMENT_BYTES = 1 << 20  # one multi-row INSERT on MariaDB (max_allowed_packet is 16 MiB)
STASH_SUFFIX = "__nomaflow_stash"
OLD_SUFFIX = "__nomaflow_old"
MAX_IDENTIFIER = 63  # PostgreSQL's limit; MariaDB's is 64


class SqlCopyStep(StepType):
    kind = "sql_copy"
    label = "SQL copy"
    fields = (
        ConfigField(
            "source",
            "table",
            required=True,
            templated=True,  # for params (and connector names): the query is never rendered
            help="{connector, table} or {connector, query, params}",
        ),
        ConfigField("target", "table", required=True, templated=True, help="{connector, table}"),
        ConfigField("mode", "string", required=True, help="overwrite | append | upsert"),
        ConfigField("key", "list", help="upsert key: target column names"),
        ConfigField("create", "bool", help="create the target table when it is missing"),
        ConfigField("batch_size", "int", help=f"rows per batch ({DEFAULT_BATCH_SIZE:,})"),
        ConfigField("columns", "table", help="renaming: source_name = target_name"),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        problems.update(_source_problems(config.get("source")))
        problems.update(_target_problems(config.get("target")))
        mode, key = config.get("mode"), config.get("key")
        if mode is not None and mode not in MODES:
            problems["mode"] = f"expected one of {', '.join(MODES)}"
        if key is not None and (
            not isinstance(key, list)
            or not key
            or not all(isinstance(k, str) and k for k in key)
            or len(set(key)) != len(key)
        ):
            problems["key"] = "expected a list of column names"
        elif mode == "upsert" and not key:
            problems["key"] = "required with mode = upsert"
        elif key and mode in ("overwrite", "append"):
            problems["key"] = "only used with mode = upsert"
        if "create" in config and not isinstance(config["create"], bool):
            problems["create"] = "expected true or false"
        size = config.get("batch_size", DEFAULT_BATCH_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BATCH_SIZE:
            problems["batch_size"] = f"expected a whole number from 1 to {MAX_BATCH_SIZE:,}"
        columns = config.get("columns")
        if columns is not None and (
            not isinstance(columns, dict)
            or not all(
                isinstance(v, str) and 0 < len(v) <= MAX_IDENTIFIER for v in columns.values()
            )
            or len(set(columns.values())) != len(columns)
        ):
            problems["columns"] = 'expected source_name = "target_name" pairs, names unique'
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        refs = []
        for side in ("source", "target"):
            table = config.get(side)
            name = table.get("connector") if isinstance(table, dict) else None
            if isinstance(name, str) and name and not is_template(name):
                refs.append((f"{side}.connector", name, "sql"))
        return refs

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Copy; return {"source_rows", "target_rows", "elapsed_ms"}.

        Abort and timeout are seen between batches and cancel a running statement on the
        server; either way the target keeps what it had before the step.
        """
        problems = self.validate(config)
        if problems:
            raise StepFailed("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        return CopyJob(config, ctx).execute()


def _source_problems(source: Any) -> dict[str, str]:
    if source is None:
        return {}  # "required" already
    if not isinstance(source, dict):
        return {"source": "expected {connector, table} or {connector, query, params}"}
    problems = {}
    for name in source:
        if name not in ("connector", "table", "query", "params"):
            problems[f"source.{name}"] = "unknown field (known: connector, table, query, params)"
    problem = connector_problem(source.get("connector"))
    if problem:
        problems["source.connector"] = problem
    if ("table" in source) == ("query" in source):
        problems["source"] = "give either table or query (exactly one)"
    elif "table" in source:
        problem = table_problem(source["table"])
        if problem:
            problems["source.table"] = problem
        if source.get("params"):
            problems["source.params"] = "only used with a query"
    else:
        problem = query_problem(source["query"])
        if problem:
            problems["source.query"] = problem
        else:
            problems.update(params_problems("source.params", source["query"], source.get("params")))
    return problems


def _target_problems(target: Any) -> dict[str, str]:
    if target is None:
        return {}
    if not isinstance(target, dict):
        return {"target": "expected {connector, table}"}
    problems = {}
    for name in target:
        if name not in ("connector", "table"):
            problems[f"target.{name}"] = "unknown field (known: connector, table)"
    for name, problem in (
        ("target.connector", connector_problem(target.get("connector"))),
        ("target.table", table_problem(target.get("table"))),
    ):
        if problem:
            problems[name] = problem
    return problems


@dataclass
class CopyColumn:
    source: str
    target: str
    type: sa.types.TypeEngine | None = None  # generic type, for a table we create


@dataclass
class Target:
    """The target table as planned: where, how, and what it already is."""

    engine: sa.Engine
    dialect: str
    schema: str | None
    name: str
    mode: str
    key: list[str]
    exists: bool
    existing_columns: list[str] = field(default_factory=list)
    unique_sets: list[set[str]] = field(default_factory=list)
    columns: list[CopyColumn] = field(default_factory=list)

    def quoted(self, name: str | None = None) -> str:
        return quote_table(self.engine.dialect, self.schema, name or self.name)

    def column_list(self) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        return ", ".join(quote(c.target) for c in self.columns)

    def create_sql(self, name: str) -> str:
        """CREATE TABLE for the columns as planned, the upsert key as primary key."""
        table = sa.Table(
            name,
            sa.MetaData(),
            *(
                sa.Column(
                    c.target,
                    target_type(c.type or sa.Text(), self.dialect, c.target in self.key),
                    autoincrement=False,
                )
                for c in self.columns
            ),
            *([sa.PrimaryKeyConstraint(*self.key)] if self.key else []),
            schema=self.schema,
            mysql_engine="InnoDB",
            mysql_charset="utf8mb4",
        )
        return str(sa.schema.CreateTable(table).compile(dialect=self.engine.dialect)).strip()


def side_table(name: str, suffix: str) -> str:
    """``name`` + suffix, shortened with a hash to stay a valid identifier."""
    if len(name) + len(suffix) <= MAX_IDENTIFIER:
        return name + suffix
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENTIFIER - len(suffix) - 9]}_{digest}{suffix}"


class CopyJob:
    """One copy: plan from the catalogues, then stream from the source into a target writer."""

    def __init__(self, config: dict[str, Any], ctx: StepContext):
        self.config, self.ctx = config, ctx
        self.source_cfg, self.target_cfg = config["source"], config["target"]
        self.batch_size = config.get("batch_size") or DEFAULT_BATCH_SIZE
        self.source_engine = _engine(ctx, self.source_cfg["connector"])
        self.target_engine = _engine(ctx, self.target_cfg["connector"])
        self.source_dialect = dialect_name(self.source_engine)
        self.source_types: dict[str, sa.types.TypeEngine] = {}
        self.doing = "reading the source"

    def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        errors = database_errors(self.source_engine, self.target_engine)
        with StatementGuard(self.ctx) as guard:
            try:
                sql, args, count_sql = self.source_statement()
                target = self.plan_target()
                self.announce(target)
                with (
                    checked_out(self.source_engine, "the source connector") as source,
                    checked_out(self.target_engine, "the target connector") as target_connection,
                ):
                    guard.watch(self.source_engine, source)
                    guard.watch(self.target_engine, target_connection)
                    writer = WRITERS[target.dialect](target, target_connection, self.ctx)
                    try:
                        source_rows, target_rows = self.stream(
                            guard, source, writer, sql, args, count_sql
                        )
                    except BaseException:
                        writer.abandon()
                        raise
            except errors as error:
                raise guard.failure(error, self.doing) from None
        elapsed = time.monotonic() - started
        rate = target_rows / elapsed if elapsed > 0 else 0.0
        self.ctx.metrics.update(rows=target_rows, rows_per_s=round(rate))
        return {
            "source_rows": source_rows,
            "target_rows": target_rows,
            "elapsed_ms": round(elapsed * 1000),
        }

    def announce(self, target: Target) -> None:
        source, mode = self.source_cfg, target.mode
        what = source.get("table") or "a query"
        created = "" if target.exists else " (creating it)"
        self.ctx.log.info(
            f"{mode}: {what} on {source['connector']} into {self.target_cfg['table']} on "
            f"{self.target_cfg['connector']}{created}"
        )
        if "query" in source:
            self.ctx.log.debug(f"source SQL: {source['query']}")  # the text only, no values

    # --- planning --------------------------------------------------------------------------

    def source_statement(self) -> tuple[str, Any, str | None]:
        """Return (SQL, args, count SQL or None); a table's columns and types are reflected."""
        engine, cfg = self.source_engine, self.source_cfg
        if "query" in cfg:
            sql, args = bound_statement(
                engine.dialect, statement_text(cfg["query"]), cfg.get("params")
            )
            return sql, args, None
        schema, table = split_table(cfg["table"])
        try:
            reflected = sa.inspect(engine).get_columns(table, schema=schema)
        except sa.exc.NoSuchTableError:
            raise StepFailed(f"source table {cfg['table']} does not exist") from None
        self.source_types = {c["name"]: portable_type(c["type"]) for c in reflected}
        quote = engine.dialect.identifier_preparer.quote
        quoted = quote_table(engine.dialect, schema, table)
        names = ", ".join(quote(c["name"]) for c in reflected)
        return f"SELECT {names} FROM {quoted}", None, f"SELECT count(*) FROM {quoted}"

    def plan_target(self) -> Target:
        engine, cfg = self.target_engine, self.target_cfg
        schema, name = split_table(cfg["table"])
        self.doing = "reading the target's catalogue"
        inspector = sa.inspect(engine)
        exists = inspector.has_table(name, schema=schema)
        if not exists and not self.config.get("create"):
            raise StepFailed(
                f"target table {cfg['table']} does not exist (set create = true to create it)"
            )
        target = Target(
            engine=engine,
            dialect=dialect_name(engine),
            schema=schema,
            name=name,
            mode=self.config["mode"],
            key=list(self.config.get("key") or []),
            exists=exists,
        )
        if exists:
            target.existing_columns = [
                c["name"] for c in inspector.get_columns(name, schema=schema)
            ]
            pk = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns")
            uniques = [set(pk)] if pk else []
            uniques += [
                set(u["column_names"]) for u in inspector.get_unique_constraints(name, schema)
            ]
            uniques += [
                set(i["column_names"])
                for i in inspector.get_indexes(name, schema=schema)
                if i.get("unique") and None not in i["column_names"]
            ]
            target.unique_sets = uniques
        self.doing = "reading the source"
        return target

    def match_columns(self, target: Target, source_names: list[str]) -> None:
        """Pair source columns with target ones (renamed, case-insensitive fallback); check."""
        renames = dict(self.config.get("columns") or {})
        unknown = sorted(set(renames) - set(source_names))
        if unknown:
            raise StepFailed(
                f"columns: the source has no column {', '.join(unknown)} "
                f"(it has {', '.join(source_names)})"
            )
        if len(set(source_names)) != len(source_names):
            raise StepFailed("the source has duplicate column names; alias them in the query")
        columns = [CopyColumn(n, renames.get(n, n), self.source_types.get(n)) for n in source_names]
        if target.exists:
            by_lower = {}
            for existing in target.existing_columns:
                by_lower.setdefault(existing.lower(), []).append(existing)
            missing = []
            for column in columns:
                if column.target in target.existing_columns:
                    continue
                candidates = by_lower.get(column.target.lower(), [])
                if len(candidates) == 1:
                    column.target = candidates[0]
                else:
                    missing.append(column.target)
            if missing:
                raise StepFailed(
                    f"target table {self.target_cfg['table']} has no column "
                    f'{", ".join(missing)} (rename with columns = {{source = "target"}})'
                )
        names = [c.target for c in columns]
        absent = [k for k in target.key if k not in names]
        if absent:
            raise StepFailed(f"key column {', '.join(absent)} is not among the copied columns")
        if target.mode == "upsert" and target.exists and set(target.key) not in target.unique_sets:
            raise StepFailed(
                f"upsert needs a primary key or unique index on ({', '.join(target.key)}) "
                f"in {self.target_cfg['table']}"
            )
        target.columns = columns

    # --- streaming -------------------------------------------------------------------------

    def stream(self, guard, source, writer, sql, args, count_sql) -> tuple[int, int]:
        target = writer.target
        total = None
        if count_sql is not None:
            cursor = source.driver_connection.cursor()
            cursor.execute(count_sql)
            total = cursor.fetchone()[0]
            cursor.close()
        progress = Progress(self.ctx, total)
        driver = source.driver_connection
        if self.source_dialect == "postgresql" and target.dialect == "postgresql":
            return self.pipe_copy(guard, driver, writer, sql, args, progress)
        reader = BatchReader(self.source_dialect, driver, self.batch_size)
        try:
            reader.execute(sql, args)
            return self.stream_batches(guard, reader, writer, progress)
        finally:
            reader.close()

    def stream_batches(self, guard, reader, writer, progress) -> tuple[int, int]:
        target = writer.target
        self.match_columns(target, reader.names)
        batches = iter(reader)
        first = next(batches, [])
        for position, column in enumerate(target.columns):
            if column.type is None:
                column.type = described_type(self.source_dialect, reader.description[position])
            if column.type is None:
                column.type = value_type([row[position] for row in first])
        self.doing = "writing the target"
        writer.prepare()
        source_rows = 0
        batch = first
        while batch:
            guard.check()
            self.doing = "writing the target"
            writer.write(batch)
            source_rows += len(batch)
            progress.add(len(batch))
            self.doing = "reading the source"
            batch = next(batches, [])
        guard.check()
        self.doing = "writing the target"
        target_rows = writer.finish()
        guard.check()
        progress.done(source_rows)
        return source_rows, target_rows

    def pipe_copy(self, guard, driver, writer, sql, args, progress) -> tuple[int, int]:
        """PostgreSQL to PostgreSQL: COPY ... TO STDOUT piped into COPY ... FROM STDIN."""
        cursor = driver.cursor()
        # ISO dates and the classic interval style parse the same under any target settings
        cursor.execute("SET LOCAL DateStyle TO ISO; SET LOCAL IntervalStyle TO postgres")
        cursor.execute(f"SELECT * FROM ({sql}) AS nomaflow_source LIMIT 0", args)
        description = cursor.description
        self.match_columns(writer.target, [c.name for c in description])
        for position, column in enumerate(writer.target.columns):
            column.type = column.type or described_type("postgresql", description[position])
        self.doing = "writing the target"
        writer.prepare()
        rows = 0
        self.doing = "reading the source"
        # psycopg merges COPY's parameters client-side, with its own literal quoting
        with cursor.copy(f"COPY ({sql}) TO STDOUT", args) as out:
            with writer.copy_in() as into:
                for data in out:
                    try:
                        into.write(data)
                    except BaseException:
                        self.doing = "writing the target"
                        raise
                    rows += 1
                    if rows % PIPE_CHECK_ROWS == 0:
                        guard.check()
                        progress.add(PIPE_CHECK_ROWS)
                self.doing = "writing the target"  # the target reports bad rows as COPY ends
            self.doing = "reading the source"
        guard.check()
        self.doing = "writing the target"
        target_rows = writer.finish()
        guard.check()
        progress.done(rows)
        return rows, target_rows


def _engine(ctx: StepContext, name: str) -> sa.Engine:
    try:
        return ctx.connectors.sql_engine(name)
    except LookupError as error:
        raise StepFailed(str(error)) from None


class BatchReader:
    """The source's rows in batches from a server-side (streaming) cursor."""

    def __init__(self, dialect: str, driver, batch_size: int):
        self.dialect, self.batch_size = dialect, batch_size
        if dialect == "postgresql":
            self.cursor = driver.cursor(name="nomaflow_copy")
            self.cursor.itersize = batch_size
        elif dialect == "mysql":
            import pymysql.cursors  # only needed (and installed) with MariaDB connectors

            self.cursor = driver.cursor(pymysql.cursors.SSCursor)
        else:
            self.cursor = driver.cursor()

    def execute(self, sql: str, args) -> None:
        if self.dialect == "postgresql":
            # timestamps arrive in UTC, which MariaDB and SQLite targets keep as is
            self.cursor.connection.execute("SET LOCAL TimeZone TO 'UTC'")
        self.cursor.execute(sql, args or () if self.dialect == "sqlite" else args)
        self.description = self.cursor.description
        self.names = [d[0] for d in self.description]

    def __iter__(self):
        while True:
            rows = self.cursor.fetchmany(self.batch_size)
            if not rows:
                return
            yield rows

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a connection past using closes with the cursor
            self.cursor.close()


class Progress:
    """INFO lines with rows so far, rate and percent, every few seconds and at the end."""

    def __init__(self, ctx: StepContext, total: int | None):
        self.ctx, self.total = ctx, total
        self.rows = 0
        self.started = self.last = time.monotonic()
        if total is not None:
            ctx.log.info(f"copying {total:,} rows")

    def add(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self.ctx.log.info(self._line("copied", now))

    def done(self, rows: int) -> None:
        self.rows = rows
        self.ctx.log.info(self._line("done: copied", time.monotonic()))

    def _line(self, what: str, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        line = f"{what} {self.rows:,} rows in {elapsed:.1f}s ({self.rows / elapsed:,.0f} rows/s)"
        if self.total:
            line += f", {min(100.0, 100 * self.rows / self.total):.0f}%"
        return line


# --- writers -----------------------------------------------------------------------------------


class TargetWriter:
    """Write batches into the target in its mode; finish() makes them visible, or abandon()."""

    def __init__(self, target: Target, connection, ctx: StepContext):
        self.target, self.connection, self.ctx = target, connection, ctx
        self.driver = connection.driver_connection
        self.quote = target.engine.dialect.identifier_preparer.quote
        self.stash: str | None = None  # the table loaded instead of the target, if any
        self.written = 0

    def update_clause(self, template: str) -> list[str]:
        """``c = <new value of c>`` for every copied column that is not part of the key."""
        return [
            template.format(c=self.quote(c.target))
            for c in self.target.columns
            if c.target not in self.target.key
        ]

    def prepare(self) -> None:
        raise NotImplementedError

    def write(self, rows: list) -> None:
        raise NotImplementedError

    def finish(self) -> int:
        raise NotImplementedError

    def abandon(self) -> None:
        try:
            self.connection.rollback()
        except Exception as error:
            self.ctx.log.warning(f"rollback of the target failed: {database_reason(error)}")


class PostgresWriter(TargetWriter):
    """COPY into the target (or a stash, or a temporary table for upsert) in one transaction."""

    UPSERT_TABLE = "nomaflow_upsert"

    def __init__(self, target: Target, connection, ctx: StepContext):
        super().__init__(target, connection, ctx)
        self.cursor = self.driver.cursor()
        self.stack = contextlib.ExitStack()
        self.copy = None
        self.copied = False

    def prepare(self) -> None:
        target = self.target
        # naive timestamps (MariaDB, SQLite) are UTC; the transaction keeps the setting
        self.cursor.execute("SET LOCAL TimeZone TO 'UTC'; SET LOCAL DateStyle TO ISO")
        if target.exists and target.mode == "overwrite":
            self.stash = side_table(target.name, STASH_SUFFIX)
            self.cursor.execute(f"DROP TABLE IF EXISTS {target.quoted(self.stash)}")
            self.cursor.execute(
                f"CREATE TABLE {target.quoted(self.stash)} (LIKE {target.quoted()} INCLUDING ALL)"
            )
        elif not target.exists:
            self.cursor.execute(target.create_sql(target.name))
        self.load_table = target.quoted(self.stash)
        copy_table = self.load_table
        if target.mode == "upsert":
            copy_table = self.UPSERT_TABLE
            self.cursor.execute(
                f"CREATE TEMPORARY TABLE {copy_table} ON COMMIT DROP AS "
                f"SELECT {target.column_list()} FROM {self.load_table} WITH NO DATA"
            )
        self.copy_sql = f"COPY {copy_table} ({target.column_list()}) FROM STDIN"

    def copy_in(self):
        self.copied = True
        return self.cursor.copy(self.copy_sql)

    def write(self, rows: list) -> None:
        if self.copy is None:
            self.copy = self.stack.enter_context(self.copy_in())
        write_row = self.copy.write_row
        for row in rows:
            write_row(row)

    def finish(self) -> int:
        target, cursor = self.target, self.cursor
        self.stack.close()  # ends the COPY
        rows = max(cursor.rowcount, 0) if self.copied else 0  # rows the COPY delivered
        if target.mode == "upsert":
            self.merge_upserts()
        if self.stash is not None:
            self.swap()
        self.connection.commit()
        return rows

    def abandon(self) -> None:
        with contextlib.suppress(Exception):  # a COPY cut short: the rollback undoes it all
            self.stack.close()
        super().abandon()

    def merge_upserts(self) -> None:
        target = self.target
        columns = target.column_list()
        key = ", ".join(self.quote(k) for k in target.key)
        updates = self.update_clause("{c} = EXCLUDED.{c}")
        action = f"UPDATE SET {', '.join(updates)}" if updates else "NOTHING"
        # the last row of a key wins, as with MariaDB and SQLite executing rows in order
        self.cursor.execute(
            f"INSERT INTO {self.load_table} ({columns}) "
            f"SELECT DISTINCT ON ({key}) {columns} FROM {self.UPSERT_TABLE} "
            f"ORDER BY {key}, ctid DESC "
            f"ON CONFLICT ({key}) DO {action}"
        )

    def swap(self) -> None:
        """Rename the stash into place; sequences and index names follow (same transaction)."""
        target, cursor = self.target, self.cursor
        old = side_table(target.name, OLD_SUFFIX)
        old_names: dict[tuple[bool, str], list[str]] = {}
        for _, name, shape in self.indexes(target.quoted()):
            old_names.setdefault(shape, []).append(name)
        new_indexes = self.indexes(target.quoted(self.stash))
        cursor.execute(f"ALTER TABLE {target.quoted()} RENAME TO {self.quote(old)}")
        cursor.execute(
            f"ALTER TABLE {target.quoted(self.stash)} RENAME TO {self.quote(target.name)}"
        )
        # a serial column's sequence belongs to the old table: hand it over before the drop
        cursor.execute(
            "SELECT s.oid::regclass::text, a.attname FROM pg_depend d "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
            "WHERE d.refobjid = %s::regclass AND d.deptype = 'a'",
            (target.quoted(old),),
        )
        for sequence, column in cursor.fetchall():
            cursor.execute(
                f"ALTER SEQUENCE {sequence} OWNED BY {target.quoted()}.{self.quote(column)}"
            )
        cursor.execute(f"DROP TABLE {target.quoted(old)}")
        # LIKE named the copies after the stash: give each index its old name back
        for index, name, shape in new_indexes:
            same = old_names.get(shape)
            wanted = same.pop(0) if same else None
            if wanted is None and name.startswith(self.stash):
                wanted = target.name + name[len(self.stash) :]
            if wanted and wanted != name:
                cursor.execute(f"ALTER INDEX {index} RENAME TO {self.quote(wanted)}")

    def indexes(self, table: str) -> list[tuple[str, str, tuple[bool, str]]]:
        """(qualified name, name, shape) of a table's indexes; shape ignores the names."""
        self.cursor.execute(
            "SELECT i.oid::regclass::text, i.relname, x.indisunique, pg_get_indexdef(i.oid) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s::regclass",
            (table,),
        )
        return [
            (index, name, (unique, definition.partition(" USING ")[2]))
            for index, name, unique, definition in self.cursor.fetchall()
        ]


class MariaDbWriter(TargetWriter):
    """Multi-row INSERTs; a stash beside the target for overwrite and for a missing target."""

    def prepare(self) -> None:
        target = self.target
        self.cursor = self.driver.cursor()
        if target.mode == "overwrite" or not target.exists:
            self.stash = side_table(target.name, STASH_SUFFIX)
            # left by a process that died mid-copy: ours, and stale
            self.cursor.execute(f"DROP TABLE IF EXISTS {target.quoted(self.stash)}")
            self.cursor.execute(
                f"DROP TABLE IF EXISTS {target.quoted(side_table(target.name, OLD_SUFFIX))}"
            )
            if target.exists:
                self.cursor.execute(
                    f"CREATE TABLE {target.quoted(self.stash)} LIKE {target.quoted()}"
                )
            else:
                self.cursor.execute(target.create_sql(self.stash))
        table = target.quoted(self.stash)
        self.prefix = f"INSERT INTO {table} ({target.column_list()}) VALUES "
        self.suffix = ""
        if target.mode == "upsert":
            updates = self.update_clause("{c} = VALUES({c})")
            first_key = self.quote(target.key[0])
            self.suffix = " ON DUPLICATE KEY UPDATE " + (
                ", ".join(updates) or f"{first_key} = {first_key}"
            )
        self.escapers = mariadb_escapers(self.driver)

    def write(self, rows: list) -> None:
        # PyMySQL binds client-side: its executemany() escapes every value into a multi-row
        # INSERT. We do the same with its escaper picked once per value type, which measured
        # twice as fast as its generic dispatch (DESIGN §9 budget: 50,000 rows/s).
        by_type, escape = self.escapers
        pick, statement, size = by_type.get, [], 0
        for row in rows:
            values = "(" + ",".join([(pick(type(v)) or escape)(v) for v in row]) + ")"
            statement.append(values)
            size += len(values) + 1
            if size >= MAX_STATEMENT_BYTES:
                self.cursor.execute(self.prefix + ",".join(statement) + self.suffix)
                statement, size = [], 0
        if statement:
            self.cursor.execute(self.prefix + ",".join(statement) + self.suffix)
        self.written += len(rows)
        if self.stash is not None:
            self.connection.commit()  # nobody reads the stash: keep the undo log small

    def finish(self) -> int:
        target, cursor = self.target, self.cursor
        self.connection.commit()
        if self.stash is not None:
            stash = target.quoted(self.stash)
            if target.exists:
                old = target.quoted(side_table(target.name, OLD_SUFFIX))
                # one statement, atomic: readers see the old table or the new, never neither
                cursor.execute(
                    f"RENAME TABLE {target.quoted()} TO {old}, {stash} TO {target.quoted()}"
                )
                self.stash = None
                try:
                    cursor.execute(f"DROP TABLE {old}")
                except self.driver.Error as error:  # e.g. a foreign key: the copy itself is done
                    self.ctx.log.warning(f"could not drop {old}: {database_reason(error)}")
            else:
                cursor.execute(f"RENAME TABLE {stash} TO {target.quoted()}")
                self.stash = None
        return self.written

    def abandon(self) -> None:
        super().abandon()
        if self.stash is None:
            return
        stash = self.target.quoted(self.stash)
        try:
            self.driver.cursor().execute(f"DROP TABLE IF EXISTS {stash}")
            return
        except Exception:
            pass  # this connection is past using (killed mid-statement): try a fresh one
        try:
            fresh = self.target.engine.raw_connection()
            try:
                cursor = fresh.cursor()
                cursor.execute("SET SESSION lock_wait_timeout = 10")
                cursor.execute(f"DROP TABLE IF EXISTS {stash}")
            finally:
                fresh.close()
        except Exception as error:  # the next copy drops it before it starts
            self.ctx.log.warning(f"could not drop {stash}: {database_reason(error)}")


def mariadb_escapers(driver) -> tuple[dict[type, Any], Any]:
    """Return (escaper by value type, the fallback): PyMySQL's own escaping, picked once.

    Aware times are written as their UTC wall time (MariaDB's DATETIME has no zone).
    """
    from pymysql import converters

    escape = driver.escape

    def timestamp(value: dt.datetime) -> str:
        if value.tzinfo is not None and value.utcoffset():
            value = value.astimezone(dt.UTC)
        return "'" + value.isoformat(" ", "microseconds")[:26] + "'"

    def as_json(value: Any) -> str:
        return escape(json.dumps(value, default=str))

    by_type = {
        type(None): lambda v: "NULL",
        bool: lambda v: "1" if v else "0",
        int: str,
        float: converters.escape_float,
        Decimal: str,
        str: escape,
        bytes: escape,
        dt.datetime: timestamp,
        dt.date: lambda v: "'" + v.isoformat() + "'",
        uuid.UUID: lambda v: escape(str(v)),
        memoryview: lambda v: escape(bytes(v)),
        dict: as_json,
        list: as_json,
    }
    return by_type, escape


class SqliteWriter(TargetWriter):
    """executemany() inside one explicit transaction (DDL included: sqlite3 would commit it)."""

    def prepare(self) -> None:
        target = self.target
        self.cursor = self.driver.cursor()
        self.cursor.execute("BEGIN IMMEDIATE")
        if not target.exists:
            self.cursor.execute(target.create_sql(target.name))
        elif target.mode == "overwrite":
            self.cursor.execute(f"DELETE FROM {target.quoted()}")
        marks = ", ".join("?" for _ in target.columns)
        self.sql = f"INSERT INTO {target.quoted()} ({target.column_list()}) VALUES ({marks})"
        if target.mode == "upsert":
            key = ", ".join(self.quote(k) for k in target.key)
            updates = self.update_clause("{c} = excluded.{c}")
            action = f"UPDATE SET {', '.join(updates)}" if updates else "NOTHING"
            self.sql += f" ON CONFLICT ({key}) DO {action}"

    def write(self, rows: list) -> None:
        self.cursor.executemany(self.sql, sqlite_rows(rows))
        self.written += len(rows)

    def finish(self) -> int:
        self.connection.commit()
        return self.written


WRITERS = {"postgresql": PostgresWriter, "mysql": MariaDbWriter, "sqlite": SqliteWriter}
