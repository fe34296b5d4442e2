"""Settings from the environment (NOMAFLOW_*) and instance/nomaflow.toml, checked at start-up.

Environment variables win over the TOML file; the TOML file uses the same names in lower case
without the prefix (``database_url = "..."``). A missing secret key or encryption key is generated
once into the instance folder (mode 0600) and reused on every later start.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

PREFIX = "NOMAFLOW_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """A setting is wrong; the message is one line that names it."""


@dataclass(frozen=True)
class Settings:
    instance_path: Path
    database_url: str
    secret_key: str
    encryption_keys: tuple[str, ...]
    admin_password: str | None
    scheduler_enabled: bool
    cookie_secure: str  # "auto" | "true" | "false"
    session_idle_minutes: int
    login_max_failures: int
    login_lockout_minutes: int
    proxy_count: int
    redis_url: str | None
    log_level: str
    node_name: str | None
    runner_pool_size: int
    log_max_lines: int
    demo_jobs: bool
    # alerts (app/alerts): run links in messages, watcher poll, retry backoff, grouping window
    base_url: str = "http://127.0.0.1:5000"
    alert_poll_seconds: int = 5
    alert_retry_seconds: int = 30
    alert_group_seconds: int = 600

    def flask_config(self) -> dict:
        """Return the Flask config keys derived from these settings."""
        return {
            "SECRET_KEY": self.secret_key,
            "NOMAFLOW": self,
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_NAME": "nomaflow_session",
            "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
            "WTF_CSRF_HEADERS": ["X-CSRFToken"],
            "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        }


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read, validate and complete the settings; raise ConfigError naming the bad one."""
    env = dict(os.environ if environ is None else environ)
    instance_path = Path(env.get(PREFIX + "INSTANCE") or "instance").resolve()
    try:
        instance_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"NOMAFLOW_INSTANCE={instance_path}: cannot create the instance folder ({exc.strerror})"
        ) from exc
    values = _read_toml(instance_path / "nomaflow.toml")

    def get(name: str) -> str | None:
        if PREFIX + name in env and env[PREFIX + name] != "":
            return env[PREFIX + name]
        value = values.get(name.lower())
        return None if value is None else str(value)

    database_url = get("DATABASE_URL") or f"sqlite:///{instance_path / 'nomaflow.db'}"
    _check_database_url(database_url)
    return Settings(
        instance_path=instance_path,
        database_url=database_url,
        secret_key=get("SECRET_KEY") or _generated_file(instance_path / "secret_key", _new_secret),
        encryption_keys=_encryption_keys(get("ENCRYPTION_KEYS"), instance_path),
        admin_password=get("ADMIN_PASSWORD"),
        scheduler_enabled=_boolean("SCHEDULER_ENABLED", get("SCHEDULER_ENABLED"), default=True),
        cookie_secure=_choice("COOKIE_SECURE", get("COOKIE_SECURE"), ("auto", "true", "false")),
        session_idle_minutes=_integer("SESSION_IDLE_MINUTES", get("SESSION_IDLE_MINUTES"), 480),
        login_max_failures=_integer("LOGIN_MAX_FAILURES", get("LOGIN_MAX_FAILURES"), 5),
        login_lockout_minutes=_integer("LOGIN_LOCKOUT_MINUTES", get("LOGIN_LOCKOUT_MINUTES"), 15),
        proxy_count=_integer("PROXY_COUNT", get("PROXY_COUNT"), 0, minimum=0),
        redis_url=_redis_url(get("REDIS_URL")),
        log_level=_choice("LOG_LEVEL", (get("LOG_LEVEL") or "INFO").upper(), LOG_LEVELS),
        node_name=get("NODE_NAME"),
        runner_pool_size=_integer("RUNNER_POOL_SIZE", get("RUNNER_POOL_SIZE"), 4),
        log_max_lines=_integer("LOG_MAX_LINES", get("LOG_MAX_LINES"), 100_000, minimum=10),
        demo_jobs=_boolean("DEMO_JOBS", get("DEMO_JOBS"), default=False),
        base_url=_base_url(get("BASE_URL")),
        alert_poll_seconds=_integer("ALERT_POLL_SECONDS", get("ALERT_POLL_SECONDS"), 5),
        alert_retry_seconds=_integer("ALERT_RETRY_SECONDS", get("ALERT_RETRY_SECONDS"), 30),
        alert_group_seconds=_integer(
            "ALERT_GROUP_SECONDS", get("ALERT_GROUP_SECONDS"), 600, minimum=0
        ),
    )


def _read_toml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def _check_database_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            "NOMAFLOW_DATABASE_URL: not a database URL "
            "(expected e.g. sqlite:///path/nomaflow.db or postgresql+psycopg://user@host/db)"
        ) from exc
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"NOMAFLOW_DATABASE_URL: unknown database driver {parsed.drivername!r} "
            "(use sqlite, postgresql+psycopg or mysql+pymysql)"
        ) from exc
    except ImportError as exc:
        raise ConfigError(
            f"NOMAFLOW_DATABASE_URL: the driver for {parsed.drivername!r} is not installed "
            f"({exc.name}); install nomaflow[postgres] or nomaflow[mysql]"
        ) from exc


def _boolean(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in ("true", "1"):
        return True
    if word in ("false", "0"):
        return False
    raise ConfigError(f"NOMAFLOW_{name}={raw}: expected true or false")


def _choice(name: str, raw: str | None, allowed: tuple[str, ...]) -> str:
    if raw is None:
        return allowed[0]
    if raw.lower() not in (a.lower() for a in allowed):
        raise ConfigError(f"NOMAFLOW_{name}={raw}: expected one of {', '.join(allowed)}")
    return next(a for a in allowed if a.lower() == raw.lower())


def _integer(name: str, raw: str | None, default: int, minimum: int = 1) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"NOMAFLOW_{name}={raw}: expected a whole number >= {minimum}")
    return value


def _base_url(raw: str | None) -> str:
    """Where browsers reach this app (absolute run links in alert messages)."""
    if raw is None:
        return "http://127.0.0.1:5000"
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"NOMAFLOW_BASE_URL={raw}: expected an http:// or https:// URL")
    return raw.rstrip("/")


def _redis_url(raw: str | None) -> str | None:
    if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"NOMAFLOW_REDIS_URL={raw}: expected a redis:// or rediss:// URL")
    return raw or None


def _encryption_keys(raw: str | None, instance_path: Path) -> tuple[str, ...]:
    text = raw or _generated_file(instance_path / "encryption_keys", _new_fernet_key)
    keys = tuple(k.strip() for k in text.replace("\n", ",").split(",") if k.strip())
    for key in keys:
        try:
            Fernet(key)
        except ValueError as exc:
            raise ConfigError(
                "NOMAFLOW_ENCRYPTION_KEYS: each key must be a Fernet key "
                "(url-safe base64 of 32 bytes), comma-separated, newest first"
            ) from exc
    if not keys:
        raise ConfigError("NOMAFLOW_ENCRYPTION_KEYS: no key given")
    return keys


def _new_secret() -> str:
    return secrets.token_urlsafe(48)


def _new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def _generated_file(path: Path, make) -> str:
    """Return the content of a key file, creating it (mode 0600) the first time."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
