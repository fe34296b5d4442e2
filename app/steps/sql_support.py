"""What the SQL steps share: config checks, bound statements, server-side cancel, type mapping.

The steps talk to the drivers directly (psycopg, PyMySQL, sqlite3) through connections checked
out of the connector's SQLAlchemy pool: streaming, COPY and cancellation are driver features,
and SQLAlchemy supplies the pool, the dialect (quoting, DDL, ``:name`` binding) and reflection.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from app.steps.base import StepCanceled, StepContext, StepFailed, StepTimedOut

POLL_SECONDS = 0.1  # how often the guard asks is_cancelled() and looks at the deadline
CANCEL_TIMEOUT_SECONDS = 5.0
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
TABLE_NAME = re.compile(rf"^(?:{IDENTIFIER}\.)?{IDENTIFIER}$")
CONNECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# what a second statement hides behind: quoted text, quoted names, comments, dollar quotes
_NOT_CODE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|--[^\n]*|/\*.*?\*/|(\$\w*\$).*?\1", re.DOTALL
)


# --- config checks ---------------------------------------------------------------------------


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def connector_problem(value: Any) -> str | None:
    """Say what is wrong with a connector name (a template is fine: it is rendered first)."""
    if value in (None, ""):
        return "required"
    if not isinstance(value, str):
        return "expected a connector name"
    if not is_template(value) and not CONNECTOR_NAME.match(value):
        return "not a connector name (letters, digits, dots, dashes, underscores)"
    return None


def table_problem(value: Any) -> str | None:
    if value in (None, ""):
        return "required"
    if not isinstance(value, str) or not TABLE_NAME.match(value):
        return "expected table or schema.table (letters, digits, _; at most 63 each)"
    return None


def query_problem(value: Any) -> str | None:
    """Say what is wrong with the SQL text of a step: empty, templated, or several statements."""
    if not isinstance(value, str) or not value.strip():
        return "required: one SQL statement"
    if is_template(value):
        return "values go in bound parameters (:name with params = {name = ...}), not {{ }}"
    code = _NOT_CODE.sub(" ", value).strip().rstrip(";").strip()
    if not code:
        return "required: one SQL statement"
    if ";" in code:
        return "one statement per step (found a ; before the end)"
    try:
        bind_names(value)
    except sa.exc.ArgumentError as error:
        return f"cannot read the statement: {error}"
    return None


def params_problems(field: str, query: str, params: Any) -> dict[str, str]:
    """Check bound parameters against the ``:names`` the query uses."""
    if params in (None, {}):
        params = {}
    if not isinstance(params, dict):
        return {field: "expected a table of name = value"}
    problems = {}
    used = set(bind_names(query)) if isinstance(query, str) else set()
    for name, value in params.items():
        if name not in used:
            problems[f"{field}.{name}"] = f"the query does not use :{name}"
        elif isinstance(value, dict):
            problems[f"{field}.{name}"] = "expected a value or a list of values"
    missing = sorted(used - set(params))
    if missing:
        problems[field] = "the query uses " + ", ".join(f":{n}" for n in missing) + " (no value)"
    return problems


def statement_text(query: str) -> str:
    """The query without a trailing semicolon (it may be wrapped in COPY or a subquery)."""
    return query.strip().rstrip(";").rstrip()


def leading_keyword(query: str) -> str:
    code = _NOT_CODE.sub(" ", query).lstrip(" \t\r\n(")
    match = re.match(r"[A-Za-z]+", code)
    return match.group(0).upper() if match else ""


def returns_rows_for_sure(query: str) -> bool:
    """True when a statement can only be a query (PostgreSQL streams those in chunks)."""
    keyword = leading_keyword(query)
    code = _NOT_CODE.sub(" ", query)
    if keyword in ("VALUES", "TABLE", "SHOW", "EXPLAIN"):
        return True
    writes = r"\b(INTO|UPDATE|DELETE|MERGE)\b"  # SELECT ... INTO makes a table, returns nothing
    return keyword in ("SELECT", "WITH") and not re.search(writes, code, re.I)


def split_table(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return schema or None, table


def quote_table(dialect: sa.Dialect, schema: str | None, table: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


# --- bound statements ------------------------------------------------------------------------


def bind_names(query: str) -> list[str]:
    """The ``:name`` parameters of a statement, in order of first use."""
    return list(sa.text(query).compile().params)


def bound_statement(dialect: sa.Dialect, query: str, params: dict[str, Any] | None):
    """Return (SQL in the driver's paramstyle, arguments): values are bound, never spliced."""
    names = bind_names(query)
    if not names:
        return query, None
    params = params or {}
    missing = [n for n in names if n not in params]
    if missing:
        raise StepFailed("no value for " + ", ".join(f":{n}" for n in missing))
    compiled = sa.text(query).compile(dialect=dialect)
    values = {name: driver_value(dialect.name, params[name]) for name in names}
    if compiled.positiontup:
        return str(compiled), tuple(values[name] for name in compiled.positiontup)
    return str(compiled), values


def driver_value(dialect_name: str, value: Any) -> Any:
    """Adapt a parameter value to what the driver binds (sqlite3 has no date or Decimal)."""
    if dialect_name == "sqlite":
        return sqlite_value(value)
    if isinstance(value, uuid.UUID) and dialect_name != "postgresql":
        return str(value)
    return value


def _sqlite_datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(dt.UTC)
    # SQLAlchemy's own SQLite format (naive UTC, microseconds), so it reads the value back
    return value.isoformat(" ", "microseconds")[:26]


def _json_text(value: Any) -> str:
    return json.dumps(value, default=str)


_SQLITE_ADAPTERS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: _sqlite_datetime,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    Decimal: str,
    uuid.UUID: str,
    dict: _json_text,
    list: _json_text,
}


def sqlite_value(value: Any) -> Any:
    """A value sqlite3 binds: dates and times as SQLAlchemy's text, Decimal as text."""
    adapt = _SQLITE_ADAPTERS.get(type(value))
    return value if adapt is None else adapt(value)


def sqlite_rows(rows: list) -> list[tuple]:
    """sqlite_value() over a batch of rows (inlined: it runs for every value of a copy)."""
    get = _SQLITE_ADAPTERS.get
    return [tuple([v if (a := get(type(v))) is None else a(v) for v in row]) for row in rows]


# --- connections, errors and the statement guard ---------------------------------------------


def dialect_name(engine: sa.Engine) -> str:
    """postgresql | mysql | sqlite (MariaDB speaks the mysql dialect)."""
    name = engine.dialect.name
    return "mysql" if name == "mariadb" else name


@contextmanager
def checked_out(engine: sa.Engine, what: str) -> Iterator[Any]:
    """A pooled DBAPI connection; dropped (not pooled again) when anything went wrong."""
    try:
        connection = engine.raw_connection()
    except database_errors(engine) as error:
        raise StepFailed(f"cannot connect to {what}: {database_reason(error)}") from None
    try:
        yield connection
    except BaseException:
        if connection.is_valid:
            connection.invalidate()  # it may be mid-statement or mid-stream after a cancel
        raise
    else:
        connection.close()


def database_reason(error: BaseException) -> str:
    """The database's own message, first line (PyMySQL's (code, message) made readable)."""
    error = getattr(error, "orig", None) or error
    args = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} ({args[0]})"
    else:
        text = str(error)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def database_errors(*engines: sa.Engine) -> tuple[type[BaseException], ...]:
    return (sa.exc.DBAPIError, *(e.dialect.loaded_dbapi.Error for e in engines))


class StatementGuard:
    """Watch abort and the deadline while statements run; cancel them on the server.

    A thread polls ``ctx.is_cancelled()`` and the deadline every POLL_SECONDS. When either
    comes it cancels the running statement of each watched connection the way its server
    understands: PostgreSQL a cancel request (``cancel_safe()``), MariaDB ``KILL QUERY`` from a
    second connection, SQLite ``interrupt()``. The step then raises ``stop_error()``.
    """

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.stopped: str | None = None  # "timeout" | "cancel"
        self._cancellers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sql-guard", daemon=True)

    def __enter__(self) -> StatementGuard:
        self.check()
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, engine: sa.Engine, connection: Any) -> None:
        """Cancel this connection's statement when the step is stopped."""
        cancel = server_canceller(engine, connection)
        with self._lock:
            self._cancellers.append(cancel)
        self.check()

    def check(self) -> None:
        """Raise StepTimedOut / StepCanceled once the step has to stop."""
        if self._poll():
            raise self.stop_error()

    def stop_error(self) -> StepFailed:
        if self.stopped == "timeout":
            return StepTimedOut(
                f"timed out after {self.ctx.timeout_seconds:g}s; the statement was cancelled"
            )
        return StepCanceled("aborted; the statement was cancelled")

    def failure(self, error: BaseException, doing: str) -> StepFailed:
        """The StepFailed for a database error: the stop when we caused it, else its cause."""
        if self._poll():
            return self.stop_error()
        return StepFailed(f"{doing}: {database_reason(error)}")

    def _poll(self) -> bool:
        with self._lock:
            if self.stopped is None:
                if time.monotonic() >= self.ctx.deadline:
                    self.stopped = "timeout"
                elif self.ctx.is_cancelled():
                    self.stopped = "cancel"
            return self.stopped is not None

    def _watch(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            if self._poll():
                with self._lock:
                    cancellers = list(self._cancellers)
                for cancel in cancellers:
                    try:
                        cancel()
                    except Exception as error:  # the statement may have ended meanwhile
                        self.ctx.log.warning(f"could not cancel a statement: {error}")
                return


def server_canceller(engine: sa.Engine, connection: Any) -> Callable[[], None]:
    """Return a function that cancels what ``connection`` runs, callable from another thread."""
    driver = connection.driver_connection
    name = dialect_name(engine)
    if name == "postgresql":
        return lambda: driver.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
    if name == "sqlite":
        return driver.interrupt
    if name == "mysql":
        cursor = driver.cursor()
        cursor.execute("SELECT CONNECTION_ID()")
        (thread_id,) = cursor.fetchone()
        cursor.close()

        def kill_query() -> None:
            killer = engine.raw_connection()
            try:
                killer.cursor().execute(f"KILL QUERY {int(thread_id)}")
            finally:
                killer.close()

        return kill_query
    return lambda: None  # another database: the deadline is checked between batches only


# --- values for JSON outputs -----------------------------------------------------------------


def json_value(value: Any) -> Any:
    """Make a database value JSON-safe: dates ISO, decimals numbers, bytes \\x-hex."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value() and abs(value) < 2**53:
            return int(value)
        number = float(value)
        return number if Decimal(repr(number)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


# --- type mapping ----------------------------------------------------------------------------

_PG_TYPES: dict[int, Callable[[Any], sa.types.TypeEngine]] = {
    16: lambda c: sa.Boolean(),
    17: lambda c: sa.LargeBinary(),
    20: lambda c: sa.BigInteger(),
    21: lambda c: sa.SmallInteger(),
    23: lambda c: sa.Integer(),
    26: lambda c: sa.BigInteger(),
    700: lambda c: sa.Float(),
    701: lambda c: sa.Double(),
    1042: lambda c: sa.String(c.display_size) if c.display_size else sa.Text(),
    1043: lambda c: sa.String(c.display_size) if c.display_size else sa.Text(),
    1082: lambda c: sa.Date(),
    1083: lambda c: sa.Time(),
    1114: lambda c: sa.DateTime(),
    1184: lambda c: sa.DateTime(timezone=True),
    1700: lambda c: sa.Numeric(c.precision, c.scale) if c.precision else sa.Numeric(),
    2950: lambda c: sa.Uuid(),
}
_MYSQL_TYPES: dict[int, Callable[[tuple], sa.types.TypeEngine | None]] = {
    0: lambda d: _mysql_decimal(d),
    1: lambda d: sa.Boolean() if d[3] == 1 else sa.SmallInteger(),
    2: lambda d: sa.SmallInteger(),
    3: lambda d: sa.Integer(),
    4: lambda d: sa.Float(),
    5: lambda d: sa.Double(),
    7: lambda d: sa.DateTime(),
    8: lambda d: sa.BigInteger(),
    9: lambda d: sa.Integer(),
    10: lambda d: sa.Date(),
    11: lambda d: sa.Time(),
    12: lambda d: sa.DateTime(),
    13: lambda d: sa.SmallInteger(),
    14: lambda d: sa.Date(),
    246: lambda d: _mysql_decimal(d),
}


def _mysql_decimal(description: tuple) -> sa.types.TypeEngine:
    length, scale = description[4] or 0, description[5] or 0
    # the display length counts the decimal point and a sign: one digit too many is harmless
    precision = max(1, min(65, length - (1 if scale else 0)))
    return sa.Numeric(precision, min(scale, precision))


def portable_type(type_: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """The generic type (creatable on PostgreSQL, MariaDB and SQLite) for a reflected one."""
    if isinstance(type_, mysql.TINYINT) and type_.display_width == 1:
        return sa.Boolean()  # MariaDB's BOOLEAN is TINYINT(1)
    try:
        generic = type_.as_generic()
    except NotImplementedError:
        return sa.Text()
    unsigned = bool(getattr(type_, "unsigned", False))
    if isinstance(generic, sa.BigInteger) and unsigned:
        return sa.Numeric(20, 0)
    if isinstance(generic, sa.Integer) and unsigned:
        return sa.BigInteger()
    return _plain(generic)


def _plain(generic: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """Rebuild a generic type without dialect baggage (collations, enum names, asdecimal)."""
    for kind in (sa.Boolean, sa.BigInteger, sa.SmallInteger, sa.Integer, sa.Date, sa.Time):
        if isinstance(generic, kind):
            return kind()
    if isinstance(generic, sa.Double):
        return sa.Double()
    if isinstance(generic, sa.Float):
        return sa.Float()
    if isinstance(generic, sa.Numeric):
        return sa.Numeric(generic.precision, generic.scale)
    if isinstance(generic, sa.DateTime):
        return sa.DateTime(timezone=bool(generic.timezone))
    if isinstance(generic, sa.LargeBinary):
        return sa.LargeBinary()
    if isinstance(generic, sa.Uuid):
        return sa.Uuid()
    if isinstance(generic, sa.String) and not isinstance(generic, sa.Text):
        return sa.String(generic.length) if generic.length else sa.Text()
    return sa.Text()


def described_type(dialect: str, description: Any) -> sa.types.TypeEngine | None:
    """The generic type of a result column from the driver's description (None: unknown)."""
    if dialect == "postgresql":
        make = _PG_TYPES.get(description.type_code)
        return make(description) if make else sa.Text()
    if dialect == "mysql":
        make = _MYSQL_TYPES.get(description[1])
        return make(description) if make else None  # text or bytes: the values tell
    return None  # sqlite3 describes names only


def value_type(values: list[Any]) -> sa.types.TypeEngine:
    """The generic type for a column known only by its values (the first non-NULL one)."""
    value = next((v for v in values if v is not None), None)
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, float):
        return sa.Double()
    if isinstance(value, Decimal):
        return sa.Numeric()
    if isinstance(value, dt.datetime):
        return sa.DateTime(timezone=value.tzinfo is not None)
    if isinstance(value, dt.date):
        return sa.Date()
    if isinstance(value, dt.time):
        return sa.Time()
    if isinstance(value, bytes | bytearray | memoryview):
        return sa.LargeBinary()
    return sa.Text()


def target_type(generic: sa.types.TypeEngine, dialect: str, key: bool) -> sa.types.TypeEngine:
    """Fit a generic type to the target database (MariaDB needs the most help)."""
    if dialect != "mysql":
        if isinstance(generic, sa.Uuid) and dialect != "postgresql":
            return sa.String(36)
        return generic
    if isinstance(generic, sa.Text) or (isinstance(generic, sa.String) and not generic.length):
        return sa.String(255) if key else mysql.LONGTEXT()  # TEXT keys need a prefix length
    if isinstance(generic, sa.LargeBinary):
        return mysql.VARBINARY(255) if key else mysql.LONGBLOB()
    if isinstance(generic, sa.DateTime):
        return mysql.DATETIME(fsp=6)  # no time zone: values are written as UTC
    if isinstance(generic, sa.Time):
        return mysql.TIME(fsp=6)
    if isinstance(generic, sa.Float):
        return mysql.DOUBLE()
    if isinstance(generic, sa.Numeric) and generic.precision is None:
        return sa.Numeric(65, 30)  # MariaDB's bare DECIMAL is DECIMAL(10,0)
    if isinstance(generic, sa.Uuid):
        return sa.String(36)
    return generic
