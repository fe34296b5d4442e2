"""Warm processes for the ``python`` step: one fork server that forks a fresh process per step.

A new interpreter costs ~25 ms of CPU before it runs a line; forking the fork server, which
has already imported everything (see python_worker.py), costs ~1 ms. The fork server starts
on first use with a clean environment, is replaced if it dies, and is stopped by
shutdown_python_workers() (also at exit). It is one process, however many steps run: each
step gets its own fork, used once, in its own process group, so no state leaks between runs.

Steps that use connectors (ctx.sql, ctx.http) fork from a second fork server, started on the
first such step, that imports SQLAlchemy, the drivers, requests and app.connectors when a step
first asks for them (``preload``): ~0.3 s once instead of in every such step. Plain steps keep
forking from the lean one: a fork of a process holding those modules (~70 MB instead of ~15)
costs ~1.5 ms more per step.

Protocol with the fork server (a Unix SEQPACKET socket, one JSON object per packet):
  server -> fork server   {"id": n}, carrying 4 fds: control_r, events_w, stdout_w, stderr_w;
                          + "preload": [module, ...] to import first, once (connector support)
  fork server -> server   {"id": n, "pid": p} once forked; {"exit": p, "code": c} once reaped
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

WORKER_FILE = Path(__file__).with_name("python_worker.py")
INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
FORK_TIMEOUT_SECONDS = 10.0


def build_child_environment() -> dict[str, str]:
    """Return the environment of step processes: a few harmless variables, no server secret."""
    env = {
        name: os.environ[name]
        for name in INHERITED_VARIABLES
        if name in os.environ and not name.startswith("NOMAFLOW_")
    }
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONUNBUFFERED"] = "1"  # Python subprocesses of the code log as they go
    return env


class PythonProcessError(RuntimeError):
    """No step process could be started."""


class StepProcess:
    """One forked step process: its pid, the server's ends of its pipes, its exit code."""

    def __init__(self, control: int, events: int, stdout: int, stderr: int):
        self.control, self.events, self.stdout, self.stderr = control, events, stdout, stderr
        self.pid: int | None = None
        self.returncode: int | None = None
        self.forked = threading.Event()
        self.exited = threading.Event()

    def kill(self) -> None:
        """Kill the process and everything it started in its group."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty
            os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        """Return the exit code once the fork server reaped the process, None if unknown."""
        self.exited.wait(timeout)
        return self.returncode

    def close(self) -> None:
        """Close the server's ends of the pipes."""
        for name in ("control", "events", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


class ForkServer:
    """The warm process that forks step processes, and the thread that hears from it."""

    def __init__(self):
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", str(WORKER_FILE), str(theirs.fileno())],
                env=build_child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # a Ctrl-C meant for the server must not reach it
            )
        except OSError as error:
            self.socket.close()
            raise PythonProcessError(f"could not start the Python fork server: {error}") from None
        finally:
            theirs.close()
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.waiting: dict[int, StepProcess] = {}  # by request id, until forked
        self.running: dict[int, StepProcess] = {}  # by pid, until reaped
        self.alive = True
        self.listener = threading.Thread(target=self.listen, name="python-fork-server", daemon=True)
        self.listener.start()

    def fork(self, preload: tuple[str, ...] = ()) -> StepProcess:
        """Fork a step process wired to fresh pipes; raise PythonProcessError if we cannot.

        ``preload`` names modules the fork server imports first (once), for this and later steps.

        When the fork server itself failed, it is marked dead so the next call replaces it.
        """
        pipes: list[tuple[int, int]] = []  # control, events, stdout, stderr
        try:
            while len(pipes) < 4:
                pipes.append(os.pipe())
        except OSError as error:  # out of file descriptors: not the fork server's fault
            for fd in (fd for pipe in pipes for fd in pipe):
                os.close(fd)
            raise PythonProcessError(f"could not start a Python process: {error}") from None
        control_r, control_w = pipes[0]
        theirs = [control_r] + [write for _, write in pipes[1:]]
        process = StepProcess(control_w, *(read for read, _ in pipes[1:]))
        try:
            with self.lock:
                if not self.alive:
                    raise PythonProcessError("the Python fork server has stopped")
                request_id = next(self.ids)
                self.waiting[request_id] = process
                request = {"id": request_id, **({"preload": list(preload)} if preload else {})}
                socket.send_fds(self.socket, [json.dumps(request).encode()], theirs)
            if not process.forked.wait(FORK_TIMEOUT_SECONDS) or process.pid is None:
                raise PythonProcessError("the Python fork server did not answer")
        except (OSError, PythonProcessError) as error:
            with self.lock:
                self.alive = False
                self.waiting = {k: v for k, v in self.waiting.items() if v is not process}
            process.close()
            raise PythonProcessError(str(error)) from None
        finally:
            for fd in theirs:  # the fork server holds its own copies now
                os.close(fd)
        os.set_blocking(control_w, False)  # the job is written as the child reads it
        return process

    def listen(self) -> None:
        """Hand fork replies and exit codes to the processes waiting for them."""
        while True:
            try:
                packet = self.socket.recv(4096)
            except OSError:
                packet = b""
            if not packet:
                break
            message = json.loads(packet)
            with self.lock:
                if "pid" in message:
                    process = self.waiting.pop(message["id"], None)
                    if process is not None:
                        process.pid = message["pid"]
                        self.running[process.pid] = process
                        process.forked.set()
                elif "exit" in message:
                    process = self.running.pop(message["exit"], None)
                    if process is not None:
                        process.returncode = message["code"]
                        process.exited.set()
        with self.lock:
            self.alive = False
            for process in self.waiting.values():
                process.forked.set()  # with no pid: fork() reports the failure
            self.waiting.clear()
            # steps still running end on their own (their pipes go straight to us), but no
            # exit code will come for them
            self.running.clear()

    def close(self) -> None:
        """Stop the fork server; it kills the step processes still running."""
        with contextlib.suppress(OSError):  # wakes our listener, EOF for the fork server
            self.socket.shutdown(socket.SHUT_RDWR)
        self.listener.join(timeout=5)
        self.socket.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_lock = threading.Lock()
_fork_server: ForkServer | None = None  # plain steps: the standard library only
_connector_server: ForkServer | None = None  # steps with connectors: their modules preloaded


def start_python_process(preload: tuple[str, ...] = ()) -> StepProcess:
    """Fork a fresh step process, starting (or restarting) the fork server when needed.

    With ``preload`` (modules for connectors) the process comes from the connector fork server.
    """
    global _fork_server, _connector_server
    for attempt in range(2):
        with _lock:
            server = _connector_server if preload else _fork_server
            if server is None or not server.alive:
                if server is not None:
                    server.close()
                server = ForkServer()
                if preload:
                    _connector_server = server
                else:
                    _fork_server = server
        try:
            return server.fork(preload)
        except PythonProcessError:
            if attempt or server.alive:
                raise
    raise AssertionError("unreachable")


def shutdown_python_workers() -> None:
    """Stop the fork servers and the step processes they still run; the server calls it at exit."""
    global _fork_server, _connector_server
    with _lock:
        servers, _fork_server, _connector_server = (_fork_server, _connector_server), None, None
    for server in servers:
        if server is not None:
            server.close()


atexit.register(shutdown_python_workers)  # a no-op unless a step ever ran in this process
