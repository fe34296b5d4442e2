"""Leader election: only the process holding the lock fires schedules.

SQLite: an exclusive ``flock`` on ``instance/scheduler.lock`` (one machine by definition).
PostgreSQL: a session advisory lock on a dedicated connection; MariaDB: ``GET_LOCK`` likewise.
A database lock lives exactly as long as its connection, so a dead leader's lock is freed by the
server and a standby polling every second takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

LOCK_KEY = 727_001  # PostgreSQL advisory lock key, fixed for Nomaflow
LOCK_NAME = "nomaflow-scheduler"  # MariaDB named lock


class FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def try_acquire(self) -> bool:
        handle = open(self.path, "a+")  # noqa: SIM115 (held open while we lead)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return True

    def still_held(self) -> bool:
        return self.handle is not None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the flock
            self.handle = None


class DatabaseLock:
    def __init__(self, url: str):
        self.engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self.dialect = self.engine.dialect.name
        self.connection: sa.Connection | None = None

    def try_acquire(self) -> bool:
        if self.connection is None:
            self.connection = self.engine.connect()
        if self.dialect == "postgresql":
            query, args = "SELECT pg_try_advisory_lock(:key)", {"key": LOCK_KEY}
        else:
            query, args = "SELECT GET_LOCK(:name, 0)", {"name": LOCK_NAME}
        return bool(self.connection.execute(sa.text(query), args).scalar())

    def still_held(self) -> bool:
        try:
            self.connection.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.DBAPIError:
            return False

    def release(self) -> None:
        if self.connection is not None:
            # unlock first: the server ends a closed session a moment after close() returns,
            # and a standby asking in that moment would be told the lock is still held
            unlock = (
                ("SELECT pg_advisory_unlock(:key)", {"key": LOCK_KEY})
                if self.dialect == "postgresql"
                else ("SELECT RELEASE_LOCK(:name)", {"name": LOCK_NAME})
            )
            with contextlib.suppress(sa.exc.DBAPIError):
                self.connection.execute(sa.text(unlock[0]), unlock[1])
            with contextlib.suppress(sa.exc.DBAPIError):
                self.connection.close()  # ending the session frees the lock in any case
            self.connection = None

    def dispose(self) -> None:
        self.release()
        self.engine.dispose()


def lock_for(database_url: str, instance_path: Path):
    if sa.make_url(database_url).get_backend_name() == "sqlite":
        return FileLock(instance_path / "scheduler.lock")
    return DatabaseLock(database_url)


class LeaderElection:
    """Poll for the lock in a daemon thread; call back on becoming and ceasing to be leader."""

    def __init__(
        self,
        lock,
        on_elected: Callable[[], None],
        on_deposed: Callable[[], None],
        poll_seconds: float = 1.0,
    ):
        self.lock = lock
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.poll_seconds = poll_seconds
        self.role = "standby"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.role == "leader":
            self._step_down()
        getattr(self.lock, "dispose", self.lock.release)()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.role == "standby" and self.lock.try_acquire():
                    self.role = "leader"
                    log.info("scheduler role: leader")
                    self.on_elected()
                elif self.role == "leader" and not self.lock.still_held():
                    log.warning("scheduler lock lost; stepping down to standby")
                    self._step_down()
            except sa.exc.DBAPIError as exc:
                log.warning("leader election: database error (%s); retrying", exc.orig)
                if self.role == "leader":
                    self._step_down()
                self.lock.release()
            self._stop.wait(self.poll_seconds)

    def _step_down(self) -> None:
        self.role = "standby"
        self.on_deposed()
        self.lock.release()
