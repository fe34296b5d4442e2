"""Throughput and memory of the sql_copy step on 1,000,000 rows x 6 columns.

The rows (int, text, numeric, timestamptz, bool, date) are generated in a scratch PostgreSQL
database. Measured: (a) the floor, a plain `COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN`
pipe between two PostgreSQL databases through psql; (b) SqlCopyStep().run() PostgreSQL to
PostgreSQL (overwrite of an existing table: stash, COPY, swap); (c) PostgreSQL to MariaDB and
to SQLite (create = true). run() gets a real StepContext and a real Connectors over a migrated
app database. For each copy the growth of this process's RSS (VmRSS sampled every 20 ms) is
recorded. Budgets: (b) at least half the rows/s of (a); (c) at least 50,000 rows/s; RSS growth
under 50 MB. Prints a table and writes bench/results/sql_copy.json; drops what it created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from app.connectors.runtime import Connectors  # noqa: E402
from app.connectors.store import save_connector  # noqa: E402
from app.crypto import SecretsVault  # noqa: E402
from app.db import Database  # noqa: E402
from app.schema import upgrade_database  # noqa: E402
from app.steps.base import StepContext  # noqa: E402
from app.steps.sql_copy import SqlCopyStep  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", 1_000_000))
POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB = os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BUDGET_PIPE_FRACTION = 0.5
BUDGET_ROWS_PER_S = 50_000
BUDGET_RSS_MB = 50
GENERATE = f"""
CREATE TABLE big AS
SELECT i AS id, 'name ' || i AS name, (i * 1.2345)::numeric(14, 4) AS amount,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' AS seen_at,
       i % 2 = 0 AS active, date '2020-01-01' + i % 1000 AS day
FROM generate_series(1, {ROWS}) i
"""


class Log:
    """A StepLog that keeps the lines (the progress lines are printed at the end)."""

    def __init__(self):
        self.lines: list[str] = []

    def _add(self, message: str) -> None:
        self.lines.append(message)

    debug = info = warning = error = _add


class RssSampler:
    """Sample VmRSS in a thread; report the peak growth over the value at start."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, 0
        self.stop = threading.Event()
        self.start_kb = rss_kb()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, rss_kb())

    @property
    def growth_mb(self) -> float:
        return max(0, self.peak - self.start_kb) / 1024


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Scratch:
    """A database of its own on a server, dropped at the end."""

    def __init__(self, admin_url: str):
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.name = f"nomaflow_bench_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {self.name}"))
        self.url = sa.make_url(admin_url).set(database=self.name)

    def drop(self) -> None:
        force = " WITH (FORCE)" if self.admin.dialect.name == "postgresql" else ""
        with self.admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {self.name}{force}"))
        self.admin.dispose()


def psql_args(url: sa.URL) -> list[str]:
    return [
        "psql",
        "-X",
        "-q",
        "-h",
        url.host,
        "-p",
        str(url.port or 5432),
        "-U",
        url.username,
        "-d",
        url.database,
    ]


def pipe_copy(source: sa.URL, target: sa.URL) -> float:
    """(a): psql COPY TO STDOUT piped into psql COPY FROM STDIN; return the seconds."""
    subprocess.run(
        [
            *psql_args(target),
            "-c",
            "CREATE TABLE big (id int, name text, amount numeric(14,4), "
            "seen_at timestamptz, active boolean, day date)",
        ],
        check=True,
    )
    began = time.perf_counter()
    out = subprocess.Popen(
        [*psql_args(source), "-c", "\\copy (SELECT * FROM big) TO STDOUT"], stdout=subprocess.PIPE
    )
    into = subprocess.run(
        [*psql_args(target), "-c", "\\copy big FROM STDIN"], stdin=out.stdout, check=True
    )
    out.stdout.close()
    assert out.wait() == 0 and into.returncode == 0
    return time.perf_counter() - began


def step_copy(connectors: Connectors, instance: str, target: str, table: str, **config) -> dict:
    """Run SqlCopyStep().run() from the bench source to ``target``; return the figures."""
    log = Log()
    ctx = StepContext(
        run_id=1,
        job_id="bench",
        step_name="copy",
        triggered_by=None,
        params={},
        steps={},
        log=log,
        is_cancelled=lambda: False,
        timeout_seconds=3600,
        deadline=time.monotonic() + 3600,
        instance_path=instance,
        connectors=connectors,
    )
    step_config = {
        "source": {"connector": "source", "table": "big"},
        "target": {"connector": target, "table": table},
        **config,
    }
    with RssSampler() as rss:
        began = time.perf_counter()
        output = SqlCopyStep().run(step_config, ctx)
        seconds = time.perf_counter() - began
    assert output["source_rows"] == output["target_rows"] == ROWS, output
    return {
        "seconds": seconds,
        "rows_per_s": ROWS / seconds,
        "rss_growth_mb": rss.growth_mb,
        "output": output,
        "log": log.lines,
    }


def count(url: sa.URL | str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def main() -> None:
    scratches: list[Scratch] = []
    with tempfile.TemporaryDirectory() as instance:
        try:
            source, pg_target = Scratch(POSTGRES), Scratch(POSTGRES)
            scratches += [source, pg_target]
            maria = Scratch(MARIADB)
            scratches.append(maria)
            lite_url = f"sqlite:///{instance}/target.db"
            generate = sa.create_engine(source.url)
            began = time.perf_counter()
            with generate.begin() as connection:
                connection.execute(sa.text(GENERATE))
            generate.dispose()
            print(f"generated {ROWS:,} rows in {time.perf_counter() - began:.1f}s")

            pipe_seconds = pipe_copy(source.url, pg_target.url)
            assert count(pg_target.url, "big") == ROWS

            app_url = f"sqlite:///{instance}/nomaflow.db"
            upgrade_database(app_url)
            database = Database(app_url)
            vault = SecretsVault((Fernet.generate_key().decode(),))
            with database.session_scope() as db:
                for name, url in (
                    ("source", source.url),
                    ("pg", pg_target.url),
                    ("maria", maria.url),
                    ("lite", sa.make_url(lite_url)),
                ):
                    save_connector(db, vault, name, "sql", {"url": url.render_as_string(False)})
            connectors = Connectors(database, vault)
            try:
                # over the table (a) filled: the overwrite path (stash, COPY, swap)
                pg = step_copy(connectors, instance, "pg", "big", mode="overwrite")
                maria_run = step_copy(
                    connectors, instance, "maria", "big", mode="overwrite", create=True
                )
                lite = step_copy(connectors, instance, "lite", "big", mode="overwrite", create=True)
            finally:
                connectors.dispose()
                database.dispose()
            assert count(maria.url, "big") == ROWS and count(lite_url, "big") == ROWS
        finally:
            for scratch in scratches:
                scratch.drop()
    report(pipe_seconds, pg, maria_run, lite)


def report(pipe_seconds: float, pg: dict, maria: dict, lite: dict) -> None:
    pipe_rate = ROWS / pipe_seconds
    worst_rss = max(r["rss_growth_mb"] for r in (pg, maria, lite))
    met = {
        "pg_to_pg_vs_pipe": pg["rows_per_s"] >= BUDGET_PIPE_FRACTION * pipe_rate,
        "pg_to_mariadb": maria["rows_per_s"] >= BUDGET_ROWS_PER_S,
        "pg_to_sqlite": lite["rows_per_s"] >= BUDGET_ROWS_PER_S,
        "rss": worst_rss < BUDGET_RSS_MB,
    }
    summary = {
        "machine_cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "rows": ROWS,
        "columns": ["int", "text", "numeric(14,4)", "timestamptz", "bool", "date"],
        "a_psql_copy_pipe": {"seconds": pipe_seconds, "rows_per_s": pipe_rate},
        **{
            key: {k: v for k, v in result.items() if k != "log"}
            for key, result in (
                ("b_sql_copy_pg_to_pg", pg),
                ("c_sql_copy_pg_to_mariadb", maria),
                ("c_sql_copy_pg_to_sqlite", lite),
            )
        },
        "pg_to_pg_fraction_of_pipe": pg["rows_per_s"] / pipe_rate,
        "budgets": {
            "pg_to_pg_fraction_of_pipe_min": BUDGET_PIPE_FRACTION,
            "rows_per_s_min": BUDGET_ROWS_PER_S,
            "rss_growth_mb_max": BUDGET_RSS_MB,
            "met": met,
            "all_met": all(met.values()),
        },
    }
    table = [
        ("copy", "seconds", "rows/s", "RSS growth", "budget"),
        ("(a) psql COPY pipe PG -> PG", f"{pipe_seconds:.2f}", f"{pipe_rate:,.0f}", "-", "floor"),
        (
            "(b) sql_copy PG -> PG (COPY)",
            f"{pg['seconds']:.2f}",
            f"{pg['rows_per_s']:,.0f}",
            f"{pg['rss_growth_mb']:.1f} MB",
            f">= {BUDGET_PIPE_FRACTION:.0%} of (a): {summary['pg_to_pg_fraction_of_pipe']:.0%}",
        ),
        (
            "(c) sql_copy PG -> MariaDB",
            f"{maria['seconds']:.2f}",
            f"{maria['rows_per_s']:,.0f}",
            f"{maria['rss_growth_mb']:.1f} MB",
            f">= {BUDGET_ROWS_PER_S:,} rows/s",
        ),
        (
            "(c) sql_copy PG -> SQLite",
            f"{lite['seconds']:.2f}",
            f"{lite['rows_per_s']:,.0f}",
            f"{lite['rss_growth_mb']:.1f} MB",
            f">= {BUDGET_ROWS_PER_S:,} rows/s",
        ),
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"(d) worst RSS growth {worst_rss:.1f} MB (budget < {BUDGET_RSS_MB} MB)")
    print(f"budgets met: {met}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "sql_copy.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
