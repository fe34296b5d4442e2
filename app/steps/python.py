"""The ``python`` step: user code run in a child process with a small ``ctx`` API.

Connectors: before the child starts, the step finds the connectors the code uses (string
literals in ``ctx.sql("...")`` / ``ctx.http("...")``, plus the names the optional
``connectors`` field lists), resolves them and sends their values in the job line, so they
live only in the child's memory for this one step. An unknown name fails the step before any
code runs. Their secrets are masked in everything the child logs (child and server side).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import functools
import json
import os
import re
import selectors
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa

from app.steps.base import (
    ConfigField,
    StepCanceled,
    StepContext,
    StepFailed,
    StepTimedOut,
    StepType,
)
from app.steps.python_pool import PythonProcessError, StepProcess, start_python_process
from app.steps.python_worker import (
    LEVELS,
    MAX_LOG_BYTES,
    MAX_LOG_LINES,
    LineSplitter,
    LogBudget,
    Masker,
    cut_line,
    decode_line,
)
from app.steps.sql_support import CONNECTOR_NAME, is_template

CALLABLE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
POLL_SECONDS = 0.1  # how often is_cancelled() is asked
CANCEL_GRACE_SECONDS = 1.0  # an aborted step may end by itself this long, then it is killed
DRAIN_SECONDS = 1.0  # after the end, output still in the pipes is read for at most this long
EXIT_CODE_WAIT_SECONDS = 1.0
READ_BYTES = 1 << 16
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event line; the largest is a 1 MiB output or a traceback
CONNECTOR_METHODS = ("sql", "http")  # ctx.sql(name) takes a sql connector, ctx.http an http one
DEFAULT_CONNECTOR = "default"  # the app's own database (app.connectors.DEFAULT_CONNECTOR)


class PythonStep(StepType):
    kind = "python"
    label = "Python"
    fields = (
        ConfigField("code", "code", help="Python run with `ctx` in scope"),
        ConfigField("callable", "string", help="package.module:function from instance/plugins"),
        ConfigField(
            "connectors",
            "list",
            help=(
                "connectors the code uses by a name that is not a string literal in "
                'ctx.sql("...") / ctx.http("...") (a callable, a name from a parameter)'
            ),
            templated=True,
        ),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        code, target = config.get("code"), config.get("callable")
        if bool(code) == bool(target):
            problems.setdefault("code", "give either code or callable (exactly one)")
        if code:
            try:
                compile(code, "<step code>", "exec")
            except SyntaxError as error:
                problems["code"] = f"syntax error on line {error.lineno}: {error.msg}"
        if target and not CALLABLE_PATTERN.match(target):
            problems["callable"] = "expected package.module:function"
        problem = connectors_problem(config.get("connectors"))
        if problem:
            problems["connectors"] = problem
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        """The connectors the inline code names as literals (imports check and export them)."""
        code = config.get("code")
        if not isinstance(code, str) or not code:
            return []
        try:
            return [("code", name, kind) for name, kind in connector_calls(code)]
        except SyntaxError:
            return []

    def run(self, config: dict[str, Any], ctx: StepContext) -> Any:
        """Run the code in a fresh child process; return what it set as output.

        Raises StepFailed (the exception's last traceback line), StepTimedOut once
        ctx.deadline passes and StepCanceled once ctx.is_cancelled(); the child and
        everything it started are gone when this returns or raises.
        """
        problems = self.validate(config)
        if problems:
            raise StepFailed("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        started = time.monotonic()
        connectors, secrets = resolve_connectors(config, ctx)
        job = encode_job(config, ctx, connectors, secrets)
        try:
            process = start_python_process(modules_for(connectors))
        except PythonProcessError as error:
            raise StepFailed(str(error)) from None
        watch = ProcessWatch(process, ctx, Masker(secrets))
        try:
            watch.follow(job)
        finally:
            process.kill()
            process.close()
            ctx.metrics["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            ctx.metrics["log_lines"] = watch.budget.lines
        return watch.outcome()


def connectors_problem(value: Any) -> str | None:
    """Say what is wrong with the ``connectors`` field (templates are rendered before run)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return 'expected a list of connector names, e.g. ["ops", "github"]'
    for name in value:
        if not is_template(name) and not CONNECTOR_NAME.match(name):
            return f"{name!r} is not a connector name (letters, digits, dots, dashes, underscores)"
    return None


@functools.lru_cache(maxsize=256)
def connector_calls(code: str) -> tuple[tuple[str, str], ...]:
    """(name, kind) of each ``ctx.sql("name")`` / ``ctx.http("name")`` with a literal name.

    Only calls on the name ``ctx`` count (``duckdb.sql("SELECT 1")`` names no connector);
    ``connector="name"`` as a keyword counts too. Raises SyntaxError like compile().
    """
    calls = [
        node
        for node in ast.walk(ast.parse(code, "<step code>"))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CONNECTOR_METHODS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ctx"
    ]
    found: dict[tuple[str, str], None] = {}  # an ordered set, in the order of the source
    for node in sorted(calls, key=lambda call: (call.lineno, call.col_offset)):
        given = node.args[0] if node.args else None
        for keyword in node.keywords:
            if keyword.arg == "connector":
                given = keyword.value
        if isinstance(given, ast.Constant) and isinstance(given.value, str):
            found[given.value, node.func.attr] = None
    return tuple(found)


def resolve_connectors(
    config: dict[str, Any], ctx: StepContext
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Resolve the connectors the step uses; return them by name and the secrets to mask.

    Raises StepFailed naming a connector that does not exist or is of another kind.
    """
    wanted: dict[str, list[str]] = {}  # name -> kinds the code calls it with ([] = listed only)
    if config.get("code"):
        for name, kind in connector_calls(config["code"]):
            wanted.setdefault(name, []).append(kind)
    for name in config.get("connectors") or ():
        wanted.setdefault(name, [])
    resolved: dict[str, dict[str, Any]] = {}
    secrets: list[str] = []
    for name, kinds in wanted.items():
        if len(kinds) > 1:
            raise StepFailed(f"connector {name!r} is used with both ctx.sql and ctx.http")
        kind, values = resolve_connector(name, kinds[0] if kinds else None, ctx)
        resolved[name] = {"kind": kind, "values": values}
        secrets += connector_secrets(kind, values)
    return resolved, secrets


def resolve_connector(name: str, kind: str | None, ctx: StepContext) -> tuple[str, dict]:
    """Return the kind and values (secrets in clear) of one connector; ``kind`` None = either."""
    where = f"ctx.{kind}({name!r})" if kind else "connectors"
    database = ctx.database or getattr(ctx.connectors, "database", None)
    if name == DEFAULT_CONNECTOR and database is not None:
        if kind not in (None, "sql"):
            raise StepFailed(f"{where}: connector 'default' is the app's sql database, not {kind}")
        # the app's busy timeout (app.db): it shares the database with the engine's writes
        return "sql", {"url": database.url, "connect_timeout": 30}
    if ctx.connectors is None:
        raise StepFailed(f"ctx.{kind or 'sql'} needs connectors, which this step was not given")
    problems = []
    for candidate in (kind,) if kind else ("sql", "http"):
        try:
            return candidate, dict(ctx.connectors.values(name, candidate).values)
        except LookupError as error:  # ConnectorInUseError: unknown, or of another kind
            problems.append(str(error))
    if len(problems) > 1 and not problems[0].startswith("no connector"):
        problems[0] = f"connector {name!r} is neither sql nor http"  # ldap, smtp
    raise StepFailed(f"{where}: {problems[0]}")


def connector_secrets(kind: str, values: dict[str, Any]) -> list[str]:
    """The texts that give a connector's secrets away, as they may appear in a log line."""
    found = [values.get(name) for name in ("password", "token", "client_secret")]
    if kind == "sql" and isinstance(values.get("url"), str):
        with contextlib.suppress(sa.exc.ArgumentError):  # not a URL: nothing hides in it
            found.append(sa.make_url(values["url"]).password)
    pairs = [("username", "password"), ("client_id", "client_secret")] if kind == "http" else []
    texts = []
    for secret in (s for s in found if isinstance(s, str) and s):
        texts += [secret, quote(secret, safe=""), quote_plus(secret), sqlalchemy_quoted(secret)]
    for user, secret in pairs:  # HTTP Basic: the header carries user:secret in base64
        if values.get(secret):
            pair = f"{values.get(user) or ''}:{values[secret]}"
            texts.append(base64.b64encode(pair.encode()).decode())
    return sorted(set(texts))


def modules_for(connectors: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The modules a step process needs for these connectors (the fork server preloads them)."""
    modules: dict[str, None] = {}  # an ordered set
    for connector in connectors.values():
        if connector["kind"] == "http":
            modules["app.connectors.http_client"] = None
            continue
        modules["app.connectors.sql"] = None
        with contextlib.suppress(Exception):  # a bad URL or a missing driver: the child says so
            dialect = sa.make_url(connector["values"]["url"]).get_dialect()
            modules[dialect.__module__] = None
            modules[dialect.import_dbapi().__name__] = None
    return tuple(modules)


def sqlalchemy_quoted(secret: str) -> str:
    """The password as SQLAlchemy writes it in a URL (render_as_string)."""
    url = sa.URL.create("x", username="u", password=secret, host="h")
    return url.render_as_string(hide_password=False)[len("x://u:") : -len("@h")]


def encode_job(
    config: dict[str, Any],
    ctx: StepContext,
    connectors: dict[str, dict[str, Any]] | None = None,
    secrets: list[str] | None = None,
) -> bytes:
    """Return the job line the child reads: what to run and what its ctx holds."""
    job = {
        "code": config.get("code") or None,
        "callable": config.get("callable") or None,
        "plugins": str(Path(ctx.instance_path) / "plugins"),
        "params": ctx.params,
        "steps": {
            name: {"output": view.output, "status": view.status, "rows": view.rows}
            for name, view in ctx.steps.items()
        },
        "run_id": ctx.run_id,
        "job_id": ctx.job_id,
        "triggered_by": ctx.triggered_by,
        "connectors": connectors or {},
        "mask": secrets or [],
    }
    try:
        # default=str: a date among the params reaches the code as its ISO text
        return json.dumps(job, default=str, ensure_ascii=False).encode() + b"\n"
    except ValueError as error:  # a circular structure
        raise StepFailed(f"the params or earlier outputs cannot be passed on: {error}") from None


class ProcessWatch:
    """Feed the job to a step process, relay its log, and end it on done, timeout or abort."""

    def __init__(self, process: StepProcess, ctx: StepContext, masker: Masker | None = None):
        self.process, self.ctx = process, ctx
        self.masker = masker or Masker()  # the child masks too; its raw pipes are ours to do
        self.budget = LogBudget()
        self.child_dropped = (0, 0)  # dropped inside the child, as it last reported
        self.done: dict[str, Any] | None = None
        self.stopped: str | None = None  # "timeout" | "cancel"
        self.splitters = {
            process.events: LineSplitter(MAX_EVENT_BYTES),
            process.stdout: LineSplitter(),
            process.stderr: LineSplitter(),
        }

    def follow(self, job: bytes) -> None:
        """Run until the child reports, dies, times out or is aborted; then kill and drain."""
        process, ctx = self.process, self.ctx
        unsent = memoryview(job)
        cancel_by = None
        next_check = 0.0
        with selectors.DefaultSelector() as selector:
            for fd in self.splitters:
                selector.register(fd, selectors.EVENT_READ)
            selector.register(process.control, selectors.EVENT_WRITE)
            while self.done is None and process.events in self.splitters:
                now = time.monotonic()
                if self.stopped is None and now >= ctx.deadline:
                    self.stopped = "timeout"
                    break
                if self.stopped is None and now >= next_check:
                    next_check = now + POLL_SECONDS
                    if ctx.is_cancelled():
                        self.stopped = "cancel"
                        if unsent:
                            break  # the code has not started: nothing to wind down
                        cancel_by = now + CANCEL_GRACE_SECONDS
                        self.tell_cancel()
                if (cancel_by is not None and now >= cancel_by) or process.exited.is_set():
                    break
                # aborting: only the end of the grace matters now, not the deadline
                wake_at = cancel_by if cancel_by is not None else min(next_check, ctx.deadline)
                for key, _ in selector.select(max(0.0, wake_at - now)):
                    if key.fd == process.control:
                        unsent = self.send_job(unsent, selector)
                    else:
                        self.read(key.fd, selector)
            # the child reported or is past saving: its leftovers (a `sleep 600`) go with it
            process.kill()
            if unsent:
                selector.unregister(process.control)
            self.drain(selector)

    def send_job(self, unsent: memoryview, selector: selectors.BaseSelector) -> memoryview:
        try:
            unsent = unsent[os.write(self.process.control, unsent) :]
        except BlockingIOError:
            return unsent
        except BrokenPipeError:
            unsent = unsent[len(unsent) :]  # it died before reading: its exit says why
        if not unsent:
            selector.unregister(self.process.control)
        return unsent

    def tell_cancel(self) -> None:
        # gone already, or not reading: the kill after the grace ends it
        with contextlib.suppress(OSError):
            os.write(self.process.control, b"cancel\n")

    def read(self, fd: int, selector: selectors.BaseSelector) -> None:
        chunk = os.read(fd, READ_BYTES)
        if not chunk:
            selector.unregister(fd)
            last = self.splitters.pop(fd).take()
            if last:
                self.take_lines(fd, [last])
            return
        if fd != self.process.events and self.budget.spent:
            # past the cap: count, do not split (a child printing 1 GB stays cheap for us)
            self.budget.drop_chunk(chunk)
            return
        self.take_lines(fd, self.splitters[fd].feed(chunk))

    def take_lines(self, fd: int, lines: list[bytes]) -> None:
        if fd == self.process.events:
            for line in lines:
                self.take_event(line)
        else:
            level = "INFO" if fd == self.process.stdout else "WARNING"
            for line in lines:
                self.log(level, decode_line(line))

    def take_event(self, line: bytes) -> None:
        if len(line) > MAX_EVENT_BYTES:
            return  # not one of ours: the code wrote to our channel
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if "log" in event:
            if event["log"] in LEVELS:
                self.log(event["log"], cut_line(str(event.get("message"))))
        elif "dropped" in event:
            self.child_dropped = tuple(event["dropped"])
        elif "done" in event:
            self.done = event

    def log(self, level: str, message: str) -> None:
        message = self.masker.mask(message)
        if self.budget.admit(len(message.encode("utf-8", "replace"))):
            getattr(self.ctx.log, level.lower())(message)

    def drain(self, selector: selectors.BaseSelector) -> None:
        """Read what is left in the pipes until EOF, for a bounded time."""
        give_up_at = time.monotonic() + DRAIN_SECONDS
        while self.splitters:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                break  # something escaped the process group and holds a pipe open
            for key, _ in selector.select(remaining):
                self.read(key.fd, selector)

    def outcome(self) -> Any:
        """Log the truncation and the traceback, then return the output or raise."""
        dropped_lines = self.budget.dropped_lines + self.child_dropped[0]
        dropped_bytes = self.budget.dropped_bytes + self.child_dropped[1]
        if dropped_lines:
            at_least = "at least " if self.done is None else ""
            self.ctx.log.warning(
                f"output truncated: a step logs at most {MAX_LOG_LINES:,} lines or "
                f"{MAX_LOG_BYTES / 1e6:g} MB; dropped {at_least}{dropped_lines:,} lines "
                f"({dropped_bytes:,} bytes)"
            )
            self.ctx.metrics["dropped_log_lines"] = dropped_lines
        for line in (self.done or {}).get("traceback", ()):
            self.ctx.log.error(self.masker.mask(str(line)))
        if self.stopped == "timeout":
            raise StepTimedOut(f"timed out after {self.ctx.timeout_seconds:g}s")
        if self.stopped == "cancel":
            raise StepCanceled("aborted")
        if self.done is None:
            raise StepFailed(describe_exit(self.process.wait(EXIT_CODE_WAIT_SECONDS)))
        if self.done["done"] != "ok":
            error = self.masker.mask(str(self.done.get("error") or "the Python code failed"))
            raise StepFailed(error)
        return self.done.get("output")


def describe_exit(code: int | None) -> str:
    """Say how a child that never reported a result ended."""
    if code is None:
        return "the Python process ended without reporting a result"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the Python process was killed by {name} before reporting a result"
    return f"the Python process exited with code {code} before reporting a result"
