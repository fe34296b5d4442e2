import stat
import subprocess
import sys

import pytest

from app.config import ConfigError, load_settings


def env(tmp_path, **values):
    return {"NOMAFLOW_INSTANCE": str(tmp_path), **{f"NOMAFLOW_{k}": v for k, v in values.items()}}


def test_missing_keys_are_generated_once_with_mode_0600(tmp_path):
    first = load_settings(env(tmp_path))
    for name in ("secret_key", "encryption_keys"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    second = load_settings(env(tmp_path))
    assert second.secret_key == first.secret_key
    assert second.encryption_keys == first.encryption_keys


def test_defaults_put_sqlite_in_the_instance_folder(tmp_path):
    settings = load_settings(env(tmp_path))
    assert settings.database_url == f"sqlite:///{tmp_path / 'nomaflow.db'}"
    assert settings.scheduler_enabled is True


def test_environment_wins_over_instance_toml(tmp_path):
    (tmp_path / "nomaflow.toml").write_text(
        'database_url = "sqlite:////tmp/from-toml.db"\nsession_idle_minutes = 30\n'
    )
    settings = load_settings(env(tmp_path, DATABASE_URL="sqlite:////tmp/from-env.db"))
    assert settings.database_url == "sqlite:////tmp/from-env.db"
    assert settings.session_idle_minutes == 30


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SCHEDULER_ENABLED": "yes"}, "NOMAFLOW_SCHEDULER_ENABLED=yes: expected true or false"),
        ({"DATABASE_URL": "not a url"}, "NOMAFLOW_DATABASE_URL: not a database URL"),
        ({"DATABASE_URL": "oracle+nope://x@y/z"}, "NOMAFLOW_DATABASE_URL: unknown database driver"),
        ({"ENCRYPTION_KEYS": "short"}, "NOMAFLOW_ENCRYPTION_KEYS: each key must be a Fernet key"),
        ({"SESSION_IDLE_MINUTES": "ten"}, "NOMAFLOW_SESSION_IDLE_MINUTES=ten: expected a whole"),
        ({"COOKIE_SECURE": "maybe"}, "NOMAFLOW_COOKIE_SECURE=maybe: expected one of auto"),
        ({"REDIS_URL": "localhost:6379"}, "NOMAFLOW_REDIS_URL=localhost:6379: expected a redis"),
    ],
)
def test_a_bad_setting_is_named_in_one_line(tmp_path, values, message):
    with pytest.raises(ConfigError) as raised:
        load_settings(env(tmp_path, **values))
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_bad_toml_names_the_file(tmp_path):
    (tmp_path / "nomaflow.toml").write_text("database_url = \n")
    with pytest.raises(ConfigError, match="nomaflow.toml: not valid TOML"):
        load_settings(env(tmp_path))


def test_cli_stops_on_a_bad_setting_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "check"],
        env=env(tmp_path, DATABASE_URL="postgres//nope"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("nomaflow: NOMAFLOW_DATABASE_URL: not a database URL")
    assert len(result.stderr.strip().splitlines()) == 1
