"""The schema and the sign-in path on each supported database, for real."""

import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db import Base, create_database_engine, get_database, utcnow
from app.models import AuditEvent, Job, LogLine, Run
from app.schema import head_revision
from tests.conftest import csrf_token, sign_in

BACKENDS = ["sqlite", "postgres", "mariadb"]


def fresh_url(backend, tmp_path, make_scratch_database):
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return make_scratch_database(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_db_upgrade_builds_the_schema_the_models_describe(backend, tmp_path, make_scratch_database):
    url = fresh_url(backend, tmp_path, make_scratch_database)
    env = {"NOMAFLOW_INSTANCE": str(tmp_path), "NOMAFLOW_DATABASE_URL": url, "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"is at revision {head_revision()}" in result.stdout
    check = subprocess.run(
        [sys.executable, "-m", "app.cli", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert "migrations ok" in check.stdout

    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            roles = connection.execute(sa.text("SELECT name FROM roles ORDER BY id")).scalars()
            assert list(roles) == ["admin", "editor", "operator", "viewer"]
            indexes = {i["name"] for i in sa.inspect(connection).get_indexes("runs")}
    finally:
        engine.dispose()
    assert differences == []
    assert {"ix_runs_job_id_id", "ix_runs_state_id", "ix_runs_queued_at"} <= indexes


def test_sign_in_and_user_admin_work_on_each_database(any_db_app):
    client = any_db_app.test_client()
    assert sign_in(client, "ada").status_code == 302
    response = client.post(
        "/admin/users",
        data={
            "username": "lin",
            "role": "viewer",
            "password": "a-long-password",
            "csrf_token": csrf_token(client, "/admin/users"),
        },
    )
    assert "User lin created." in response.get_data(as_text=True)
    assert sign_in(any_db_app.test_client(), "lin", "a-long-password").status_code == 302
    with get_database(any_db_app).session_scope() as db_session:
        actions = db_session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["login", "user.create", "login"]


def test_run_and_log_rows_keep_microsecond_utc_times(any_db_app):
    """Timestamps come back aware and exact on all three (MariaDB needs DATETIME(6))."""
    stamp = utcnow()
    with get_database(any_db_app).session_scope() as db_session:
        db_session.add(Job(id="nightly", description="x"))
        db_session.flush()
        run = Run(job_id="nightly", trigger="manual", queued_at=stamp)
        db_session.add(run)
        db_session.flush()
        db_session.add(LogLine(run_id=run.id, seq=1, level="INFO", message="héllo ✓", ts=stamp))
        run_id = run.id
    with get_database(any_db_app).session_scope() as db_session:
        run = db_session.get(Run, run_id)
        line = db_session.scalar(sa.select(LogLine).where(LogLine.run_id == run_id))
        assert run.queued_at == stamp and run.queued_at.tzinfo is not None
        assert (line.message, line.ts) == ("héllo ✓", stamp)
