"""`nomaflow serve` for real: first start, sign-in over HTTP, leader and standby, restart."""

import subprocess
import sys
import time

import pytest

from tests.server_process import ServerProcess, sign_in_over_http


@pytest.fixture
def instance(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        env={"NOMAFLOW_INSTANCE": str(tmp_path), "PATH": ""},
        check=True,
        capture_output=True,
    )
    return tmp_path


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.stop()


def test_first_start_prints_the_admin_password_and_it_signs_in(instance, servers):
    server = ServerProcess(instance)
    servers.append(server)
    server.start()
    password = server.printed_password()
    assert password, server.log()
    assert "Nomaflow is serving on " + server.url in server.log()
    session = sign_in_over_http(server.url, "admin", password)
    page = session.get(server.url + "/jobs", timeout=5)
    assert page.status_code == 200 and "No jobs yet" in page.text
    assert server.health() == {
        "status": "ok",
        "database": "ok",
        "scheduler": "leader",
        "version": "0.1.0",
    }

    server.stop()
    again = ServerProcess(instance, port=server.port)
    servers.append(again)
    again.start()
    assert again.printed_password() is None  # the admin exists: nothing printed twice
    assert sign_in_over_http(again.url, "admin", password).get(again.url + "/jobs").ok


def test_admin_password_can_come_from_the_environment(instance, servers):
    server = ServerProcess(instance, NOMAFLOW_ADMIN_PASSWORD="from-the-env-1")
    servers.append(server)
    server.start()
    assert "with the password from NOMAFLOW_ADMIN_PASSWORD" in server.log()
    assert sign_in_over_http(server.url, "admin", "from-the-env-1").get(server.url + "/jobs").ok


def test_a_second_process_waits_as_standby_and_takes_over(instance, servers):
    leader, standby = ServerProcess(instance), ServerProcess(instance)
    servers.extend([leader, standby])
    leader.start()
    standby.start()
    assert leader.health()["scheduler"] == "leader"
    assert standby.health()["scheduler"] == "standby"
    leader.stop(kill=True)
    deadline = time.monotonic() + 10
    while standby.health()["scheduler"] != "leader":
        assert time.monotonic() < deadline, "the standby did not take over within 10 s"
        time.sleep(0.2)


def test_scheduler_can_be_switched_off_for_a_replica(instance, servers):
    server = ServerProcess(instance, NOMAFLOW_SCHEDULER_ENABLED="false")
    servers.append(server)
    server.start()
    assert server.health()["scheduler"] == "disabled"
