"""The ``python`` step: user code run in a child process with a small ``ctx`` API."""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import time
from pathlib import Path
from typing import Any

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
    cut_line,
    decode_line,
)

CALLABLE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
POLL_SECONDS = 0.1  # how often is_cancelled() is asked
CANCEL_GRACE_SECONDS = 1.0  # an aborted step may end by itself this long, then it is killed
DRAIN_SECONDS = 1.0  # after the end, output still in the pipes is read for at most this long
EXIT_CODE_WAIT_SECONDS = 1.0
READ_BYTES = 1 << 16
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event line; the largest is a 1 MiB output or a traceback


class PythonStep(StepType):
    kind = "python"
    label = "Python"
    fields = (
        ConfigField("code", "code", help="Python run with `ctx` in scope"),
        ConfigField("callable", "string", help="package.module:function from instance/plugins"),
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
        return problems

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
        job = encode_job(config, ctx)
        try:
            process = start_python_process()
        except PythonProcessError as error:
            raise StepFailed(str(error)) from None
        watch = ProcessWatch(process, ctx)
        try:
            watch.follow(job)
        finally:
            process.kill()
            process.close()
            ctx.metrics["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            ctx.metrics["log_lines"] = watch.budget.lines
        return watch.outcome()


def encode_job(config: dict[str, Any], ctx: StepContext) -> bytes:
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
    }
    try:
        # default=str: a date among the params reaches the code as its ISO text
        return json.dumps(job, default=str, ensure_ascii=False).encode() + b"\n"
    except ValueError as error:  # a circular structure
        raise StepFailed(f"the params or earlier outputs cannot be passed on: {error}") from None


class ProcessWatch:
    """Feed the job to a step process, relay its log, and end it on done, timeout or abort."""

    def __init__(self, process: StepProcess, ctx: StepContext):
        self.process, self.ctx = process, ctx
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
            self.ctx.log.error(line)
        if self.stopped == "timeout":
            raise StepTimedOut(f"timed out after {self.ctx.timeout_seconds:g}s")
        if self.stopped == "cancel":
            raise StepCanceled("aborted")
        if self.done is None:
            raise StepFailed(describe_exit(self.process.wait(EXIT_CODE_WAIT_SECONDS)))
        if self.done["done"] != "ok":
            raise StepFailed(str(self.done.get("error") or "the Python code failed"))
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
