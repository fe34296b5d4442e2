"""The nomaflow command as a user runs it: a subprocess, its output and its exit code."""

import os
import subprocess
import sys

import pytest

from tests.conftest import sign_in


def nomaflow(*args, instance, database_url=None, timeout=60):
    env = {**os.environ, "NOMAFLOW_INSTANCE": str(instance)}
    env.pop("NOMAFLOW_DATABASE_URL", None)
    if database_url:
        env["NOMAFLOW_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def instance(tmp_path):
    result = nomaflow("db", "upgrade", instance=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_user_create_prints_a_generated_password_that_signs_in(instance):
    from app import create_app
    from app.config import load_settings

    result = nomaflow("user", "create", "alice", "--role", "operator", instance=instance)
    assert result.returncode == 0, result.stderr
    assert "created user 'alice' with role 'operator'" in result.stdout
    password = result.stdout.split("password: ")[1].strip()
    app = create_app(load_settings({"NOMAFLOW_INSTANCE": str(instance)}))
    client = app.test_client()
    assert sign_in(client, "alice", password).status_code == 302
    assert client.get("/connectors").status_code == 200  # operators see connectors
    assert client.get("/admin/users").status_code == 403


def test_user_create_rejects_bad_input_with_exit_2_and_one_line(instance):
    nomaflow(
        "user", "create", "bob", "--role", "viewer", "--password", "long-enough", instance=instance
    )
    cases = {
        ("bob", "--role", "viewer"): "nomaflow: username: A user named 'bob' already exists.",
        ("carl", "--role", "boss"): "nomaflow: role: Unknown role 'boss'; known roles: admin,",
        ("dan", "--role", "viewer", "--password", "short"): "nomaflow: password: Use at least 8",
    }
    for args, message in cases.items():
        result = nomaflow("user", "create", *args, instance=instance)
        assert result.returncode == 2
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_check_reports_an_unmigrated_database(tmp_path):
    result = nomaflow("check", instance=tmp_path)
    assert result.returncode == 1
    assert "migrations behind: at none" in result.stdout
    assert "run `nomaflow db upgrade`" in result.stderr


def test_check_and_upgrade_exit_3_when_the_database_cannot_be_reached(tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    for args in (("check",), ("db", "upgrade")):
        result = nomaflow(*args, instance=tmp_path, database_url=url)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(
            "nomaflow: cannot reach the database at postgresql+psycopg://nobody@127.0.0.1:1/nothing"
        )


def test_serve_refuses_an_unmigrated_database(tmp_path):
    result = nomaflow("serve", "--port", "1", instance=tmp_path)
    assert result.returncode == 1
    assert "run `nomaflow db upgrade`" in result.stderr
