"""Run logs: numbered per run, filtered by level, masked, capped, written in batches.

One writer thread per process takes whatever lines are buffered, inserts them in one
transaction and then announces them (``log_appended``) in sequence order. It does not wait for
a timer: the first line goes out at once, and under load the batches grow by themselves.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa

from app.db import Database, utcnow
from app.engine.signals import log_appended
from app.models import LogLine, Run

log = logging.getLogger(__name__)

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
MAX_LINE_CHARS = 8192


class LogWriter:
    """Buffer log lines of every run and write them in batches from one thread."""

    def __init__(self, database: Database):
        self.database = database
        self._pending: list[dict] = []
        self._ready = threading.Condition()
        self._written = threading.Condition()
        self._queued_total = 0
        self._written_total = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="log-writer", daemon=True)
        self._thread.start()

    def append(self, line: dict) -> None:
        with self._ready:
            self._pending.append(line)
            self._queued_total += 1
            self._ready.notify()

    def flush(self, timeout: float = 30) -> None:
        """Wait until every line appended so far is in the database and announced."""
        with self._ready:
            target = self._queued_total
        with self._written:
            self._written.wait_for(lambda: self._written_total >= target, timeout=timeout)

    def stop(self) -> None:
        self.flush()
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._pending or self._stopping)
                if self._stopping and not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                self._write(batch)
            except Exception:  # a lost batch must not kill the log thread for every run
                log.exception("could not write %d log lines", len(batch))
            with self._written:
                self._written_total += len(batch)
                self._written.notify_all()

    def _write(self, batch: list[dict]) -> None:
        by_run: dict[int, list[dict]] = defaultdict(list)
        for line in batch:
            by_run[line["run_id"]].append(line)
        with self.database.session_scope() as db:
            db.execute(
                sa.insert(LogLine),
                [
                    {k: line[k] for k in ("run_id", "step_run_id", "seq", "ts", "level", "message")}
                    for line in batch
                ],
            )
            for run_id, lines in by_run.items():
                db.execute(
                    sa.update(Run)
                    .where(Run.id == run_id)
                    .values(log_lines_count=max(line["seq"] for line in lines))
                )
        for run_id, lines in by_run.items():
            log_appended.send(run_id, lines=lines)


class RunLog:
    """The log of one run: numbers lines, drops those under the run's level, masks secrets."""

    def __init__(
        self,
        writer: LogWriter,
        run_id: int,
        level: str = "INFO",
        secrets: list[str] | None = None,
        max_lines: int = 100_000,
        start_seq: int = 0,
    ):
        self.writer = writer
        self.run_id = run_id
        self.threshold = LEVELS.get(level, 20)
        self.secrets = sorted((s for s in (secrets or []) if len(s) >= 4), key=len, reverse=True)
        self.max_lines = max_lines
        self.seq = start_seq
        self.dropped = 0
        self._lock = threading.Lock()

    def write(
        self, level: str, message: str, step_run_id: int | None = None, step: str = ""
    ) -> None:
        if LEVELS.get(level, 20) < self.threshold:
            return
        message = self.mask(str(message))
        if len(message) > MAX_LINE_CHARS:
            message = message[:MAX_LINE_CHARS] + f" … [{len(message) - MAX_LINE_CHARS} chars cut]"
        with self._lock:
            if self.seq >= self.max_lines:
                self.dropped += 1
                return
            self.seq += 1
            if self.seq == self.max_lines:
                level, message = (
                    "WARNING",
                    (
                        f"log cap of {self.max_lines} lines reached: further lines of this run are "
                        "dropped (NOMAFLOW_LOG_MAX_LINES)"
                    ),
                )
            self.writer.append(
                {
                    "run_id": self.run_id,
                    "step_run_id": step_run_id,
                    "step": step,
                    "seq": self.seq,
                    "ts": utcnow(),
                    "level": level,
                    "message": message,
                }
            )

    def mask(self, text: str) -> str:
        """Hide every known secret value (secret parameters and variables) in ``text``."""
        for secret in self.secrets:
            text = text.replace(secret, "••••••")
        return text

    def mask_value(self, value):
        """``mask`` through the strings of a JSON-like value (step outputs)."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list):
            return [self.mask_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.mask_value(v) for k, v in value.items()}
        return value

    def for_step(self, step_run_id: int | None, step: str) -> StepLogger:
        return StepLogger(self, step_run_id, step)

    def info(self, message: str) -> None:
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        self.write("WARNING", message)

    def error(self, message: str) -> None:
        self.write("ERROR", message)

    def debug(self, message: str) -> None:
        self.write("DEBUG", message)


class StepLogger:
    """The logger a step sees (the StepLog protocol), bound to its step run."""

    def __init__(self, run_log: RunLog, step_run_id: int | None, step: str):
        self.run_log, self.step_run_id, self.step = run_log, step_run_id, step

    def debug(self, message: str) -> None:
        self.run_log.write("DEBUG", message, self.step_run_id, self.step)

    def info(self, message: str) -> None:
        self.run_log.write("INFO", message, self.step_run_id, self.step)

    def warning(self, message: str) -> None:
        self.run_log.write("WARNING", message, self.step_run_id, self.step)

    def error(self, message: str) -> None:
        self.run_log.write("ERROR", message, self.step_run_id, self.step)


def format_line(seq: int, ts: datetime, level: str, message: str) -> str:
    """Render one line as text (downloads, the CLI)."""
    return f"{ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} {level:<7} {message}"
