"""Latency and throughput of the python step's run() for a one-line step.

Budgets (issue: python step): the engine must be able to do >= 20 runs/s on this 2-core
machine, and the first log line must reach ctx.log within a few ms of run() starting. The
step is `ctx.log.info("hi")`, run end to end through PythonStep().run() with real child
processes. Measured: the first run (it starts the fork server), then sequential runs
(latency p50/p95 of run() and of the first log line, steps/s), then two threads running
steps concurrently (steps/s), and the CPU spent per step (server + fork server + children).
For reference, the latency of starting a bare interpreter (`python -c pass`) is measured too.
Prints a table and writes bench/results/python_step.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.steps import python_pool  # noqa: E402
from app.steps.base import StepContext  # noqa: E402
from app.steps.python import PythonStep  # noqa: E402

SEQUENTIAL_RUNS = 500
CONCURRENT_RUNS = 500
THREADS = 2
WARM_UP_RUNS = 20
BUDGET_RUNS_PER_S = 20
BUDGET_FIRST_LOG_MS = 5.0
CODE = 'ctx.log.info("hi")'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class FirstLineLog:
    """A StepLog that notes when its first line arrived."""

    def __init__(self):
        self.first_at: float | None = None
        self.lines: list[str] = []

    def _add(self, message: str) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.lines.append(message)

    debug = info = warning = error = _add


def one_run(instance: str) -> tuple[float, float]:
    """Run the one-line step; return (seconds in run(), seconds to the first log line)."""
    log = FirstLineLog()
    ctx = StepContext(
        run_id=1,
        job_id="bench",
        step_name="hello",
        triggered_by=None,
        params={},
        steps={},
        log=log,
        is_cancelled=lambda: False,
        timeout_seconds=30,
        deadline=time.monotonic() + 30,
        instance_path=instance,
    )
    began = time.perf_counter()
    PythonStep().run({"code": CODE}, ctx)
    ended = time.perf_counter()
    assert log.lines == ["hi"], log.lines
    return ended - began, log.first_at - began


def cpu_seconds() -> float:
    """CPU time of this process, the fork server and the step processes it reaped."""
    own = os.times()
    total = own.user + own.system
    server = python_pool._fork_server
    if server is not None:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime..cstime
    return total


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def sequential(instance: str) -> dict:
    cpu_before = cpu_seconds()
    began = time.perf_counter()
    samples = [one_run(instance) for _ in range(SEQUENTIAL_RUNS)]
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds() - cpu_before
    latency = [run for run, _ in samples]
    first = [first for _, first in samples]
    return {
        "runs": SEQUENTIAL_RUNS,
        "latency_ms_p50": statistics.median(latency) * 1000,
        "latency_ms_p95": percentile(latency, 0.95) * 1000,
        "first_log_ms_p50": statistics.median(first) * 1000,
        "first_log_ms_p95": percentile(first, 0.95) * 1000,
        "steps_per_s": SEQUENTIAL_RUNS / elapsed,
        "cpu_ms_per_step": cpu / SEQUENTIAL_RUNS * 1000,
    }


def concurrent(instance: str) -> dict:
    per_thread = CONCURRENT_RUNS // THREADS
    threads = [
        threading.Thread(target=lambda: [one_run(instance) for _ in range(per_thread)])
        for _ in range(THREADS)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {
        "threads": THREADS,
        "runs": per_thread * THREADS,
        "steps_per_s": per_thread * THREADS / elapsed,
    }


def bare_interpreter_ms(rounds: int = 20) -> float:
    """Median wall time of `python -c pass`: what a process per step would cost at least."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env={"PATH": os.defpath})
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as instance:
        try:
            first_run_ms, first_run_log_ms = (s * 1000 for s in one_run(instance))
            for _ in range(WARM_UP_RUNS):
                one_run(instance)
            seq = sequential(instance)
            par = concurrent(instance)
        finally:
            python_pool.shutdown_python_workers()
    summary = {
        "machine_cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "first_run_ms": first_run_ms,
        "first_run_first_log_ms": first_run_log_ms,
        "sequential": seq,
        "concurrent": par,
        "bare_interpreter_start_ms": bare_interpreter_ms(),
        "budgets": {
            "steps_per_s_min": BUDGET_RUNS_PER_S,
            "first_log_ms_p50_max": BUDGET_FIRST_LOG_MS,
            "met": seq["steps_per_s"] >= BUDGET_RUNS_PER_S
            and par["steps_per_s"] >= BUDGET_RUNS_PER_S
            and seq["first_log_ms_p50"] <= BUDGET_FIRST_LOG_MS,
        },
    }
    rows = [
        ("first run (starts the fork server)", f"{first_run_ms:.1f} ms"),
        (
            "run() latency p50 / p95",
            f"{seq['latency_ms_p50']:.2f} / {seq['latency_ms_p95']:.2f} ms",
        ),
        (
            "first log line p50 / p95",
            f"{seq['first_log_ms_p50']:.2f} / {seq['first_log_ms_p95']:.2f} ms",
        ),
        ("sequential steps/s", f"{seq['steps_per_s']:.0f}"),
        (f"{THREADS}-thread concurrent steps/s", f"{par['steps_per_s']:.0f}"),
        ("CPU per step (all processes)", f"{seq['cpu_ms_per_step']:.2f} ms"),
        ("bare `python -c pass`, for reference", f"{summary['bare_interpreter_start_ms']:.1f} ms"),
        ("budgets met", str(summary["budgets"]["met"])),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "python_step.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
