"""The run engine inside real `nomaflow serve` processes, driven by the real CLI.

Every test here starts servers as subprocesses, talks to them only through the `nomaflow`
command, /healthz and the database they share, and kills what it started:

* kill -9 mid-run (SQLite): the run is found INTERRUPTED at the next start, the history is
  intact, the step's process tree dies with its server, and `requeue_interrupted` re-queues;
* two servers on PostgreSQL: one leader fires an every-second schedule, never twice for one
  time; kill -9 of the leader and the standby takes over within seconds;
* the CLI against a live server (trigger, runs abort, bad parameters) and `nomaflow run` in the
  foreground without a server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import tomli_w

from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FINAL = {
    "SUCCEEDED",
    "PARTIAL",
    "FAILED",
    "CANCELED",
    "TIMED_OUT",
    "SKIPPED",
    "MISSED",
    "INTERRUPTED",
}


# --- the nomaflow command as a subprocess -------------------------------------------------------


class Nomaflow:
    """`python -m app.cli ...` against one instance folder (and database)."""

    def __init__(self, instance: Path, database_url: str | None = None):
        self.instance = instance
        self.database_url = database_url or f"sqlite:///{instance}/nomaflow.db"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOMAFLOW_")}
        env["NOMAFLOW_INSTANCE"] = str(self.instance)
        env["NOMAFLOW_DATABASE_URL"] = self.database_url
        return env

    def server_env(self, **extra: str) -> dict[str, str]:
        """For ServerProcess (which adds os.environ): every setting that matters, explicitly."""
        return {
            "NOMAFLOW_DATABASE_URL": self.database_url,
            "NOMAFLOW_SCHEDULER_ENABLED": "true",
            "NOMAFLOW_ADMIN_PASSWORD": "serve-engine-tests",
            **extra,
        }

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"nomaflow {' '.join(args)}: {result.stderr}"
        return result.stdout

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def upgrade(self) -> None:
        self.ok("db", "upgrade")

    def import_jobs(self, *jobs: dict) -> None:
        path = self.instance / f"jobs-{uuid.uuid4().hex[:8]}.toml"
        path.write_text(tomli_w.dumps({"jobs": list(jobs)}))
        self.ok("jobs", "import", str(path))

    def trigger(self, job: str, **params: str) -> int:
        pairs = [arg for k, v in params.items() for arg in ("--param", f"{k}={v}")]
        return int(self.ok("trigger", job, *pairs).strip())

    def show(self, run_id: int, log: bool = False) -> dict:
        return json.loads(self.ok("runs", "show", str(run_id), "--json", *(["--log"] * log)))

    def runs(self, job: str) -> list[dict]:
        return json.loads(self.ok("runs", "list", "--job", job, "--limit", "1000", "--json"))

    def wait_for(self, run_id: int, states=FINAL, timeout: float = 20, line: str | None = None):
        """Poll `runs show` until the run is in ``states`` (and ``line`` is in its log)."""
        deadline = time.monotonic() + timeout
        while True:
            document = self.show(run_id, log=True)
            messages = [entry["message"] for entry in document["log"]]
            if document["state"] in states and (line is None or line in messages):
                return document
            assert time.monotonic() < deadline, (
                f"run {run_id} is {document['state']} after {timeout}s, waiting for {states}"
                f" and {line!r}; log: {messages}"
            )
            time.sleep(0.2)


def python_job(job_id: str, code: str, **fields) -> dict:
    return {"id": job_id, **fields, "steps": [{"name": "main", "type": "python", "code": code}]}


def sleeping_code(marker: str, before: str = "") -> str:
    """Step code that starts a `sleep 600` with ``marker`` in its argv and waits for it."""
    return (
        "import subprocess, sys\n"
        f"{before}"
        "child = subprocess.Popen(\n"
        f"    [sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}]\n"
        ")\n"
        f"print('sleeping {marker}', flush=True)\n"
        "child.wait()\n"
    )


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- processes in /proc -------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def process_tree(root: int) -> dict[int, bytes]:
    """Every descendant of ``root`` (not root itself), with its command line."""
    children = defaultdict(list)
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children[stat[1]].append(pid)
    found, todo = {}, list(children[root])
    while todo:
        pid = todo.pop()
        cmdline = _cmdline(pid)
        if cmdline is not None:
            found[pid] = cmdline
        todo.extend(children[pid])
    return found


def still_alive(processes: dict[int, bytes]) -> dict[int, str]:
    """Those of ``processes`` still running (same pid, same command line, not a zombie)."""
    alive = {}
    for pid, cmdline in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and _cmdline(pid) == cmdline:
            alive[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return alive


def processes_with(marker: str) -> dict[int, str]:
    """Running processes whose command line contains ``marker``."""
    needle, found = marker.encode(), {}
    for pid in _all_pids():
        cmdline, stat = _cmdline(pid), _stat(pid)
        if cmdline and needle in cmdline and stat is not None and stat[0] != "Z":
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_until_gone(marker: str, tree: dict[int, bytes], timeout: float) -> float:
    began = time.monotonic()
    while processes_with(marker) or still_alive(tree):
        assert time.monotonic() - began < timeout, (
            f"still running {timeout}s after their server died: "
            f"{processes_with(marker) | still_alive(tree)}"
        )
        time.sleep(0.1)
    return time.monotonic() - began


def kill_leftovers(marker: str) -> None:
    """Last resort in teardown: the marker is ours, so are the processes carrying it."""
    for pid in processes_with(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def servers():
    """Servers started by a test; killed at the end whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop(kill=True)


@pytest.fixture
def marker():
    value = f"nomaflow-serve-engine-{uuid.uuid4().hex}"
    yield value
    kill_leftovers(value)


@pytest.fixture
def sqlite_cli(tmp_path) -> Nomaflow:
    cli = Nomaflow(tmp_path / "instance")
    cli.instance.mkdir()
    cli.upgrade()
    return cli


def start(servers: list, cli: Nomaflow, **env: str) -> ServerProcess:
    server = ServerProcess(cli.instance, **cli.server_env(**env))
    servers.append(server)
    server.start()
    return server


# --- 1. kill -9 mid-run ---------------------------------------------------------------------------


def test_kill_9_mid_run_interrupts_the_run_loses_nothing_and_leaves_no_process(
    sqlite_cli, servers, marker
):
    cli = sqlite_cli
    flag = cli.instance / "second-life"
    cli.import_jobs(
        python_job(
            "quick",
            "for i in range(3):\n    print(f'quick line {i}')\nctx.set_output({'lines': 3})\n",
        ),
        python_job("sleeper", sleeping_code(marker)),
        python_job(
            "sleeper-requeued",
            sleeping_code(
                marker,
                before=(
                    "import pathlib\n"
                    f"flag = pathlib.Path({str(flag)!r})\n"
                    "if flag.exists():\n"
                    "    print(f\"second life for {ctx.params['day']}\")\n"
                    "    raise SystemExit(0)\n"
                    "flag.touch()\n"
                ),
            ),
            requeue_interrupted=True,
            params=[{"name": "day", "type": "date", "default": "2026-01-01"}],
        ),
    )
    first = start(servers, cli)

    quick_id = cli.trigger("quick")
    quick_before = cli.wait_for(quick_id, line="quick line 2")
    assert quick_before["state"] == "SUCCEEDED"
    quick_log = [line["message"] for line in quick_before["log"]]
    assert [m for m in quick_log if m.startswith("quick line")] == [
        "quick line 0",
        "quick line 1",
        "quick line 2",
    ]

    sleeper_id = cli.trigger("sleeper")
    requeued_id = cli.trigger("sleeper-requeued", day="2026-03-04")
    sleeping = {
        run_id: cli.wait_for(run_id, {"RUNNING"}, line=f"sleeping {marker}")
        for run_id in (sleeper_id, requeued_id)
    }
    tree = process_tree(first.process.pid)
    assert len(processes_with(marker)) == 2, tree  # the two `sleep 600`s, ours
    assert set(processes_with(marker)) <= set(tree), "the sleeps belong to the server's tree"

    first.stop(kill=True)  # kill -9: no atexit, no finally, no flush
    # the step processes, their `sleep`s and the fork server die with their server, by
    # themselves: no new server has started yet
    gone_after = wait_until_gone(marker, tree, timeout=5)

    began = time.time()
    second = start(servers, cli)
    took_to_serve = time.time() - began
    for run_id, before in sleeping.items():
        after = cli.wait_for(run_id, timeout=5)
        assert after["state"] == "INTERRUPTED", after
        assert after["reason"] and before["node"] in after["reason"], after["reason"]
        assert "stopped mid-run" in after["reason"]
        # marked at start, before the new server took its first request
        assert parse_time(after["finished_at"]).timestamp() <= began + took_to_serve + 0.5
        assert [line["message"] for line in after["log"]][: len(before["log"])] == [
            line["message"] for line in before["log"]
        ]

    # nothing of the finished run was lost or changed
    assert cli.show(quick_id, log=True) == quick_before

    # requeue_interrupted = true: a "retry" run with the same parameters, run by the new server
    retries = [r for r in cli.runs("sleeper-requeued") if r["trigger"] == "retry"]
    assert [r["replay_of"] for r in retries] == [requeued_id]
    retried = cli.wait_for(retries[0]["id"], line="second life for 2026-03-04")
    assert retried["state"] == "SUCCEEDED" and retried["params"] == {"day": "2026-03-04"}
    assert retried["node"] != sleeping[requeued_id]["node"]
    # the job without requeue_interrupted stays interrupted: nothing re-queued
    assert [r["id"] for r in cli.runs("sleeper")] == [sleeper_id]
    assert second.health()["status"] == "ok"
    print(
        f"restart served in {took_to_serve:.2f} s; step processes gone "
        f"{gone_after:.2f} s after the kill",
        file=sys.stderr,
    )


def test_an_interrupted_run_has_no_step_left_running(sqlite_cli, servers, marker):
    cli = sqlite_cli
    cli.import_jobs(python_job("sleeper", sleeping_code(marker)))
    first = start(servers, cli)
    run_id = cli.trigger("sleeper")
    cli.wait_for(run_id, {"RUNNING"}, line=f"sleeping {marker}")
    first.stop(kill=True)
    start(servers, cli)
    after = cli.wait_for(run_id, timeout=5)
    assert after["state"] == "INTERRUPTED"
    (step,) = after["steps"]
    assert step["state"] != "RUNNING" and step["finished_at"], step  # ended with its run


@pytest.mark.postgres
def test_a_run_left_by_a_dead_replica_is_interrupted_without_a_restart(
    make_scratch_database, tmp_path, servers, marker
):
    cli = Nomaflow(tmp_path, make_scratch_database("postgres"))
    cli.upgrade()
    cli.import_jobs(python_job("sleeper", sleeping_code(marker)))
    one, two = start(servers, cli), start(servers, cli)
    run_id = cli.trigger("sleeper")
    running = cli.wait_for(run_id, {"RUNNING"}, line=f"sleeping {marker}")
    owner, survivor = (one, two) if running["node"].endswith(f"/{one.process.pid}") else (two, one)
    assert running["node"].endswith(f"/{owner.process.pid}")
    owner.stop(kill=True)
    wait_until_gone(marker, {}, timeout=5)
    assert survivor.health()["status"] == "ok"
    after = cli.wait_for(run_id, timeout=15)  # the survivor alone must find it
    assert after["state"] == "INTERRUPTED" and after["reason"], after


# --- 2. two servers on PostgreSQL -----------------------------------------------------------------


def scheduled_runs(cli: Nomaflow, job: str) -> list[dict]:
    """The job's runs, oldest first, each with ``scheduled_for`` as a datetime."""
    runs = sorted(cli.runs(job), key=lambda r: r["id"])
    if runs and "scheduled_for" not in runs[0]:  # an older run document: read the table
        engine = sa.create_engine(cli.database_url)
        try:
            with engine.connect() as connection:
                times = dict(
                    connection.execute(
                        sa.text("SELECT id, scheduled_for FROM runs WHERE job_id = :job"),
                        {"job": job},
                    ).all()
                )
        finally:
            engine.dispose()
        for run in runs:
            value = times[run["id"]]
            run["scheduled_for"] = value.isoformat() if value else None
    for run in runs:
        run["scheduled"] = parse_time(run["scheduled_for"])
    return runs


def roles(*servers: ServerProcess) -> list[str]:
    return [server.health()["scheduler"] for server in servers]


def assert_one_per_second(runs: list[dict], since: datetime, until: datetime, what: str) -> None:
    """About one fire per whole second in [since, until]: no double, no long gap."""
    times = sorted(r["scheduled"] for r in runs if since <= r["scheduled"] <= until)
    expected = int((until - since).total_seconds())
    assert abs(len(times) - expected) <= 1, (
        f"{what}: {len(times)} runs scheduled in {expected + 1} s: {times}"
    )
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert all(gap in (1, 2) for gap in gaps), f"{what}: gaps between fires {gaps}"


@pytest.mark.postgres
def test_two_servers_on_postgres_fire_a_schedule_once_and_the_standby_takes_over(
    make_scratch_database, tmp_path, servers
):
    cli = Nomaflow(tmp_path, make_scratch_database("postgres"))
    cli.upgrade()
    cli.import_jobs(
        python_job(
            "every-second",
            "print('tick', ctx.run_id)\n",
            schedule="* * * * * *",
            overlap="parallel",
            grace_seconds=30,
        )
    )
    one, two = start(servers, cli), start(servers, cli)
    deadline = time.monotonic() + 10
    while sorted(roles(one, two)) != ["leader", "standby"]:
        assert time.monotonic() < deadline, f"roles {roles(one, two)}"
        time.sleep(0.1)
    leader, standby = (one, two) if one.health()["scheduler"] == "leader" else (two, one)

    first_phase_start = datetime.now().astimezone()
    time.sleep(4.5)
    runs = scheduled_runs(cli, "every-second")
    assert runs, "the leader fired nothing in 4.5 s"
    assert all(r["trigger"] == "cron" for r in runs), Counter(r["trigger"] for r in runs)
    first_phase_end = runs[-1]["scheduled"]
    assert_one_per_second(
        runs,
        first_phase_start.replace(microsecond=0) + timedelta(seconds=1),
        first_phase_end,
        "one leader",
    )
    assert (first_phase_end - first_phase_start).total_seconds() >= 2.5

    killed_leader_node = f"/{leader.process.pid}"
    leader.stop(kill=True)
    killed_at = time.monotonic()
    while standby.health()["scheduler"] != "leader":
        assert time.monotonic() - killed_at < 10, "the standby did not take over within 10 s"
        time.sleep(0.1)
    takeover = time.monotonic() - killed_at
    took_over_at = datetime.now().astimezone()

    time.sleep(4.5)
    runs = scheduled_runs(cli, "every-second")
    second_phase = [r for r in runs if r["scheduled"] > took_over_at]
    assert second_phase, f"nothing fired in 4.5 s after the take-over ({takeover:.1f} s)"
    assert_one_per_second(
        runs,
        took_over_at.replace(microsecond=0) + timedelta(seconds=1),
        second_phase[-1]["scheduled"],
        "after the take-over",
    )
    scheduled = Counter(r["scheduled"] for r in runs)
    assert [t for t, n in scheduled.items() if n > 1] == [], "a time fired twice"
    assert {r["trigger"] for r in runs} <= {"cron", "catch-up"}

    # the supervisor restarts the dead replica: it joins as standby and marks what its
    # predecessor left RUNNING as INTERRUPTED
    replacement = start(servers, cli)
    assert replacement.health()["scheduler"] == "standby"
    assert standby.health()["scheduler"] == "leader"
    last_id = max(r["id"] for r in runs)
    deadline = time.monotonic() + 20
    while True:
        settled = [r for r in cli.runs("every-second") if r["id"] <= last_id]
        if all(r["state"] in FINAL for r in settled):
            break
        assert time.monotonic() < deadline, [(r["id"], r["state"]) for r in settled]
        time.sleep(0.5)
    states = Counter(r["state"] for r in settled)
    assert set(states) <= {"SUCCEEDED", "INTERRUPTED"}, states
    for run in settled:
        if run["state"] == "INTERRUPTED":
            assert run["node"].endswith(killed_leader_node), run
    assert len(settled) >= 6
    print(
        f"take-over in {takeover:.2f} s; {len(settled)} runs: {dict(states)}",
        file=sys.stderr,
    )


# --- 3. the CLI against a live server; `nomaflow run` without one --------------------------------


def test_cli_triggers_and_aborts_runs_on_a_live_server(sqlite_cli, servers, marker):
    cli = sqlite_cli
    cli.import_jobs(
        python_job(
            "greet",
            "print(f\"hello {ctx.params['who']} x{ctx.params['times']}\")\n",
            params=[
                {"name": "who", "type": "string", "required": True},
                {"name": "times", "type": "int", "default": 1},
            ],
        ),
        python_job("sleeper", sleeping_code(marker)),
    )
    start(servers, cli)

    run_id = cli.trigger("greet", who="operators", times="3")
    document = cli.wait_for(run_id, line="hello operators x3")
    assert document["state"] == "SUCCEEDED" and document["trigger"] == "manual"
    assert document["params"] == {"who": "operators", "times": 3}
    assert cli.ok("runs", "show", str(run_id), "--log").count("hello operators x3") == 1

    sleeper_id = cli.trigger("sleeper")
    cli.wait_for(sleeper_id, {"RUNNING"}, line=f"sleeping {marker}")
    typed_at = time.time()
    out = cli.ok("runs", "abort", str(sleeper_id))
    asked_at = time.time()  # the request is in the database (the CLI exits right after)
    assert f"run #{sleeper_id}: abort requested" in out
    aborted = cli.wait_for(sleeper_id, timeout=10)
    assert aborted["state"] == "CANCELED", aborted
    finished_at = parse_time(aborted["finished_at"]).timestamp()
    assert finished_at - asked_at < 5, f"the server took {finished_at - asked_at:.1f} s"
    assert finished_at - typed_at < 10  # CLI start-up included, on a loaded machine
    print(
        f"abort: run CANCELED {finished_at - asked_at:.2f} s after the request was stored, "
        f"{finished_at - typed_at:.2f} s after `runs abort` was typed",
        file=sys.stderr,
    )
    assert aborted["steps"][0]["state"] == "CANCELED"
    wait_until_gone(marker, {}, timeout=3)  # the `sleep 600` went with it
    again = cli("runs", "abort", str(sleeper_id))
    assert again.returncode == 1 and "already ended CANCELED" in again.stderr

    before = [r["id"] for r in cli.runs("greet")]
    bad_inputs = {
        ("greet", "--param", "who=x", "--param", "times=many"): "times: expected a whole number",
        ("greet",): "who",
        ("greet", "--param", "who"): "expected NAME=VALUE",
        ("no-such-job",): "no-such-job: job: no such job",
    }
    for args, expected in bad_inputs.items():
        result = cli("trigger", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nomaflow: "), result.stderr
        assert expected in lines[0], lines[0]
        assert result.stdout == ""
    time.sleep(0.5)
    assert [r["id"] for r in cli.runs("greet")] == before  # nothing queued


def test_run_in_the_foreground_streams_its_log_and_exits_with_the_outcome(sqlite_cli):
    cli = sqlite_cli  # no server at all
    cli.import_jobs(
        python_job(
            "slow-hello",
            "import time\n"
            "print(f\"first {ctx.params['who']}\", flush=True)\n"
            "time.sleep(2)\n"
            "print('second', flush=True)\n",
            params=[{"name": "who", "type": "string", "default": "world"}],
        ),
        python_job("broken", "print('about to fail')\nraise ValueError('boom')\n"),
    )

    process = cli.popen("run", "slow-hello", "--param", "who=ops")
    arrivals: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: arrivals.extend((time.monotonic(), line) for line in process.stdout)
    )
    reader.start()
    try:
        code = process.wait(timeout=30)
    finally:
        process.kill()
        reader.join(timeout=5)
    ended = time.monotonic()
    stderr = process.stderr.read()
    process.stderr.close()
    process.stdout.close()
    assert code == 0, stderr
    lines = [line for _, line in arrivals]
    first_at = next(t for t, line in arrivals if line.rstrip().endswith("first ops"))
    assert ended - first_at > 1.5, "the first line came only at the end: not streamed"
    assert any(line.rstrip().endswith("second") for line in lines), lines
    assert lines[-1].rstrip().endswith("run ended SUCCEEDED"), lines
    assert "SUCCEEDED" in stderr
    run_id = int(stderr.split("run #")[1].split()[0])
    document = cli.show(run_id)
    assert document["state"] == "SUCCEEDED" and document["params"] == {"who": "ops"}

    failed = cli("run", "broken")
    assert failed.returncode == 1, failed.stderr
    assert "about to fail" in failed.stdout and "ValueError: boom" in failed.stdout
    assert "FAILED" in failed.stderr
    run_id = int(failed.stderr.split("run #")[1].split()[0])
    document = cli.show(run_id)
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"] == "ValueError: boom"
