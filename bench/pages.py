"""Server-side render time and transfer size of the big pages, on 1,000 jobs and 1,000,000 runs.

Budgets: under 150 ms (median) and under 100 KB per page; the schedule view (a week of fires of
every scheduled job) under 300 ms and 100 KB. Builds a SQLite instance in a temp folder (bulk
inserts: executemany for jobs, one INSERT…SELECT for runs), lets the clock's own sync write
APScheduler's job store for the 1,000 scheduled jobs (as a running leader would have), signs in
through the Flask test client, renders each page several times, prints a table with the query
plans of the history pages, and writes bench/results/pages.json.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from app import create_app  # noqa: E402
from app.db import create_database_engine, get_database, utcnow  # noqa: E402
from app.models import Job, Run, User  # noqa: E402
from app.run_history import RunFilter, filter_clauses  # noqa: E402
from app.schema import upgrade_database  # noqa: E402
from tests.conftest import add_personas, settings_for, sign_in  # noqa: E402

JOBS = 1_000
RUNS = 1_000_000
ROUNDS = 7
BUDGET_MS = 150
BUDGET_KB = 100
BUDGETS = {"/schedule": (300, 100)}  # path -> (ms, KB) where a page has a budget of its own
STATES = ("SUCCEEDED",) * 8 + ("FAILED", "SKIPPED")
TRIGGERS = ("cron",) * 6 + ("interval", "manual", "api", "retry")


def fill(app) -> None:
    database = get_database(app)
    now = utcnow()
    with database.session_scope() as db:
        ada = db.scalar(sa.select(User.id).where(User.username == "ada"))
        schedules = ("0 * * * *", "*/15 * * * *", "30 2 * * *", None)
        db.execute(
            sa.insert(Job),
            [
                {
                    "id": f"job-{n:04d}",
                    "description": f"Bench job number {n}",
                    "tags": ["bench", f"team-{n % 7}"],
                    "schedule": schedules[n % 4],
                    "interval": "10m" if n % 4 == 3 else None,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(JOBS)
            ],
        )
    states = "CASE x % 10 " + " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATES))
    triggers = "CASE x % 10 " + " ".join(f"WHEN {i} THEN '{t}'" for i, t in enumerate(TRIGGERS))
    stamp = "strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || ((:runs - x) * 30 + {lag}) || ' seconds')"
    with database.engine.begin() as connection:  # ~30 s apart: the newest run is now
        connection.execute(
            sa.text(
                f"""
WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < :runs)
INSERT INTO runs (job_id, job_version, trigger, triggered_by, state, params, log_level,
                  disabled_steps, queued_at, started_at, finished_at, log_lines_count)
SELECT printf('job-%04d', x * 7 % {JOBS}), 1, {triggers} END,
       CASE WHEN x % 10 = 7 THEN :ada END, {states} END, '{{}}', 'INFO', '[]',
       {stamp.format(lag=2)} || '.000000', {stamp.format(lag=1)} || '.000000',
       {stamp.format(lag=0)} || '.000000', 0
FROM seq
"""
            ),
            {"runs": RUNS, "ada": ada},
        )


def fill_clock_store(app, instance: Path) -> None:
    """Write APScheduler's job store through the clock's own sync, without starting the clock."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    from app.crypto import vault
    from app.scheduler import Clock, LeaderScheduler

    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job otherwise
    database = get_database(app)
    clock = Clock(database, vault(app), instance)
    engine = create_database_engine(database.url)
    clock.scheduler = LeaderScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine)}, timezone="UTC"
    )
    clock.scheduler.start(paused=True)  # never fires: paused, and shut down right after
    clock.sync()
    clock.scheduler.shutdown(wait=False)
    engine.dispose()


def plans(app, deep: int) -> dict[str, str]:
    cases = {
        "unfiltered, deep": RunFilter(),
        "job": RunFilter(job="job-0500"),
        "state": RunFilter(state="FAILED"),
        "trigger+user": RunFilter(trigger="manual", user="ada"),
        "date range": RunFilter(since="2000-01-01", until="2000-01-02"),
    }
    out = {}
    with get_database(app).engine.connect() as connection:
        for name, run_filter in cases.items():
            query = (
                sa.select(Run.id)
                .where(*filter_clauses(run_filter), Run.id < deep)
                .order_by(Run.id.desc())
                .limit(51)
            )
            sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
            out[name] = " | ".join(str(row[-1]) for row in rows)
    return out


def measure(client, path: str) -> dict:
    times, size = [], 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
        size = len(response.get_data())
        if times[-1] > 2000:
            break  # far over budget: one render says enough
    median = statistics.median(times)
    budget_ms, budget_kb = BUDGETS.get(path, (BUDGET_MS, BUDGET_KB))
    return {
        "path": path,
        "median_ms": round(median, 1),
        "min_ms": round(min(times), 1),
        "kb": round(size / 1024, 1),
        "renders": len(times),
        "ok": median < budget_ms and size / 1024 < budget_kb,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        instance = Path(folder)
        upgrade_database(f"sqlite:///{instance / 'nomaflow.db'}")
        app = create_app(settings_for(instance))
        add_personas(app)
        started = time.perf_counter()
        fill(app)
        fill_clock_store(app, instance)
        fill_s = time.perf_counter() - started
        with get_database(app).session_scope() as db:
            newest = db.scalar(sa.select(sa.func.max(Run.id)))
            day = db.scalar(sa.select(Run.queued_at).where(Run.id == newest // 2)).date()
        deep = newest // 1000 + 17  # a page near the very start of the history
        client = app.test_client()
        assert sign_in(client, "ada").status_code == 302
        day_range = f"since={day}&until={day}"
        paths = [
            "/jobs",
            "/jobs?after=job-0500",
            "/jobs?q=number+99",
            "/jobs?tag=team-3",
            "/runs",
            f"/runs?before={deep}",
            "/runs?job=job-0500",
            f"/runs?job=job-0500&before={deep}",
            f"/runs?state=FAILED&before={deep}",
            "/runs?trigger=manual&user=ada",
            f"/runs?{day_range}",
            "/",
            "/schedule",
        ]
        results = [measure(client, path) for path in paths]
        query_plans = plans(app, deep)
        get_database(app).dispose()
    print(f"{JOBS} jobs, {RUNS} runs inserted in {fill_s:.1f} s; median of {ROUNDS} renders")
    print(f"{'page':48} {'median ms':>10} {'min ms':>8} {'KB':>7}  budget")
    for row in results:
        verdict = "ok" if row["ok"] else "OVER"
        line = f"{row['path']:48} {row['median_ms']:>10} {row['min_ms']:>8} {row['kb']:>7}"
        print(f"{line}  {verdict}")
    print("history query plans (SQLite, no ANALYZE):")
    for name, plan in query_plans.items():
        print(f"  {name:18} {plan}")
    out = ROOT / "bench" / "results" / "pages.json"
    out.parent.mkdir(exist_ok=True)
    document = {
        "jobs": JOBS,
        "runs": RUNS,
        "fill_s": round(fill_s, 1),
        "rounds": ROUNDS,
        "budget_ms": BUDGET_MS,
        "budget_kb": BUDGET_KB,
        "budgets": {path: {"ms": ms, "kb": kb} for path, (ms, kb) in BUDGETS.items()},
        "pages": results,
        "plans": query_plans,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
