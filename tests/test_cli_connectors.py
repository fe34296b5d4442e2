"""`nomaflow connectors list|test` and `nomaflow keys rotate` as an operator runs them."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from app import create_app
from app.config import load_settings
from app.connectors.store import load_connector
from app.crypto import SecretsVault, vault
from app.db import get_database
from app.models import Connector, Job, Run, Variable
from tests.test_connectors_web import free_port, smtp_sink  # noqa: F401  (a fixture)

SECRET = "cli-Secret-0815"


def nomaflow(*args, instance, env=None, timeout=60):
    environment = {**os.environ, "NOMAFLOW_INSTANCE": str(instance), **(env or {})}
    for name in ("NOMAFLOW_DATABASE_URL", "NOMAFLOW_ENCRYPTION_KEYS"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def instance(tmp_path, migrated_sqlite_file):
    folder = tmp_path / "instance"
    folder.mkdir()
    shutil.copyfile(migrated_sqlite_file, folder / "nomaflow.db")
    return folder


def import_file(instance, text, **options):
    path = instance.parent / "setup.toml"
    path.write_text(textwrap.dedent(text))
    result = nomaflow("jobs", "import", str(path), instance=instance, **options)
    assert result.returncode == 0, result.stderr
    return result


def open_instance(instance, **env):
    """The instance as the server would open it (same settings, same keys)."""
    app = create_app(load_settings({"NOMAFLOW_INSTANCE": str(instance), **env}))
    return app


def test_list_shows_default_and_each_connector_with_the_jobs_using_it(instance, tmp_path):
    result = nomaflow("connectors", "list", instance=instance)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NAME     KIND  USED BY  DESCRIPTION",
        "default  sql   -        the app's own database (built in)",
    ]
    import_file(
        instance,
        f"""
        [[connectors]]
        name = "api"
        kind = "http"
        base_url = "https://api.example.org"
        auth = "bearer"
        token = "{SECRET}"
        description = "The API"
        [[connectors]]
        name = "ops"
        kind = "sql"
        url = "sqlite:///{tmp_path / "ops.db"}"
        [[jobs]]
        id = "fetch"
        [[jobs.steps]]
        name = "get"
        type = "http"
        connector = "api"
        url = "/status"
        """,
    )
    table = nomaflow("connectors", "list", instance=instance).stdout.splitlines()
    assert table[1:] == [
        "default  sql   -        the app's own database (built in)",
        "api      http  fetch    The API",
        "ops      sql   -",
    ]
    result = nomaflow("connectors", "list", "--json", instance=instance)
    documents = json.loads(result.stdout)
    assert SECRET not in result.stdout
    assert documents[1] == {
        "name": "api",
        "kind": "http",
        "description": "The API",
        "values": {"base_url": "https://api.example.org", "auth": "bearer"},
        "secrets": {"client_secret": False, "password": False, "token": True},
        "builtin": False,
        "used_by": ["fetch"],
    }
    assert [d["name"] for d in documents] == ["default", "api", "ops"]


def test_test_exits_0_with_what_worked_1_with_the_reason_2_when_unknown(instance, tmp_path):
    import_file(
        instance,
        f"""
        [[connectors]]
        name = "good"
        kind = "sql"
        url = "sqlite:///{tmp_path / "good.db"}"
        [[connectors]]
        name = "bad"
        kind = "sql"
        url = "sqlite:///{tmp_path / "missing" / "bad.db"}"
        """,
    )
    good = nomaflow("connectors", "test", "good", instance=instance)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("good: connected: SQLite 3.")
    bad = nomaflow("connectors", "test", "bad", instance=instance)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == "nomaflow: bad: unable to open database file\n"
    unknown = nomaflow("connectors", "test", "ghost", instance=instance)
    assert unknown.returncode == 2
    assert unknown.stderr == (
        "nomaflow: no connector named 'ghost' (`nomaflow connectors list` shows them)\n"
    )
    default = nomaflow("connectors", "test", "default", instance=instance)
    assert default.returncode == 0 and default.stdout.startswith("default: connected: SQLite")


def test_test_a_postgresql_connector_with_a_password(instance, postgres_url):
    url = sa.make_url(postgres_url)
    refused = url.set(port=free_port()).render_as_string(hide_password=False)
    import_file(
        instance,
        f"""
        [[connectors]]
        name = "pg"
        kind = "sql"
        url = "{postgres_url}"
        password = "{SECRET}"
        [[connectors]]
        name = "pg-down"
        kind = "sql"
        url = "{refused}"
        connect_timeout = 2
        """,
    )
    works = nomaflow("connectors", "test", "pg", instance=instance)
    assert works.returncode == 0, works.stderr
    assert works.stdout.startswith("pg: connected: PostgreSQL ")
    down = nomaflow("connectors", "test", "pg-down", instance=instance)
    assert down.returncode == 1
    assert down.stderr.startswith("nomaflow: pg-down: connection failed: ")
    assert "Connection refused" in down.stderr and SECRET not in down.stderr


def test_test_an_smtp_relay_against_a_real_server(instance, smtp_sink):  # noqa: F811
    import_file(
        instance,
        f"""
        [[connectors]]
        name = "relay"
        kind = "smtp"
        host = "127.0.0.1"
        port = {smtp_sink}
        tls = "none"
        sender = "nomaflow@example.org"
        [[connectors]]
        name = "tls"
        kind = "smtp"
        host = "127.0.0.1"
        port = {smtp_sink}
        tls = "starttls"
        sender = "nomaflow@example.org"
        """,
    )
    relay = nomaflow("connectors", "test", "relay", instance=instance)
    assert relay.returncode == 0, relay.stderr
    assert relay.stdout.startswith(f"relay: connected to 127.0.0.1:{smtp_sink} (NOOP 250) (")
    tls = nomaflow("connectors", "test", "tls", instance=instance)
    assert tls.returncode == 1
    assert tls.stderr == (
        "nomaflow: tls: SMTPNotSupportedError: STARTTLS extension not supported by server.\n"
    )


def seed_secrets(instance, **env):
    """A connector password, a secret variable and a run's sealed parameters."""
    import_file(
        instance,
        f"""
        [[connectors]]
        name = "mail"
        kind = "smtp"
        host = "smtp.example.org"
        sender = "n@example.org"
        username = "u"
        password = "{SECRET}"
        [[variables]]
        name = "TOKEN"
        secret = true
        value = "{SECRET}-var"
        [[variables]]
        name = "REGION"
        value = "eu"
        """,
        env=env,
    )
    app = open_instance(instance, **env)
    with get_database(app).session_scope() as db_session:
        db_session.add(Job(id="demo"))
        db_session.flush()
        sealed = vault(app).seal({"password": f"{SECRET}-run"})
        db_session.add(Run(job_id="demo", trigger="manual", params_sealed=sealed))
    get_database(app).dispose()


def sealed_values(instance, **env):
    """Open every sealed value with the instance's keys, the way the server does."""
    app = open_instance(instance, **env)
    keys = vault(app)
    with get_database(app).session_scope() as db_session:
        password = load_connector(db_session, keys, "mail").values["password"]
        variable = db_session.scalar(sa.select(Variable).where(Variable.name == "TOKEN"))
        run = db_session.scalar(sa.select(Run))
        opened = (password, keys.unseal(variable.value), keys.unseal(run.params_sealed))
        tokens = (
            db_session.scalar(sa.select(Connector.secrets_sealed)),
            variable.value,
            run.params_sealed,
        )
    get_database(app).dispose()
    return opened, tokens


def test_keys_rotate_puts_a_new_key_first_and_the_old_key_can_then_go(instance):
    seed_secrets(instance)
    keys_file = instance / "encryption_keys"
    old_key = keys_file.read_text().strip()
    _, old_tokens = sealed_values(instance)

    result = nomaflow("keys", "rotate", instance=instance)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"new key written first in {keys_file} (2 keys, newest first)",
        "re-encrypted 1 connectors, 1 secret variables, 1 runs",
        "restart every Nomaflow process so it reads the new key",
    ]
    new_key, kept = keys_file.read_text().splitlines()
    assert kept == old_key and new_key != old_key
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    opened, new_tokens = sealed_values(instance)
    assert all(new != old for new, old in zip(new_tokens, old_tokens, strict=True))

    keys_file.write_text(new_key + "\n")  # the old key removed: everything still opens
    opened, _ = sealed_values(instance)
    assert opened == (SECRET, f"{SECRET}-var", {"password": f"{SECRET}-run"})
    assert nomaflow("connectors", "list", instance=instance).returncode == 0
    stranger = SecretsVault((old_key,))
    with pytest.raises(ValueError, match="cannot decrypt"):
        stranger.unseal(new_tokens[0])


def test_keys_rotate_with_keys_from_the_environment_says_where_to_put_the_key(instance):
    old_key = Fernet.generate_key().decode()
    env = {"NOMAFLOW_ENCRYPTION_KEYS": old_key}
    seed_secrets(instance, **env)
    result = nomaflow("keys", "rotate", instance=instance, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("new key (stored nowhere yet, keep it now): ")
    new_key = lines[0].rsplit(" ", 1)[1]
    assert "put it FIRST in NOMAFLOW_ENCRYPTION_KEYS" in lines[1]
    assert lines[2] == "re-encrypted 1 connectors, 1 secret variables, 1 runs"
    assert not (instance / "encryption_keys").exists()
    opened, _ = sealed_values(instance, NOMAFLOW_ENCRYPTION_KEYS=new_key)
    assert opened == (SECRET, f"{SECRET}-var", {"password": f"{SECRET}-run"})


def test_keys_rotate_changes_nothing_when_a_value_cannot_be_opened(instance):
    seed_secrets(instance)
    keys_file = instance / "encryption_keys"
    before = keys_file.read_text()
    app = open_instance(instance)
    foreign = SecretsVault((Fernet.generate_key().decode(),)).seal("from elsewhere")
    with get_database(app).session_scope() as db_session:
        db_session.add(Variable(name="ORPHAN", secret=True, value=foreign))
    get_database(app).dispose()
    _, tokens = sealed_values(instance)

    result = nomaflow("keys", "rotate", instance=instance)
    assert result.returncode == 1
    assert result.stderr == (
        "nomaflow: cannot decrypt variable ORPHAN: none of the keys opens it; nothing was "
        "re-encrypted and the keys are unchanged\n"
    )
    assert keys_file.read_text() == before
    assert sealed_values(instance)[1] == tokens


def test_wrong_keys_give_one_clear_line(instance):
    seed_secrets(instance)
    (instance / "encryption_keys").write_text(Fernet.generate_key().decode() + "\n")
    message = "cannot decrypt a stored secret: NOMAFLOW_ENCRYPTION_KEYS lacks the key it was sealed"
    listed = nomaflow("connectors", "list", instance=instance)
    assert listed.returncode == 2 and listed.stderr.startswith(
        f"nomaflow: connector mail: {message}"
    )
    tested = nomaflow("connectors", "test", "mail", instance=instance)
    assert tested.returncode == 2 and tested.stderr.startswith(
        f"nomaflow: connector mail: {message}"
    )
    exported = nomaflow("jobs", "export", instance=instance)
    assert exported.returncode == 2
    assert exported.stderr.startswith(f"nomaflow: cannot export the secrets: {message}")
    assert len(exported.stderr.splitlines()) == 1
