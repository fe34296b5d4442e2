"""The seed's patterns (examples/recipes.toml) end to end, each from a TOML file in tests/recipes/.

Every test imports its recipe file with ``import_jobs`` (connectors, variables and jobs in one
file, all or nothing), runs the job through ``dispatch`` and the runner, and checks what a user
would check: the rows in the target database, the request the webhook received, the run's
state and reason, the alert emails. The services are real: PostgreSQL, MariaDB, slapd, a local
HTTP API, an SMTP sink and a `nomaflow serve` process. The shared examples file itself must
import as shipped (checked with `nomaflow jobs import --dry-run`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch, request_abort
from app.engine.service import start_runner, stop_runner
from app.jobs_io import import_jobs
from app.models import AlertEvent
from tests.conftest import service_missing
from tests.engine_helpers import FINAL, log_messages, wait_for_run
from tests.http_test_server import BEARER_TOKEN
from tests.recipes import HOOK_TOKEN, RecipeApi, SmtpSink, recipe_text
from tests.server_process import ServerProcess, free_port
from tests.slapd_server import SERVICE_DN, SERVICE_PASSWORD, SlapdServer, SlapdUnavailable

PLUS_TWO = timezone(timedelta(hours=2))
BASE_URL = "https://nomaflow.ops.example.org"  # NOMAFLOW_BASE_URL: where alert links point
SHIPPED_RECIPES = Path("/work/shared/examples/recipes.toml")


class ScratchDb:
    """A scratch database the test fills and reads with plain SQL."""

    def __init__(self, url: str):
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def run(self, *statements: str, **params) -> None:
        with self.engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement), params)

    def insert(self, table: str, rows: list[dict]) -> None:
        columns = list(rows[0])
        names, values = ", ".join(columns), ", ".join(f":{c}" for c in columns)
        with self.engine.begin() as connection:
            connection.execute(sa.text(f"INSERT INTO {table} ({names}) VALUES ({values})"), rows)

    def table(self, name: str) -> list[dict]:
        """Every row ordered by the first column, times as aware UTC (naive ones are UTC)."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(f"SELECT * FROM {name} ORDER BY 1")).mappings()
            return [{k: as_utc(v) for k, v in row.items()} for row in rows]

    def scalar(self, statement: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(sa.text(statement), params).scalar()


def as_utc(value):
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


@pytest.fixture
def app(make_app):
    """The test app, its alert links pointing at the operator's NOMAFLOW_BASE_URL."""
    return make_app(base_url=BASE_URL)


@pytest.fixture
def ops(make_scratch_database) -> ScratchDb:
    """The operational PostgreSQL database of the recipes (connector "ops")."""
    return ScratchDb(make_scratch_database("postgres"))


@pytest.fixture
def runner(app, make_scratch_database):
    started = start_runner(app)
    yield started
    stop_runner(app)  # before the scratch databases are dropped: it holds the connector pools


@pytest.fixture
def api():
    server = RecipeApi().start()
    yield server
    server.stop()


def import_recipe(app, name: str, **values) -> dict[str, str]:
    """Import tests/recipes/NAME with the placeholders filled; return the outcomes."""
    with app.app_context(), get_database(app).session_scope() as db:
        result = import_jobs(db, recipe_text(name, **values), vault=vault(app))
    assert result.errors == []
    assert set(result.outcomes.values()) == {"created"}, result.outcomes
    return result.outcomes


def run_job(app, job_id: str, params: dict | None = None, timeout: float = 30) -> dict:
    """Trigger the job by hand, wait for the run to end; return its run document."""
    run = dispatch(get_database(app), vault(app), job_id, "manual", params)
    try:
        return wait_for_run(app, run.id, timeout=timeout)
    except AssertionError:  # stuck, a step retrying say: show why, and abort it so teardown
        stuck = wait_for_run(app, run.id, states={"RUNNING", "QUEUED"} | FINAL, timeout=1)
        request_abort(get_database(app), run.id)  # does not sit out the retry backoff
        steps = [(s["name"], s["state"], s["attempts"], s["error"]) for s in stuck["steps"]]
        log = [m for _, _, m in log_messages(app, run.id)]
        raise AssertionError(f"run {run.id} still {stuck['state']}: {steps}; log: {log}") from None


def assert_succeeded(app, document: dict) -> None:
    errors = {s["name"]: s["error"] for s in document["steps"] if s["error"]}
    log = [m for _, _, m in log_messages(app, document["id"])]
    assert document["state"] == "SUCCEEDED", (document["reason"], errors, log)
    assert [s["attempts"] for s in document["steps"]] == [1] * len(document["steps"])


def step(document: dict, name: str) -> dict:
    return next(s for s in document["steps"] if s["name"] == name)


def alert_events(app) -> list[tuple[str, int, str, str]]:
    """(rule, run, channel, state) of every alert recorded, oldest first."""
    with get_database(app).session_scope() as db:
        rows = db.execute(
            sa.select(
                AlertEvent.rule, AlertEvent.run_id, AlertEvent.channel, AlertEvent.state
            ).order_by(AlertEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def test_the_shipped_examples_file_imports_as_is_in_a_dry_run(tmp_path, migrated_sqlite_file):
    if not SHIPPED_RECIPES.is_file():
        pytest.skip(f"{SHIPPED_RECIPES} is not on this machine")
    instance = tmp_path / "fresh"
    instance.mkdir()
    shutil.copyfile(migrated_sqlite_file, instance / "nomaflow.db")
    env = {k: v for k, v in os.environ.items() if k != "NOMAFLOW_DATABASE_URL"}
    command = [sys.executable, "-m", "app.cli", "jobs", "import", str(SHIPPED_RECIPES), "--dry-run"]
    done = subprocess.run(
        command,
        env=env | {"NOMAFLOW_INSTANCE": str(instance)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "dry run: nothing was written"
    assert "would create  channel on-call" in lines
    assert "would create  healthz-smoke" in lines


# --- 1. nightly copy of two tables PostgreSQL -> MariaDB, then a webhook ------------------------

CUSTOMERS_DDL = (
    "CREATE TABLE customers (id integer PRIMARY KEY, name text, email varchar(200), "
    "credit numeric(12, 2), signed_up timestamptz, vip boolean)"
)
ORDERS_DDL = (
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL, "
    "total numeric(14, 4), placed_at timestamp(6), shipped date, note text)"
)
CUSTOMERS = [
    {
        "id": 1,
        "name": "Zoë Ærøskøbing ✓",
        "email": "zoe@example.org",
        "credit": Decimal("1234.56"),
        "signed_up": datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        "vip": True,
    },
    {"id": 2, "name": "李小龍", "email": None, "credit": None, "signed_up": None, "vip": None},
    {
        "id": 3,
        "name": 'O\'Brien "quoted" \\ tab\there',
        "email": "ob@example.org",
        "credit": Decimal("-0.01"),
        "signed_up": datetime(2023, 12, 31, 23, 59, 59, tzinfo=PLUS_TWO),
        "vip": False,
    },
]
ORDERS = [
    {
        "id": 10,
        "customer_id": 1,
        "total": Decimal("99.9900"),
        "placed_at": datetime(2024, 3, 2, 8, 0, 0, 500000),
        "shipped": date(2024, 3, 4),
        "note": "express — fragile 📦",
    },
    {
        "id": 11,
        "customer_id": 1,
        "total": Decimal("0.0001"),
        "placed_at": None,
        "shipped": None,
        "note": None,
    },
    {
        "id": 12,
        "customer_id": 2,
        "total": Decimal("123456789.1234"),
        "placed_at": datetime(2000, 2, 29, 23, 59, 59),
        "shipped": date(2000, 3, 1),
        "note": "",
    },
    {
        "id": 4_000_000_000,
        "customer_id": 3,
        "total": None,
        "placed_at": datetime(1999, 12, 31, 0, 0),
        "shipped": None,
        "note": "line one\nline two",
    },
]


def test_nightly_sync_copies_two_tables_to_mariadb_then_posts_the_webhook(
    app, make_scratch_database, ops, runner, api
):
    reporting = ScratchDb(make_scratch_database("mariadb"))
    ops.run(CUSTOMERS_DDL, ORDERS_DDL)
    ops.insert("customers", CUSTOMERS)
    ops.insert("orders", ORDERS)
    outcomes = import_recipe(
        app,
        "nightly_sync.toml",
        ops_url=ops.url,
        reporting_url=reporting.url,
        hook_token=HOOK_TOKEN,
        hooks_url=api.url,
    )
    assert sorted(outcomes) == [
        "channel on-call",
        "connector ops",
        "connector reporting",
        "reporting-nightly-sync",
        "variable HOOK_TOKEN",
    ]

    document = run_job(app, "reporting-nightly-sync")
    assert_succeeded(app, document)
    for table in ("customers", "orders"):
        assert reporting.table(table) == ops.table(table), table
    assert isinstance(reporting.table("customers")[0]["credit"], Decimal)
    copied = step(document, "copy-orders")["output"]
    assert (copied["source_rows"], copied["target_rows"]) == (4, 4)
    assert api.hooks() == [
        {
            "event": "reporting-refreshed",
            "job": "reporting-nightly-sync",
            "run": document["id"],
            "customers": 3,
            "orders": 4,
        }
    ]
    assert api.requests_to("/hooks/reporting")[0].headers["X-Hook-Token"] == HOOK_TOKEN
    assert not [m for _, _, m in log_messages(app, document["id"]) if HOOK_TOKEN in m]

    # the next night: the source changed; the overwrite leaves exactly the new rows behind
    ops.run(
        "UPDATE customers SET name = 'Zoë renamed', vip = NULL WHERE id = 1",
        "DELETE FROM orders WHERE id = 11",
    )
    again = run_job(app, "reporting-nightly-sync")
    assert_succeeded(app, again)
    for table in ("customers", "orders"):
        assert reporting.table(table) == ops.table(table), table
    assert reporting.table("customers")[0]["name"] == "Zoë renamed"
    assert sorted(sa.inspect(reporting.engine).get_table_names()) == ["customers", "orders"]
    assert [(h["run"], h["customers"], h["orders"]) for h in api.hooks()] == [
        (document["id"], 3, 4),
        (again["id"], 3, 3),
    ]
    stop_runner(app)  # waits for the after-run hooks: every alert decision is made
    assert api.requests_to("/echo/on-call") == []  # successes alert nobody
    assert alert_events(app) == []
    reporting.engine.dispose()


# --- 2. hourly HTTP pull with bearer auth -> python transform -> SQL write ----------------------


def test_hourly_pull_upserts_the_releases_fetched_with_a_bearer_token(app, ops, runner, api):
    ops.run("CREATE TABLE releases (id integer PRIMARY KEY, name text NOT NULL)")
    api.releases = [
        {"id": 1, "name": "1.0.0"},
        {"id": 2, "name": "1.1.0 “Ünïcode”"},
        {"id": 3, "name": "2.0.0-rc1"},
    ]
    import_recipe(
        app, "releases_hourly.toml", ops_url=ops.url, api_url=api.url, api_token=BEARER_TOKEN
    )

    document = run_job(app, "releases-hourly")
    assert_succeeded(app, document)
    assert api.requests_to("/releases")[-1].headers["Authorization"] == f"Bearer {BEARER_TOKEN}"
    assert step(document, "fetch")["output"]["json"] == api.releases
    assert step(document, "upsert")["output"] == {"fetched": 3}
    assert ops.table("releases") == api.releases

    # an hour later: 2.0.0-rc1 became 2.0.0 and 2.0.1 is out — one update, one insert
    api.releases = [{"id": 3, "name": "2.0.0"}, {"id": 4, "name": "2.0.1"}]
    again = run_job(app, "releases-hourly")
    assert_succeeded(app, again)
    assert step(again, "upsert")["output"] == {"fetched": 2}
    assert ops.table("releases") == [
        {"id": 1, "name": "1.0.0"},
        {"id": 2, "name": "1.1.0 “Ünïcode”"},
        {"id": 3, "name": "2.0.0"},
        {"id": 4, "name": "2.0.1"},
    ]


# --- 3. LDAP mirror into a users table, soft-deleting leavers ----------------------------------


@pytest.fixture
def slapd():
    with tempfile.TemporaryDirectory(prefix="nomaflow-slapd-") as directory:
        server = SlapdServer(Path(directory))
        try:
            server.start()
        except SlapdUnavailable as error:
            service_missing("slapd (OpenLDAP)", error)
        yield server
        server.stop()


def test_directory_mirror_fills_app_users_then_soft_deletes_a_leaver(app, ops, runner, slapd):
    tree = slapd.new_tree()
    uids = tree.add_users(12)  # more than the service account's size limit: the search pages
    tree.add_group("admins", ["user1", "user2"])
    ops.run(
        "CREATE TABLE app_users (username varchar(64) PRIMARY KEY, full_name text, "
        "email text, active boolean NOT NULL DEFAULT true)"
    )
    import_recipe(
        app,
        "directory_mirror.toml",
        ops_url=ops.url,
        ldap_url=slapd.url,
        bind_dn=SERVICE_DN,
        bind_password=SERVICE_PASSWORD,
        people_dn=tree.people,
    )

    document = run_job(app, "directory-mirror")
    assert_succeeded(app, document)
    assert step(document, "sync-users")["output"] == {
        "fetched": 12,
        "created": 12,
        "updated": 0,
        "unchanged": 0,
        "deactivated": 0,
        "failed": 0,
    }
    users = {row["username"]: row for row in ops.table("app_users")}
    assert sorted(users) == sorted(uids)
    assert users["user7"] == {
        "username": "user7",
        "full_name": "User 7",
        "email": "user7@example.org",
        "active": True,
    }

    # user5 leaves the company, user3 changes address
    tree.delete_user("user5")
    tree.modify_user("user3", mail=["user3@new.example.org"])
    again = run_job(app, "directory-mirror")
    assert_succeeded(app, again)
    assert step(again, "sync-users")["output"] == {
        "fetched": 11,
        "created": 0,
        "updated": 1,
        "unchanged": 10,
        "deactivated": 1,
        "failed": 0,
    }
    users = {row["username"]: row for row in ops.table("app_users")}
    assert sorted(users) == sorted(uids)  # soft: the leaver's row stays, switched off
    assert {name for name, row in users.items() if not row["active"]} == {"user5"}
    assert users["user5"]["email"] == "user5@example.org"
    assert users["user3"]["email"] == "user3@new.example.org"
    messages = [m for _, _, m in log_messages(app, again["id"])]
    assert "deactivated 1 rows gone from the directory: user5" in messages
    assert not [m for m in messages if SERVICE_PASSWORD in m]


# --- 4. conditional cleanup: count, then delete only past a threshold ---------------------------


def test_cleanup_deletes_only_when_the_count_is_past_the_threshold(app, ops, runner):
    ops.run("CREATE TABLE app_log (id serial PRIMARY KEY, ts timestamptz NOT NULL, message text)")
    now = datetime.now(UTC)

    def add_rows(days_old: int, count: int) -> None:
        rows = [{"ts": now - timedelta(days=days_old), "message": f"{days_old}d"}] * count
        ops.insert("app_log", rows)

    add_rows(45, 4)  # old
    add_rows(2, 3)  # recent: never deleted
    import_recipe(app, "log_cleanup.toml", ops_url=ops.url)
    params = {"threshold": "5"}

    under = run_job(app, "log-cleanup", params)
    assert_succeeded(app, under)
    assert step(under, "count-old")["output"] == {"rows": 1, "records": [{"n": 4}]}
    purge = step(under, "purge")
    assert purge["state"] == "SKIPPED"
    assert "is False" in purge["error"], purge["error"]
    assert ops.scalar("SELECT count(*) FROM app_log") == 7

    add_rows(31, 2)  # now 6 old rows: past the threshold of 5
    over = run_job(app, "log-cleanup", params)
    assert_succeeded(app, over)
    assert step(over, "count-old")["output"]["records"] == [{"n": 6}]
    assert step(over, "purge")["state"] == "SUCCEEDED"
    assert step(over, "purge")["output"] == {"rows": 6}
    assert [row["message"] for row in ops.table("app_log")] == ["2d", "2d", "2d"]

    # a dry run past the threshold counts and deletes nothing
    add_rows(60, 7)
    dry = run_job(app, "log-cleanup", {**params, "dry_run": "true"})
    assert_succeeded(app, dry)
    assert step(dry, "purge")["state"] == "SKIPPED"
    assert ops.scalar("SELECT count(*) FROM app_log") == 10


# --- 6. smoke test against /healthz of a real server --------------------------------------------


@pytest.fixture
def served(tmp_path, migrated_sqlite_file):
    """A real `nomaflow serve` process on its own instance (a copy of the migrated database)."""
    instance = tmp_path / "served"
    instance.mkdir()
    shutil.copyfile(migrated_sqlite_file, instance / "nomaflow.db")
    server = ServerProcess(instance, NOMAFLOW_ADMIN_PASSWORD="recipes-smoke-1")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def test_healthz_smoke_emails_on_call_on_the_third_failure_then_once_on_recovery(
    app, runner, served, smtp_sink
):
    outcomes = import_recipe(
        app, "healthz_smoke.toml", app_url=served.url, smtp_port=smtp_sink.port
    )
    assert sorted(outcomes) == ["channel on-call", "connector mail", "healthz-smoke"]

    alive = run_job(app, "healthz-smoke")
    assert_succeeded(app, alive)
    output = step(alive, "probe")["output"]
    assert output["status"] == 200
    assert output["json"]["status"] == "ok" and output["json"]["database"] == "ok"

    served.stop()  # the app went down: its port is dead now
    down = [run_job(app, "healthz-smoke") for _ in range(3)]  # three turns of the cron
    assert [d["state"] for d in down] == ["FAILED"] * 3
    expected = f"GET {served.url}/healthz: cannot reach 127.0.0.1:{served.port}"
    assert down[0]["reason"].startswith(expected), down[0]["reason"]
    assert step(down[0], "probe")["error"] == down[0]["reason"]

    # after-run hooks run in order on one thread: once the third run's email is in, the first
    # two runs' hooks have run too, so this one email is all the failures sent
    third = down[2]
    (alert,) = smtp_sink.wait_for(1)
    assert alert["Subject"] == f"[Nomaflow] healthz-smoke: run #{third['id']} FAILED"
    assert (alert["To"], alert["From"]) == ("oncall@example.org", "nomaflow@example.org")
    text = alert.get_body(("plain",)).get_content()
    assert f"Run: #{third['id']} FAILED (3 failures in a row)" in text
    assert f"Link: {BASE_URL}/runs/{third['id']}" in text
    assert f"Failing step: probe (FAILED): {step(third, 'probe')['error']}" in text
    assert expected in text

    served.start()  # back up, on the same port
    back = run_job(app, "healthz-smoke")
    assert_succeeded(app, back)
    recovery = smtp_sink.wait_for(2)[1]
    assert recovery["Subject"] == f"[Nomaflow] healthz-smoke recovered: run #{back['id']} SUCCEEDED"
    text = recovery.get_body(("plain",)).get_content()
    assert f"Run: #{back['id']} SUCCEEDED (succeeded after 3 failures in a row)" in text
    assert f"Link: {BASE_URL}/runs/{back['id']}" in text
    stop_runner(app)  # waits for the after-run hooks and ends the retries: nothing more comes
    assert len(smtp_sink.messages) == 2
    assert alert_events(app) == [
        ("failure", third["id"], "on-call", "SENT"),
        ("recovery", back["id"], "on-call", "SENT"),
    ]


def test_healthz_smoke_pointed_at_a_port_nobody_listens_on_fails_with_the_reason(
    app, runner, smtp_sink
):
    dead = f"http://127.0.0.1:{free_port()}"
    import_recipe(app, "healthz_smoke.toml", app_url=dead, smtp_port=smtp_sink.port)
    document = run_job(app, "healthz-smoke")
    assert document["state"] == "FAILED"
    assert document["reason"].startswith(f"GET {dead}/healthz: cannot reach "), document["reason"]
    assert step(document, "probe")["state"] == "FAILED"
    stop_runner(app)  # every after-run hook has run
    assert smtp_sink.messages == []  # one failure is not three in a row
