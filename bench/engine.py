"""The run engine end to end against a real `nomaflow serve`: latency, throughput, big logs.

Budgets (DESIGN §9, the engine issue), each measured on a fresh, migrated SQLite instance with a
real server process and a python-socketio client on the websocket transport, signed in as
`admin` with the session cookie, the way a browser tab is:

1. Trigger -> first log line at a Socket.IO client: p50 < 50 ms (p95 reported). A one-line
   python step (`ctx.log.info('hi')`) is triggered the way the UI does (POST /jobs/<id>/run with
   the CSRF token, answered 302 to /runs/<id>); the client then emits `join` with
   {"room": "run:<id>", "after": 0}. Timed from just before the POST to the first `log` event
   holding the step's "hi" line, and to the first line of any kind. A second, browser-like
   variant follows the redirect, reads the lines already on the page, opens a new socket and
   joins after the page's last line (what static/js/live.js does).
2. Runs per second end to end: >= 20/s. N runs of the one-line job (overlap = parallel) queued
   as fast as possible, over HTTP (POST loop) and in-process through `dispatch` on the same
   database (the server's runner finds those by its 1 s poll); timed until every run is
   finished, with runner pool sizes 4 (the default) and 8.
3. 10,000 log lines from one step delivered to watching clients, none lost or duplicated
   (3 runs): one client joins (after 0) right after the trigger, a second one mid-run, once the
   database holds 2,000 lines, so that the join backlog and the pushes overlap. Per client: raw
   and unique (per data-seq, as live.js dedupes) line counts, the seqs against
   1..log_lines_count, every "line i" exactly once; the lines the database holds; lines/s stored
   and delivered, and how long delivery trails the end of the run.

The server's CPU (with the fork server and the step processes) per run is read from /proc.

Prints a table and writes bench/results/engine.json. Traffic goes to 127.0.0.1 only.
Run: .venv/bin/python bench/engine.py [--quick]   (--quick: fewer trials, saves nothing)
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_process import ServerProcess, sign_in_over_http  # noqa: E402

PASSWORD = "bench-password-1"
WARM_UPS = 5
LATENCY_TRIALS = 50
PAGE_TRIALS = 20
THROUGHPUT_RUNS = 200
BIG_LOG_LINES = 10_000
BIG_LOG_ROUNDS = 3
POOL_SIZES = (4, 8)
BUDGET_FIRST_LINE_P50_MS = 50.0
BUDGET_RUNS_PER_S = 20.0
TRIAL_TIMEOUT_S = 10
THROUGHPUT_TIMEOUT_S = 120
BIG_LOG_TIMEOUT_S = 90
FINISHED = (
    "SUCCEEDED",
    "PARTIAL",
    "FAILED",
    "CANCELED",
    "TIMED_OUT",
    "SKIPPED",
    "MISSED",
    "INTERRUPTED",
)

JOBS_TOML = f"""
[[jobs]]
id = "one-line"
description = "bench: one log line"
overlap = "parallel"
max_parallel = 16

[[jobs.steps]]
name = "hi"
type = "python"
code = "ctx.log.info('hi')"

[[jobs]]
id = "ten-k"
description = "bench: {BIG_LOG_LINES} printed lines"

[[jobs.steps]]
name = "print"
type = "python"
code = '''
for i in range({BIG_LOG_LINES}):
    print(f"line {{i}}")
'''
"""

LINE_PATTERN = re.compile(
    r'<div class="log-line level-\w+" id="log-(\d+)-(\d+)" data-seq="(\d+)">'
    r'<time>[^<]*</time> <span class="level">(\w+)</span> <span class="message">(.*?)</span></div>',
    re.S,
)
HI_MARK = '<span class="message">hi</span>'
CSRF_PATTERN = re.compile(r'name="csrf_token" value="([^"]+)"')


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_lines(fragment: str) -> list[tuple[int, int, str, str]]:
    """(run, seq, level, message) for each log line in a rendered fragment."""
    return [
        (int(m.group(1)), int(m.group(3)), m.group(4), html.unescape(m.group(5)))
        for m in LINE_PATTERN.finditer(fragment)
    ]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants, counting their reaped children (the
    fork server reaps the step processes, so their CPU lands in its cutime/cstime)."""
    total, stack, first = 0.0, [pid], True
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(") ", 1)[1].split()
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        # the server's own cutime holds old reaped helpers (the migrations, none here): skip it
        total += (utime + stime + (0 if first else cutime + cstime)) / CLOCK_TICKS
        first = False
    return total


def db_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Instance:
    """A fresh, migrated instance folder with the bench jobs imported."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="nomaflow-bench-")
        self.path = Path(self._folder.name)
        env = {"NOMAFLOW_INSTANCE": str(self.path), "PATH": ""}
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        )
        jobs = self.path / "bench-jobs.toml"
        jobs.write_text(JOBS_TOML)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "jobs", "import", str(jobs)],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.database = self.path / "nomaflow.db"

    def query(self, sql: str, *args):
        with sqlite3.connect(self.database, timeout=30) as connection:
            return connection.execute(sql, args).fetchall()

    def cleanup(self) -> None:
        self._folder.cleanup()


class LiveClient:
    """A signed-in Socket.IO client (websocket) that timestamps every `log` event it gets."""

    def __init__(self, url: str, cookie: str):
        import socketio

        self.events: list[tuple[float, int, str]] = []
        self.lock = threading.Lock()
        self.hi: dict[int, threading.Event] = {}  # per run: its "hi" line arrived
        self.client = socketio.Client(reconnection=False)
        self.client.on("log", self._on_log)
        self.client.connect(
            url, headers={"Cookie": cookie}, transports=["websocket"], wait_timeout=10
        )

    def _on_log(self, message) -> None:
        now = time.perf_counter()
        run, fragment = message.get("run"), message.get("html", "")
        with self.lock:
            self.events.append((now, run, fragment))
            if HI_MARK in fragment:
                self.hi.setdefault(run, threading.Event()).set()

    def wait_hi(self, run_id: int, timeout: float) -> bool:
        with self.lock:
            event = self.hi.setdefault(run_id, threading.Event())
        return event.wait(timeout)

    def join(self, run_id: int, after: int = 0) -> dict:
        return self.client.call(
            "join", {"room": f"run:{run_id}", "after": after}, timeout=TRIAL_TIMEOUT_S
        )

    def events_of(self, run_id: int) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, f) for t, r, f in self.events if r == run_id]

    def close(self) -> None:
        self.client.disconnect()


class Browser:
    """The HTTP side: a signed-in session, its CSRF token, and the UI's Run now."""

    def __init__(self, url: str):
        self.url = url
        self.session = sign_in_over_http(url, "admin", PASSWORD)
        page = self.session.get(url + "/jobs", timeout=10).text
        self.csrf = CSRF_PATTERN.search(page).group(1)
        self.cookie = "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)

    def run_now(self, job_id: str) -> int:
        response = self.session.post(
            f"{self.url}/jobs/{job_id}/run",
            data={"csrf_token": self.csrf},
            allow_redirects=False,
            timeout=TRIAL_TIMEOUT_S,
        )
        location = response.headers.get("Location", "")
        match = re.search(r"/runs/(\d+)$", location)
        if response.status_code != 302 or not match:
            raise RuntimeError(f"Run now answered {response.status_code} to {location!r}")
        return int(match.group(1))


def wait_finished(instance: Instance, first_id: int, last_id: int, timeout: float) -> float:
    """Poll the database until runs first_id..last_id have all ended; return perf time."""
    deadline = time.monotonic() + timeout
    placeholders = ",".join("?" * len(FINISHED))
    wanted = last_id - first_id + 1
    while time.monotonic() < deadline:
        (done,) = instance.query(
            f"SELECT count(*) FROM runs WHERE id BETWEEN ? AND ? AND state IN ({placeholders})",
            first_id,
            last_id,
            *FINISHED,
        )[0]
        if done >= wanted:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"runs {first_id}..{last_id} not finished within {timeout}s")


# --------------------------------------------------------------------------- 1. latency


def latency(server: ServerProcess, instance: Instance, trials: int, page_trials: int) -> dict:
    browser = Browser(server.url)
    live = LiveClient(server.url, browser.cookie)
    to_hi, to_first, post_ms, run_ids = [], [], [], []
    try:
        for trial in range(WARM_UPS + trials):
            began = time.perf_counter()
            run_id = browser.run_now("one-line")
            posted = time.perf_counter()
            ack = live.join(run_id, after=0)
            if not ack.get("ok"):
                raise RuntimeError(f"join refused: {ack}")
            if not live.wait_hi(run_id, TRIAL_TIMEOUT_S):
                raise TimeoutError(f"no 'hi' line for run {run_id} in {TRIAL_TIMEOUT_S}s")
            events = live.events_of(run_id)
            first_any = min(t for t, _ in events)
            first_hi = min(t for t, f in events if HI_MARK in f)
            wait_finished(instance, run_id, run_id, TRIAL_TIMEOUT_S)  # keep trials apart
            if trial >= WARM_UPS:
                to_hi.append((first_hi - began) * 1000)
                to_first.append((first_any - began) * 1000)
                post_ms.append((posted - began) * 1000)
                run_ids.append(run_id)
        # trials whose first event (mostly the join's backlog) already held the "hi" line
        hi_in_first_event = sum(1 for run_id in run_ids if HI_MARK in live.events_of(run_id)[0][1])
    finally:
        live.close()
    states = dict(
        instance.query("SELECT state, count(*) FROM runs WHERE job_id = 'one-line' GROUP BY state")
    )
    # the engine's own view of one run: queued -> started -> finished (database clock)
    rows = instance.query(
        "SELECT queued_at, started_at, finished_at FROM runs WHERE id BETWEEN ? AND ?",
        run_ids[0],
        run_ids[-1],
    )
    queue_to_start = [(db_time(s) - db_time(q)).total_seconds() * 1000 for q, s, _ in rows]
    start_to_end = [(db_time(f) - db_time(s)).total_seconds() * 1000 for _, s, f in rows]
    page = page_latency(server, browser, instance, page_trials) if page_trials else None
    return {
        "trials": trials,
        "warm_ups": WARM_UPS,
        "to_hi_ms": {
            "p50": percentile(to_hi, 0.5),
            "p95": percentile(to_hi, 0.95),
            "min": min(to_hi),
            "max": max(to_hi),
        },
        "to_first_line_ms": {
            "p50": percentile(to_first, 0.5),
            "p95": percentile(to_first, 0.95),
            "min": min(to_first),
            "max": max(to_first),
        },
        "post_302_ms": {"p50": percentile(post_ms, 0.5), "p95": percentile(post_ms, 0.95)},
        "db_queued_to_started_ms_p50": percentile(queue_to_start, 0.5),
        "db_started_to_finished_ms_p50": percentile(start_to_end, 0.5),
        "hi_in_first_event": hi_in_first_event,
        "states": states,
        "samples_to_hi_ms": [round(v, 2) for v in to_hi],
        "browser_like": page,
    }


def page_latency(server: ServerProcess, browser: Browser, instance: Instance, trials: int):
    """POST, follow the redirect to the run page, open a socket, join after the page's lines."""
    times, from_page = [], 0
    for trial in range(2 + trials):
        began = time.perf_counter()
        run_id = browser.run_now("one-line")
        page = browser.session.get(f"{server.url}/runs/{run_id}", timeout=TRIAL_TIMEOUT_S).text
        seen_at = time.perf_counter() if HI_MARK in page else None
        on_page = [seq for run, seq, _, _ in parse_lines(page) if run == run_id]
        live = LiveClient(server.url, browser.cookie)
        try:
            live.join(run_id, after=max(on_page, default=0))
            if seen_at is None:
                if not live.wait_hi(run_id, TRIAL_TIMEOUT_S):
                    raise TimeoutError(f"no 'hi' line for run {run_id}")
                seen_at = min(t for t, f in live.events_of(run_id) if HI_MARK in f)
            elif trial >= 2:
                from_page += 1
        finally:
            live.close()
        wait_finished(instance, run_id, run_id, TRIAL_TIMEOUT_S)
        if trial >= 2:
            times.append((seen_at - began) * 1000)
    return {
        "trials": trials,
        "p50_ms": percentile(times, 0.5),
        "p95_ms": percentile(times, 0.95),
        "hi_already_on_page": from_page,
    }


# --------------------------------------------------------------------------- 2. throughput


def throughput_http(server: ServerProcess, instance: Instance, runs: int) -> dict:
    browser = Browser(server.url)
    cpu_before = tree_cpu_s(server.process.pid)
    began = time.perf_counter()
    began_wall = datetime.now(UTC)
    ids = [browser.run_now("one-line") for _ in range(runs)]
    queued = time.perf_counter()
    finished = wait_finished(instance, ids[0], ids[-1], THROUGHPUT_TIMEOUT_S)
    cpu = tree_cpu_s(server.process.pid) - cpu_before
    figures = _throughput_figures(instance, ids[0], ids[-1], began, began_wall, queued, finished)
    return {**figures, "server_cpu_ms_per_run": cpu * 1000 / figures["runs"]}


def throughput_dispatch(server: ServerProcess, instance: Instance, runs: int) -> dict:
    from app import create_app
    from app.config import load_settings
    from app.crypto import vault
    from app.db import get_database
    from app.engine.dispatch import dispatch

    app = create_app(load_settings({"NOMAFLOW_INSTANCE": str(instance.path)}))
    with app.app_context():
        database, keys = get_database(app), vault(app)
        dispatch(database, keys, "one-line", "manual")  # warm the process's imports and pool
        (done_before,) = instance.query("SELECT max(id) FROM runs")[0]
        wait_finished(instance, done_before, done_before, THROUGHPUT_TIMEOUT_S)
        cpu_before = tree_cpu_s(server.process.pid)
        began = time.perf_counter()
        began_wall = datetime.now(UTC)
        ids = [dispatch(database, keys, "one-line", "manual").id for _ in range(runs)]
        queued = time.perf_counter()
        finished = wait_finished(instance, ids[0], ids[-1], THROUGHPUT_TIMEOUT_S)
        cpu = tree_cpu_s(server.process.pid) - cpu_before
        database.dispose()
    figures = _throughput_figures(instance, ids[0], ids[-1], began, began_wall, queued, finished)
    return {**figures, "server_cpu_ms_per_run": cpu * 1000 / figures["runs"]}


def _throughput_figures(instance, first, last, began, began_wall, queued, finished) -> dict:
    rows = instance.query(
        "SELECT state, queued_at, started_at, finished_at FROM runs WHERE id BETWEEN ? AND ?",
        first,
        last,
    )
    count = len(rows)
    states: dict[str, int] = {}
    for state, *_ in rows:
        states[state] = states.get(state, 0) + 1
    first_start = min(db_time(s) for _, _, s, _ in rows if s)
    last_end = max(db_time(f) for _, _, _, f in rows if f)
    engine_s = (last_end - first_start).total_seconds()
    # wall clock from the first queue to the last finish as the database saw it (poll-free)
    e2e_db_s = (last_end - began_wall).total_seconds()
    return {
        "runs": count,
        "states": states,
        "queue_s": queued - began,
        "queue_runs_per_s": count / (queued - began),
        "e2e_s": finished - began,
        "e2e_runs_per_s": count / (finished - began),
        "e2e_db_runs_per_s": count / e2e_db_s,
        "engine_s": engine_s,
        "engine_runs_per_s": count / engine_s,
        "first_start_after_first_queue_s": (first_start - began_wall).total_seconds(),
    }


# --------------------------------------------------------------------------- 3. big log


MID_RUN_JOIN_AT = 2_000  # the second watcher joins once the database holds this many lines
MID_RUN_POLL_S = 0.005


def big_log(server: ServerProcess, instance: Instance) -> dict:
    """Trigger the 10,000-line job; one client watches from the start, a second one joins
    (after 0) mid-run, once the database holds MID_RUN_JOIN_AT lines: the case where the join
    backlog and the pushes overlap."""
    browser = Browser(server.url)
    early = LiveClient(server.url, browser.cookie)
    late = LiveClient(server.url, browser.cookie)
    late_join: dict = {}
    try:
        began = time.perf_counter()
        began_wall = datetime.now(UTC)
        run_id = browser.run_now("ten-k")
        early.join(run_id, after=0)

        def join_mid_run() -> None:
            deadline = time.monotonic() + BIG_LOG_TIMEOUT_S
            while time.monotonic() < deadline:
                ((count, state),) = instance.query(
                    "SELECT log_lines_count, state FROM runs WHERE id = ?", run_id
                )
                if count >= MID_RUN_JOIN_AT or state in FINISHED:
                    break
                time.sleep(MID_RUN_POLL_S)
            late_join.update(lines_in_db=count, state=state, at_s=time.perf_counter() - began)
            late.join(run_id, after=0)

        joiner = threading.Thread(target=join_mid_run, daemon=True)
        joiner.start()
        wait_finished(instance, run_id, run_id, BIG_LOG_TIMEOUT_S)
        finished_seen = time.perf_counter()
        joiner.join(BIG_LOG_TIMEOUT_S)
        ((state, total, started_at, finished_at),) = instance.query(
            "SELECT state, log_lines_count, started_at, finished_at FROM runs WHERE id = ?", run_id
        )
        ((stored, stored_max),) = instance.query(
            "SELECT count(*), max(seq) FROM log_lines WHERE run_id = ?", run_id
        )
        # the run is finished and every line stored: wait for the last pushes to land
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(len(seqs_of(c.events_of(run_id))) >= total for c in (early, late)):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # anything late (a duplicate) still counts
        watchers = {
            "from_start": delivery(early.events_of(run_id), run_id, total, began),
            "mid_run": {
                **delivery(late.events_of(run_id), run_id, total, began),
                "joined_with_lines_in_db": late_join.get("lines_in_db"),
                "joined_at_s": late_join.get("at_s"),
                "joined_while": late_join.get("state"),
            },
        }
    finally:
        early.close()
        late.close()
    run_s = (db_time(finished_at) - db_time(started_at)).total_seconds()
    first = watchers["from_start"]
    return {
        "run": run_id,
        "state": state,
        "log_lines_count": total,
        "db_lines": stored,
        "db_max_seq": stored_max,
        **{k: v for k, v in first.items()},
        "mid_run_watcher": watchers["mid_run"],
        "trigger_to_finished_seen_s": finished_seen - began,
        "run_started_to_finished_s": run_s,
        "queued_to_started_s": (db_time(started_at) - began_wall).total_seconds(),
        "lines_per_s_stored": stored / run_s if run_s else None,
        "lines_per_s_delivered": first["lines_unique"] / first["trigger_to_last_line_s"],
        "last_delivery_after_finished_s": began + first["trigger_to_last_line_s"] - finished_seen,
        "all_ok": stored == total == stored_max
        and all(w["seqs_ok"] and w["messages_ok"] for w in watchers.values()),
    }


def seqs_of(events) -> set[int]:
    return {seq for _, f in events for _, seq, _, _ in parse_lines(f)}


def delivery(events, run_id: int, total: int, began: float) -> dict:
    """Check what one client got: every seq 1..total once after dedupe, every "line i" once."""
    raw = [(t, run, seq, msg) for t, f in events for run, seq, _level, msg in parse_lines(f)]
    by_seq: dict[int, tuple[float, str]] = {}
    conflicting = 0  # the same seq twice with different text: never acceptable
    for t, run, seq, msg in raw:
        if run != run_id:
            continue
        if seq not in by_seq:
            by_seq[seq] = (t, msg)
        elif by_seq[seq][1] != msg:
            conflicting += 1
    unique = set(by_seq)
    expected = set(range(1, total + 1))
    counts: dict[str, int] = {}
    for _, msg in by_seq.values():
        if msg.startswith("line "):
            counts[msg] = counts.get(msg, 0) + 1
    wanted = {f"line {i}" for i in range(BIG_LOG_LINES)}
    missing = sorted(wanted - set(counts), key=lambda m: int(m.split()[1]))
    twice = [m for m, c in counts.items() if c > 1]
    last_delivery = max((t for t, _ in by_seq.values()), default=float("nan"))
    return {
        "events": len(events),
        "lines_raw": len(raw),
        "lines_unique": len(unique),
        "duplicates_raw": len(raw) - len(unique),
        "duplicates_conflicting": conflicting,
        "missing_seqs": sorted(expected - unique)[:20],
        "missing_seqs_count": len(expected - unique),
        "unexpected_seqs": sorted(unique - expected)[:20],
        "seqs_ok": unique == expected and not conflicting,
        "line_messages_found": len(counts),
        "line_messages_missing": missing[:20],
        "line_messages_missing_count": len(missing),
        "line_messages_more_than_once": twice[:20],
        "messages_ok": not missing and not twice,
        "trigger_to_last_line_s": last_delivery - began,
    }


# --------------------------------------------------------------------------- main


WS_CLOSE_NOISE = re.compile(r"code 400, message Bad (HTTP/0\.9 )?request (syntax|type|version)")


def server_errors(server: ServerProcess) -> list[str]:
    """Error lines of the server log, except Werkzeug's 400 on the bytes a client sends after
    its websocket ended (counted apart: one per socket closed, see the report)."""
    text = server.log()
    return [
        line
        for line in text.splitlines()
        if ("Traceback" in line or " ERROR " in line) and not WS_CLOSE_NOISE.search(line)
    ]


def ws_close_noise(server: ServerProcess) -> int:
    return sum(1 for line in server.log().splitlines() if WS_CLOSE_NOISE.search(line))


def with_server(pool_size: int, work) -> tuple[dict, list[str], int]:
    instance = Instance()
    server = ServerProcess(
        instance.path,
        NOMAFLOW_ADMIN_PASSWORD=PASSWORD,
        NOMAFLOW_RUNNER_POOL_SIZE=str(pool_size),
    )
    try:
        server.start()
        result = work(server, instance)
        errors, noise = server_errors(server), ws_close_noise(server)
    finally:
        server.stop()
        instance.cleanup()
    return result, errors, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and runs")
    options = parser.parse_args()
    trials = 15 if options.quick else LATENCY_TRIALS
    page_trials = 5 if options.quick else PAGE_TRIALS
    runs = 50 if options.quick else THROUGHPUT_RUNS
    began = time.monotonic()
    load_before = os.getloadavg()
    summary: dict = {"pools": {}, "server_errors": {}, "server_400_after_websocket_close": {}}

    def default_pool(server, instance):
        out = {}
        print(f"[pool 4] latency: {WARM_UPS} warm-ups + {trials} trials ...", flush=True)
        out["latency"] = latency(server, instance, trials, page_trials)
        print(f"[pool 4] throughput over HTTP: {runs} runs ...", flush=True)
        out["throughput_http"] = throughput_http(server, instance, runs)
        print(f"[pool 4] throughput through dispatch: {runs} runs ...", flush=True)
        out["throughput_dispatch"] = throughput_dispatch(server, instance, runs)
        print(f"[pool 4] {BIG_LOG_LINES} log lines x {BIG_LOG_ROUNDS} ...", flush=True)
        out["big_log"] = [big_log(server, instance) for _ in range(BIG_LOG_ROUNDS)]
        return out

    def other_pool(pool):
        def work(server, instance):
            print(f"[pool {pool}] throughput over HTTP and through dispatch ...", flush=True)
            return {
                "throughput_http": throughput_http(server, instance, runs),
                "throughput_dispatch": throughput_dispatch(server, instance, runs),
            }

        return work

    for pool in POOL_SIZES:
        work = default_pool if pool == 4 else other_pool(pool)
        result, errors, noise = with_server(pool, work)
        summary["pools"][str(pool)] = result
        summary["server_errors"][str(pool)] = errors[:20]
        summary["server_400_after_websocket_close"][str(pool)] = noise

    main_pool = summary["pools"]["4"]
    lat = main_pool["latency"]
    big = main_pool["big_log"]
    summary.update(
        {
            "latency": lat,
            "big_log": big,
            "big_log_all_ok": all(b["all_ok"] for b in big),
            "big_log_run_s_median": statistics.median(b["run_started_to_finished_s"] for b in big),
            "big_log_trigger_to_last_line_s_median": statistics.median(
                b["trigger_to_last_line_s"] for b in big
            ),
            "budget_first_line_p50_ms": BUDGET_FIRST_LINE_P50_MS,
            "budget_runs_per_s": BUDGET_RUNS_PER_S,
            "quick": options.quick,
            "elapsed_s": time.monotonic() - began,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "python": sys.version.split()[0],
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    summary["pools"]["4"] = {k: v for k, v in main_pool.items() if k not in ("latency", "big_log")}

    def verdict(ok: bool) -> str:
        return "ok" if ok else "OVER BUDGET"

    print()
    print(f"1. trigger -> first log line at a Socket.IO client ({lat['trials']} trials, pool 4)")
    print(f"   {'':34} {'p50 (ms)':>9} {'p95 (ms)':>9} {'min':>7} {'max':>7}")
    for label, key in (
        ("POST -> 'hi' line (join after 0)", "to_hi_ms"),
        ("POST -> first line of any kind", "to_first_line_ms"),
    ):
        f = lat[key]
        print(f"   {label:34} {f['p50']:>9.1f} {f['p95']:>9.1f} {f['min']:>7.1f} {f['max']:>7.1f}")
    print(
        f"   {'POST -> 302':34} {lat['post_302_ms']['p50']:>9.1f} {lat['post_302_ms']['p95']:>9.1f}"
    )
    if lat["browser_like"]:
        b = lat["browser_like"]
        print(
            f"   {'browser-like (page + new socket)':34} {b['p50_ms']:>9.1f} {b['p95_ms']:>9.1f}"
            f"   ('hi' already on the page {b['hi_already_on_page']}/{b['trials']})"
        )
    print(
        f"   database: queued->started p50 {lat['db_queued_to_started_ms_p50']:.1f} ms, "
        f"started->finished p50 {lat['db_started_to_finished_ms_p50']:.1f} ms"
    )
    print(
        f"   p50 {lat['to_hi_ms']['p50']:.1f} ms vs budget < {BUDGET_FIRST_LINE_P50_MS:.0f} ms: "
        f"{verdict(lat['to_hi_ms']['p50'] < BUDGET_FIRST_LINE_P50_MS)}"
    )
    print()
    print(f"2. runs per second end to end ({runs} runs of the one-line job)")
    print(
        f"   {'pool':>4} {'queued via':>10} {'queue /s':>9} {'e2e s':>7} {'e2e /s':>7} "
        f"{'engine /s':>10} {'1st start s':>11} {'CPU ms/run':>10}  states"
    )
    for pool in POOL_SIZES:
        for via in ("http", "dispatch"):
            t = summary["pools"][str(pool)][f"throughput_{via}"]
            print(
                f"   {pool:>4} {via:>10} {t['queue_runs_per_s']:>9.1f} {t['e2e_s']:>7.2f} "
                f"{t['e2e_runs_per_s']:>7.1f} {t['engine_runs_per_s']:>10.1f} "
                f"{t['first_start_after_first_queue_s']:>11.2f} {t['server_cpu_ms_per_run']:>10.1f}"
                f"  {t['states']}"
            )
    best = max(
        summary["pools"][str(p)][f"throughput_{v}"]["e2e_runs_per_s"]
        for p in POOL_SIZES
        for v in ("http", "dispatch")
    )
    default_http = summary["pools"]["4"]["throughput_http"]["e2e_runs_per_s"]
    print(
        f"   default pool over HTTP {default_http:.1f} runs/s, best {best:.1f} runs/s vs budget "
        f">= {BUDGET_RUNS_PER_S:.0f}: {verdict(default_http >= BUDGET_RUNS_PER_S)}"
    )
    print()
    print(
        f"3. {BIG_LOG_LINES} log lines from one step to two watching clients "
        f"({len(big)} runs; 'early' joins at the trigger, 'mid' once the database holds "
        f">= {MID_RUN_JOIN_AT} lines; both with after=0)"
    )
    print(
        f"   {'run':>5} {'state':>9} {'count':>6} {'in db':>6} {'watcher':>13} {'events':>6} "
        f"{'raw':>6} {'unique':>6} {'dups':>5} {'missing':>7} {'seqs ok':>7} {'lines ok':>8} "
        f"{'last line s':>11}"
    )
    for b in big:
        mid = b["mid_run_watcher"]
        for label, w in (("early", b), (f"mid @{mid['joined_with_lines_in_db']}", mid)):
            head = (
                f"{b['run']:>5} {b['state']:>9} {b['log_lines_count']:>6} {b['db_lines']:>6}"
                if w is b
                else " " * 29
            )
            print(
                f"   {head} {label:>13} {w['events']:>6} {w['lines_raw']:>6} "
                f"{w['lines_unique']:>6} {w['duplicates_raw']:>5} {w['missing_seqs_count']:>7} "
                f"{str(w['seqs_ok']):>7} {str(w['messages_ok']):>8} "
                f"{w['trigger_to_last_line_s']:>11.2f}"
            )

    def each(key: str, digits: int) -> str:
        return ", ".join(f"{b[key]:.{digits}f}" for b in big)

    print(
        f"   run time (s) {each('run_started_to_finished_s', 2)}; stored lines/s "
        f"{each('lines_per_s_stored', 0)}; delivered lines/s (early watcher) "
        f"{each('lines_per_s_delivered', 0)}"
    )
    print(
        f"   last line delivered after the run was seen finished (s) "
        f"{each('last_delivery_after_finished_s', 2)}"
    )
    all_ok = all(b["all_ok"] for b in big)
    print(f"   none lost or duplicated: {verdict(all_ok)}")

    print()
    for pool, errors in summary["server_errors"].items():
        noise = summary["server_400_after_websocket_close"][pool]
        print(
            f"server log (pool {pool}): {len(errors)} error lines"
            + (f", e.g. {errors[0]}" if errors else "")
            + f"; {noise} Werkzeug 'code 400, Bad request' lines after a websocket closed"
        )
    print(
        f"\nelapsed {summary['elapsed_s']:.0f} s; {summary['cpus']} CPUs; 1-min load average "
        f"{load_before[0]:.1f} before, {summary['load_average_after'][0]:.1f} after "
        "(other work on the machine skews every figure)"
    )
    if options.quick:
        print("quick mode: bench/results/engine.json left as it was")
        return
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "engine.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"saved {results / 'engine.json'}")


if __name__ == "__main__":
    main()
