"""The child side of the ``python`` step: a fork server, and the step process it forks.

The server starts this file as a script, ``python -P python_worker.py FD`` (never
``-m app.steps...``: importing the ``app`` package would cost ~300 ms and 50 MB per start),
with a clean environment. It imports what a step needs once, then forks one process per
step on request (~1 ms instead of ~25 ms for a fresh interpreter). A step process runs one
step and exits, so nothing leaks from one run into the next. This module imports only the
standard library; the server imports it for the limits, LogBudget and LineSplitter below.
It is one file on purpose (past 400 lines): run as a script outside the ``app`` package,
it cannot import siblings, so the fork server and the step process live together.

Step process channels (set up by the server, one set per step):
  fd 0         /dev/null
  fd 1, 2      pipes: raw output of the process and its children (the server logs them)
  control fd   server -> step: one JSON line (the job), then any byte or EOF = "cancel"
  events fd    step -> server, JSON lines:
               {"log": "INFO", "message": "..."}   ctx.log, print() (INFO), sys.stderr (WARNING)
               {"dropped": [lines, bytes]}          output dropped so far by the log cap
               {"done": "ok", "output": ...}        last event; "output" only when set
               {"done": "failed", "error": "ZeroDivisionError: ...", "traceback": [...]}

Connectors: the job line carries the connectors the server resolved for this step (values,
secrets in clear, only in this process's memory) and the secret texts to mask. ``ctx.sql`` and
``ctx.http`` import SQLAlchemy, requests and ``app.connectors`` on first use only, so a step
that uses no connector starts as fast as before (a step that does comes from the connector
fork server, which has them imported already: see preload() and python_pool). Every line
this process sends to the log (and the error and traceback) has those secrets masked; the
server masks what it relays once more.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import linecache
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any

MAX_LOG_LINES = 10_000  # per step, whichever of lines and bytes comes first
MAX_LOG_BYTES = 5_000_000
MAX_LINE_BYTES = 8192
MAX_OUTPUT_BYTES = 1024 * 1024  # ctx.set_output, once encoded as JSON
MAX_TRACEBACK_LINES = 200
CODE_FILENAME = "<step code>"
LINE_CUT_MARK = " … (line cut at 8 KB)"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MASK = "••••••"
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words (as the run log does)

WORKER_FILE = os.path.abspath(__file__)
APP_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(WORKER_FILE)))  # holds app/
DROPPED_REPORT_SECONDS = 0.25


class LogBudget:
    """Count log text against the per-step cap; admit lines until it is spent."""

    def __init__(self, max_lines: int = MAX_LOG_LINES, max_bytes: int = MAX_LOG_BYTES):
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.lines = self.bytes = 0
        self.dropped_lines = self.dropped_bytes = 0

    @property
    def spent(self) -> bool:
        return self.dropped_lines > 0

    def admit(self, size: int) -> bool:
        """Return True when a line of ``size`` bytes may be logged; count it either way."""
        if not self.spent and self.lines < self.max_lines and self.bytes + size <= self.max_bytes:
            self.lines += 1
            self.bytes += size
            return True
        self.drop(1, size)
        return False

    def drop(self, lines: int, size: int) -> None:
        self.dropped_lines += lines
        self.dropped_bytes += size

    def drop_chunk(self, data: bytes) -> None:
        """Count a raw chunk as dropped without splitting it (newlines are not text)."""
        lines = data.count(b"\n")
        self.drop(lines, len(data) - lines)


class LineSplitter:
    """Split a byte stream into lines, keeping at most ``limit`` + 1 bytes of each.

    A line of ``limit`` + 1 bytes was longer and has been cut; the rest of it is skipped
    as it arrives, so no more than one line's worth is ever buffered.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES):
        self.limit = limit
        self.pending = bytearray()
        self.skipping = False  # inside a line already cut

    def feed(self, data: bytes) -> list[bytes]:
        lines, start = [], 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self.skipping:
                self.pending += piece[: self.limit + 1 - len(self.pending)]
                if len(self.pending) > self.limit:
                    lines.append(self.take())
                    self.skipping = True
            if end < 0:
                return lines
            if not self.skipping:
                lines.append(self.take())
            self.skipping = False
            start = end + 1

    def take(self) -> bytes:
        """Return the line in progress (an unterminated last line, at the end) and forget it."""
        line = bytes(self.pending)
        self.pending.clear()
        return line


def decode_line(line: bytes) -> str:
    """Decode a line from a pipe for the log, marking it when it was cut."""
    text = line.decode("utf-8", "replace").rstrip("\r")
    return cut_line(text)


def cut_line(line: str) -> str:
    """Cut a log line to MAX_LINE_BYTES (UTF-8), saying so."""
    data = line.encode("utf-8", "replace")
    if len(data) <= MAX_LINE_BYTES:
        return line
    return data[:MAX_LINE_BYTES].decode("utf-8", "ignore") + LINE_CUT_MARK


class Masker:
    """Hide the secrets of a step's connectors in text bound for the run log.

    ``extra`` holds more maskers (an HTTP client's, which knows the OAuth2 tokens it was
    issued). A line cut at 8 KB may end inside a secret: a tail that starts one is masked too.
    """

    def __init__(self, secrets=()):
        found = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: no partial leftovers
        self.extra: list = []

    def __bool__(self) -> bool:
        return bool(self.secrets or self.extra)

    def mask(self, text: str) -> str:
        if not self:
            return text
        cut = text.endswith(LINE_CUT_MARK)
        if cut:
            text = text[: -len(LINE_CUT_MARK)]
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for mask in tuple(self.extra):
            text = mask(text)
        if cut:
            text = self.mask_tail(text) + LINE_CUT_MARK
        return text

    def mask_tail(self, text: str) -> str:
        for secret in self.secrets:
            for size in range(min(len(secret) - 1, len(text)), 0, -1):
                if text.endswith(secret[:size]):
                    return text[:-size] + MASK
        return text


# --- the step process ------------------------------------------------------------------------


class EventChannel:
    """Send JSON lines to the server; shared by every thread of the user's code."""

    def __init__(self, fd: int, masker: Masker | None = None):
        self.fd = fd
        self.lock = threading.Lock()
        self.budget = LogBudget()
        self.reported_drop_at = 0.0
        self.masker = masker or Masker()

    def send_raw(self, line: str) -> None:
        data = line.encode("utf-8", "replace") + b"\n"
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def send(self, event: dict[str, Any]) -> None:
        self.send_raw(json.dumps(event, ensure_ascii=False))

    def log(self, level: str, message: str) -> None:
        message = cut_line(self.masker.mask(message))
        with self.lock:
            admitted = self.budget.admit(len(message.encode("utf-8", "replace")))
        if admitted:
            self.send({"log": level, "message": message})
        else:
            self.log_dropped()

    def log_dropped(self) -> None:
        # the server may kill us before the end: keep it roughly up to date
        if time.monotonic() - self.reported_drop_at > DROPPED_REPORT_SECONDS:
            self.reported_drop_at = time.monotonic()
            self.report_dropped()

    def report_dropped(self) -> None:
        if self.budget.spent:
            self.send({"dropped": [self.budget.dropped_lines, self.budget.dropped_bytes]})


class LineSink(io.RawIOBase):
    """A write-only stream that sends each complete line to the run log at one level."""

    def __init__(self, channel: EventChannel, level: str, fd: int):
        super().__init__()
        self.channel, self.level, self.fd = channel, level, fd
        self.splitter = LineSplitter()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        # code handing sys.stdout to a subprocess gets the raw pipe, which is logged too
        return self.fd

    def write(self, data) -> int:
        data = bytes(data)
        if self.channel.budget.spent:
            # past the cap: count, do not split (a loop printing 1 GB stays cheap)
            with self.channel.lock:
                self.channel.budget.drop_chunk(data)
            self.channel.log_dropped()
            return len(data)
        with self.lock:
            lines = self.splitter.feed(data)
        for line in lines:
            self.channel.log(self.level, decode_line(line))
        return len(data)

    def finish(self) -> None:
        """Send a last line that has no newline."""
        with self.lock:
            line = self.splitter.take()
        if line:
            self.channel.log(self.level, decode_line(line))


class StepLogProxy:
    """``ctx.log``: debug / info / warning / error to the run log."""

    def __init__(self, channel: EventChannel):
        self._channel = channel

    def debug(self, message: Any) -> None:
        self._channel.log("DEBUG", str(message))

    def info(self, message: Any) -> None:
        self._channel.log("INFO", str(message))

    def warning(self, message: Any) -> None:
        self._channel.log("WARNING", str(message))

    def error(self, message: Any) -> None:
        self._channel.log("ERROR", str(message))


class EarlierStep:
    """What the code sees of an earlier step: ``ctx.steps["name"].output / .status / .rows``."""

    __slots__ = ("output", "rows", "status")

    def __init__(self, output: Any = None, status: str = "", rows: int | None = None):
        self.output, self.status, self.rows = output, status, rows

    def __repr__(self) -> str:
        return f"EarlierStep(status={self.status!r}, rows={self.rows!r}, output={self.output!r})"


class StepCodeContext:
    """The ``ctx`` that the step's code gets."""

    def __init__(
        self,
        job: dict[str, Any],
        channel: EventChannel,
        control_fd: int,
        cancelled,
        connectors: StepConnectors | None = None,
    ):
        self.params: dict[str, Any] = job.get("params") or {}
        self.steps = {name: EarlierStep(**view) for name, view in (job.get("steps") or {}).items()}
        self.run_id = job.get("run_id")
        self.job_id = job.get("job_id")
        self.triggered_by = job.get("triggered_by")
        self.log = StepLogProxy(channel)
        self._control_fd = control_fd
        self._cancelled = cancelled
        self._output: str | None = None  # encoded JSON
        self._connectors = connectors or StepConnectors({}, channel.masker)

    def set_output(self, value: Any) -> None:
        """Make ``value`` the step's output (JSON, at most 1 MiB once encoded)."""
        self._output = encode_output(value, "ctx.set_output")

    def is_cancelled(self) -> bool:
        """Return True once the operator aborted the run: end soon, cleanly."""
        if not self._cancelled:
            readable, _, _ = select.select([self._control_fd], [], [], 0)
            self._cancelled = bool(readable)
        return self._cancelled

    def sql(self, connector: str) -> SqlTransaction:
        """``with ctx.sql("ops") as db:`` a SQLAlchemy Connection in a transaction.

        The block commits when it ends and rolls back when it raises.
        """
        self._connectors.lookup(connector, "sql")
        return SqlTransaction(self._connectors, connector)

    def http(self, connector: str) -> HttpConnector:
        """A requests-like session: relative URLs join the connector's base_url, with its auth."""
        return self._connectors.http(connector)


class StepConnectors:
    """The connectors the server resolved for this step; engines and clients built on first use.

    ``given`` maps name -> {"kind": "sql" | "http", "values": {...}} (secrets in clear).
    """

    def __init__(self, given: dict[str, Any], masker: Masker):
        self.given, self.masker = given, masker
        self.engines: dict[str, Any] = {}
        self.clients: dict[str, HttpConnector] = {}
        self.lock = threading.Lock()  # the code's threads may ask for the same connector

    def lookup(self, name: Any, kind: str) -> dict[str, Any]:
        call = f"ctx.{kind}"
        if not isinstance(name, str):
            raise TypeError(f"{call}() takes a connector name (text), not {type(name).__name__}")
        found = self.given.get(name)
        if found is None:
            raise RuntimeError(
                f"{call}({name!r}): connector {name!r} was not given to this step. The step "
                f'finds the connectors its code uses in calls such as {call}("{name}"), with '
                "the name written as a string literal; name it so, or list it in the step's "
                f'`connectors` field (connectors = ["{name}"])'
            )
        if found["kind"] != kind:
            actual = found["kind"]
            raise RuntimeError(f"{call}({name!r}): connector {name!r} is {actual}, not {kind}")
        return found["values"]

    def engine(self, name: str):
        with self.lock:
            engine = self.engines.get(name)
            if engine is None:
                values = self.lookup(name, "sql")
                build_engine = import_app_module("app.connectors.sql").build_engine
                engine = self.engines[name] = build_engine(values, pooled=False)  # NullPool
            return engine

    def http(self, name: str) -> HttpConnector:
        with self.lock:
            client = self.clients.get(name)
            if client is None:
                values = self.lookup(name, "http")
                http_client = import_app_module("app.connectors.http_client")
                client = self.clients[name] = HttpConnector(name, http_client.HttpClient(values))
                self.masker.extra.append(client._client.mask)  # tokens issued by OAuth2
            return client

    def close(self) -> None:
        """Close what the step opened (its own code may have kept a connection: its end)."""
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                engine.dispose()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client._client.close()


def import_app_module(name: str) -> types.ModuleType:
    """Import a module of the ``app`` package, which is not imported when this process starts.

    An installed Nomaflow is on sys.path already; a source checkout is found next to this
    file (added last, so it shadows none of the code's own modules).
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != "app" or APP_ROOT in sys.path:
            raise
    sys.path.append(APP_ROOT)
    return importlib.import_module(name)


class SqlTransaction:
    """What ``ctx.sql(name)`` returns: ``with`` it to get a Connection in a transaction."""

    def __init__(self, connectors: StepConnectors, name: str):
        self._connectors, self._name = connectors, name
        self._begun = None

    def __enter__(self):
        # engine.begin(): commit at the end of the block, rollback on an exception, then close
        self._begun = self._connectors.engine(self._name).begin()
        return self._begun.__enter__()

    def __exit__(self, *exc_info) -> bool | None:
        begun, self._begun = self._begun, None
        return begun.__exit__(*exc_info)

    def __getattr__(self, attribute: str):
        raise AttributeError(
            f"ctx.sql({self._name!r}) has no {attribute!r}: use it in a with block, "
            f"`with ctx.sql({self._name!r}) as db: db.execute(...)`; the block commits at its "
            "end and rolls back on an exception"
        )

    def __repr__(self) -> str:
        return f"<ctx.sql({self._name!r})>"


class HttpConnector:
    """What ``ctx.http(name)`` returns: the verbs of a requests.Session on the connector.

    A relative URL joins the connector's base_url; its headers and auth (OAuth2 tokens
    included) go to its own origin only; ``timeout`` defaults to the connector's. Responses
    are requests.Response objects (``stream=True`` to read a large body bit by bit).
    """

    def __init__(self, name: str, client: Any):
        self.name, self._client = name, client
        self.base_url = client.base_url

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ):
        if isinstance(timeout, int | float):
            timeout = (timeout, timeout)
        return self._client.request(
            method.upper(),
            url,
            params=params,
            data=data,
            json=json,
            headers=headers,
            timeout=timeout,
            stream=stream,
        )

    def get(self, url: str, **options):
        return self.request("GET", url, **options)

    def head(self, url: str, **options):
        return self.request("HEAD", url, **options)

    def options(self, url: str, **options):
        return self.request("OPTIONS", url, **options)

    def post(self, url: str, data: Any = None, json: Any = None, **options):
        return self.request("POST", url, data=data, json=json, **options)

    def put(self, url: str, data: Any = None, **options):
        return self.request("PUT", url, data=data, **options)

    def patch(self, url: str, data: Any = None, **options):
        return self.request("PATCH", url, data=data, **options)

    def delete(self, url: str, **options):
        return self.request("DELETE", url, **options)

    def close(self) -> None:
        """Close pooled connections (the object stays usable)."""
        self._client.session.close()

    def __enter__(self) -> HttpConnector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ctx.http({self.name!r}) {self.base_url}>"


def encode_output(value: Any, what: str) -> str:
    """Encode the step's output as JSON text, or raise saying why it cannot be one."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} needs a JSON-serialisable value: {error}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_OUTPUT_BYTES:
        raise ValueError(
            f"{what}: the output is {size:,} bytes once encoded as JSON; "
            f"the limit is 1 MiB ({MAX_OUTPUT_BYTES:,} bytes)"
        )
    return text


def read_job(control_fd: int) -> tuple[dict[str, Any], bool]:
    """Read the job line; return it and whether a cancel already followed it."""
    data = bytearray()
    while b"\n" not in data:
        chunk = os.read(control_fd, 1 << 16)
        if not chunk:
            raise EOFError("the server went away before sending the job")
        data += chunk
    line, _, rest = bytes(data).partition(b"\n")
    return json.loads(line), bool(rest)


def call_user_code(job: dict[str, Any], ctx: StepCodeContext, main: types.ModuleType) -> Any:
    """Run the inline code in ``main``, or import and call the plugin function."""
    plugins = job.get("plugins")
    if plugins:
        sys.path.insert(0, plugins)
        os.environ["PYTHONPATH"] = plugins  # for Python subprocesses the code starts
    if job.get("code") is not None:
        source = job["code"]
        linecache.cache[CODE_FILENAME] = (len(source), None, source.splitlines(True), CODE_FILENAME)
        main.__dict__.update(ctx=ctx, __builtins__=__builtins__)
        exec(compile(source, CODE_FILENAME, "exec"), main.__dict__)
        return None
    module_name, _, function_name = job["callable"].partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return function(ctx)


def is_our_frame(frame: traceback.FrameSummary) -> bool:
    """Tell the frames of this module and of the import machinery from the user's."""
    return frame.filename in (WORKER_FILE, importlib.__file__) or frame.filename.startswith(
        "<frozen importlib"
    )


def strip_our_frames(summary: traceback.TracebackException, seen: set[int]) -> None:
    """Keep only the user's frames, in this exception and those chained to it."""
    if id(summary) in seen:
        return
    seen.add(id(summary))
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not is_our_frame(frame)]
    )
    for linked in (summary.__cause__, summary.__context__, *(summary.exceptions or ())):
        if linked is not None:
            strip_our_frames(linked, seen)


def describe_failure(error: BaseException, masker: Masker | None = None) -> dict[str, Any]:
    """Return the done event for an uncaught exception: the error line and the traceback."""
    mask = (masker or Masker()).mask
    summary = traceback.TracebackException.from_exception(error)
    strip_our_frames(summary, set())
    lines = [cut_line(mask(line)) for line in "".join(summary.format()).splitlines()]
    if len(lines) > MAX_TRACEBACK_LINES:
        omitted = len(lines) - MAX_TRACEBACK_LINES
        lines = [*lines[:10], f"... {omitted} lines omitted ...", *lines[-190:]]
    exception_only = list(summary.format_exception_only())
    # notes (add_note) come after the "Type: message" line, which is last otherwise
    notes = len(getattr(summary, "__notes__", None) or ())
    message = exception_only[len(exception_only) - 1 - notes].strip()
    return {"done": "failed", "error": cut_line(mask(message)), "traceback": lines}


def run_step(control_fd: int, events_fd: int) -> None:
    """Run the one step this process was forked for and report how it ended."""
    job, cancelled = read_job(control_fd)
    masker = Masker(job.pop("mask", None) or ())
    channel = EventChannel(events_fd, masker)
    connectors = StepConnectors(job.pop("connectors", None) or {}, masker)
    ctx = StepCodeContext(job, channel, control_fd, cancelled, connectors)
    sinks = [LineSink(channel, "INFO", 1), LineSink(channel, "WARNING", 2)]
    streams = [
        io.TextIOWrapper(sink, "utf-8", "backslashreplace", line_buffering=True, write_through=True)
        for sink in sinks
    ]
    sys.stdout, sys.stderr = streams
    # a fresh __main__ so functions and classes the code defines can be pickled
    main = sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        result = call_user_code(job, ctx, main)
        if ctx._output is None and result is not None:
            ctx._output = encode_output(result, f"the value returned by {job['callable']}")
        done = None
    except SystemExit as error:
        code = error.code
        failed = {"done": "failed", "error": cut_line(masker.mask(f"SystemExit: {code}"))}
        done = None if code in (None, 0) else failed
    except BaseException as error:
        done = describe_failure(error, masker)
    wind_down(main)
    connectors.close()
    for stream, sink in zip(streams, sinks, strict=True):
        with contextlib.suppress(OSError, ValueError):  # the code closed it
            stream.flush()
        sink.finish()
    channel.report_dropped()
    if done is not None:
        channel.send(done)
    elif ctx._output is None:
        channel.send({"done": "ok"})
    else:
        channel.send_raw(f'{{"done": "ok", "output": {ctx._output}}}')


def wind_down(main: types.ModuleType) -> None:
    """Do what interpreter exit would: join threads, run atexit, free globals (flushes files)."""
    # os._exit() follows, so this is the code's last chance to write what it buffered
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    main.__dict__.clear()
    gc.collect()


def become_step_process(fds: list[int], closing: list[int]) -> None:
    """In the fresh fork: own process group, pipes on fd 1/2, nothing of the fork server."""
    os.setpgid(0, 0)  # the server kills the whole group; the fork server does it too (race)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in closing:
        os.close(fd)
    control_fd, events_fd, stdout_fd, stderr_fd = fds
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdout_fd, 1)  # dup2 makes them inheritable: children of the code log there too
    os.dup2(stderr_fd, 2)
    for fd in (null, stdout_fd, stderr_fd):
        os.close(fd)
    os.set_inheritable(control_fd, False)
    os.set_inheritable(events_fd, False)
    gc.enable()
    run_step(control_fd, events_fd)
    os._exit(0)  # skip interpreter teardown: the fork server's state is not ours to finalise


# --- the fork server -------------------------------------------------------------------------


def become_subreaper() -> None:
    """Adopt orphaned grandchildren of step processes so they are reaped, not left as zombies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, which reaps them


def reap(children: set[int], server: socket.socket) -> None:
    """Collect every ended child; tell the server the exit code of its step processes."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):  # the server hung up: serve() sees it and ends
                server.send(json.dumps({"exit": pid, "code": code}).encode())


def preload(modules: list[str]) -> None:
    """Import, once, modules a step asked for (connector support), so later forks have them.

    The fork server starts with the standard library only; the first step that uses
    ctx.sql or ctx.http makes it import SQLAlchemy, the driver, requests and app.connectors
    (~0.3 s), which every later step process then gets for free with the fork.
    """
    fresh = [name for name in modules if isinstance(name, str) and name not in sys.modules]
    if not fresh:
        return
    for name in fresh:
        with contextlib.suppress(Exception):  # the step process imports it again, and says why
            import_app_module(name)
    gc.collect()
    gc.freeze()


def serve(server_fd: int) -> None:
    """Fork one step process per request until the server hangs up."""
    server = socket.socket(fileno=server_fd)
    become_subreaper()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    gc.collect()
    gc.freeze()  # keep the pages shared with the forks untouched by the collector
    gc.disable()
    try:
        while True:
            readable, _, _ = select.select([server, wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 4096)
                reap(children, server)
            if server not in readable:
                continue
            message, fds, _, _ = socket.recv_fds(server, 4096, 4)
            if not message:
                return
            request = json.loads(message)
            preload(request.get("preload") or ())
            pid = os.fork()
            if pid == 0:
                try:
                    become_step_process(fds, [server.detach(), wake_r, wake_w])
                finally:
                    os._exit(70)  # never run the fork server's cleanup in a step process
            with contextlib.suppress(OSError):  # the child did it first, or already ended
                os.setpgid(pid, 0)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            server.send(json.dumps({"id": request["id"], "pid": pid}).encode())
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
