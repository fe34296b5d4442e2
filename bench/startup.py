"""Cold start to the first 200 on /healthz, and idle memory of `nomaflow serve`.

Budgets (issue 2): cold start under 2 s, idle RSS under 120 MB. Each round uses a fresh,
migrated instance folder (SQLite); the process is spawned, timed to its first 200, then given
a signed-in browser-like session (pages + a Socket.IO connection) and left idle before its
resident memory is read from /proc. Prints a table and writes bench/results/startup.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_process import ServerProcess, sign_in_over_http  # noqa: E402

ROUNDS = 5
IDLE_SECONDS = 5
BUDGET_START_S = 2.0
BUDGET_RSS_MB = 120


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_round() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        instance = Path(folder)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env={"NOMAFLOW_INSTANCE": folder, "PATH": ""},
            check=True,
            capture_output=True,
        )
        server = ServerProcess(instance, NOMAFLOW_ADMIN_PASSWORD="bench-password-1")
        try:
            start_s = server.start()
            rss_at_start = rss_mb(server.process.pid)
            session = sign_in_over_http(server.url, "admin", "bench-password-1")
            for path in ("/jobs", "/runs", "/connectors", "/admin/users"):
                session.get(server.url + path, timeout=5).raise_for_status()
            live = _connect_socket(server.url, session)
            time.sleep(IDLE_SECONDS)
            rss_idle = rss_mb(server.process.pid)
            live.disconnect()
        finally:
            server.stop()
    return {"start_s": start_s, "rss_at_start_mb": rss_at_start, "rss_idle_mb": rss_idle}


def _connect_socket(url: str, session):
    import socketio

    client = socketio.Client()
    client.connect(url, headers={"Cookie": _cookie_header(session)}, transports=["websocket"])
    return client


def _cookie_header(session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def main() -> None:
    rounds = [one_round() for _ in range(ROUNDS)]
    summary = {
        "rounds": rounds,
        "start_s_median": statistics.median(r["start_s"] for r in rounds),
        "start_s_max": max(r["start_s"] for r in rounds),
        "rss_idle_mb_median": statistics.median(r["rss_idle_mb"] for r in rounds),
        "rss_idle_mb_max": max(r["rss_idle_mb"] for r in rounds),
        "budget_start_s": BUDGET_START_S,
        "budget_rss_mb": BUDGET_RSS_MB,
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{'round':>5} {'start to 200 (s)':>17} {'RSS at start (MB)':>18} {'RSS idle (MB)':>14}")
    for number, r in enumerate(rounds, 1):
        print(
            f"{number:>5} {r['start_s']:>17.3f} {r['rss_at_start_mb']:>18.1f} "
            f"{r['rss_idle_mb']:>14.1f}"
        )
    print(
        f"median start {summary['start_s_median']:.3f} s (budget {BUDGET_START_S} s), "
        f"median idle RSS {summary['rss_idle_mb_median']:.1f} MB (budget {BUDGET_RSS_MB} MB)"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "startup.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {results / 'startup.json'}")


if __name__ == "__main__":
    main()
