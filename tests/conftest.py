"""Fixtures: apps on real SQLite / PostgreSQL / MariaDB, personas, signed-in clients.

A service that is not reachable skips its tests with the reason on a laptop; under CI=true it
fails them, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from werkzeug.security import generate_password_hash

from app import create_app
from app.config import load_settings
from app.crypto import SecretsVault
from app.db import get_database
from app.models import Role, User
from app.schema import upgrade_database

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "NOMAFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "NOMAFLOW_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
PASSWORD = "correct horse battery"
PASSWORD_HASH = generate_password_hash(PASSWORD)
PERSONAS = {"ada": "admin", "eddie": "editor", "otto": "operator", "vera": "viewer"}


def service_missing(what: str, error: Exception) -> None:
    reason = f"{what} is not reachable: {str(error).strip().splitlines()[0]}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


class ScratchDatabase:
    """A database of its own on a shared server, created for a test session and dropped after."""

    def __init__(self, admin_url: str, what: str):
        self.admin_url = sa.make_url(admin_url)
        self.what = what
        self.name = f"nomaflow_test_{uuid.uuid4().hex[:10]}"
        self.url = self.admin_url.set(database=self.name).render_as_string(hide_password=False)
        self.engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def create(self) -> str:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {self.name}"))
        except sa.exc.OperationalError as error:
            service_missing(self.what, error)
        return self.url

    def drop(self) -> None:
        force = " WITH (FORCE)" if self.engine.dialect.name == "postgresql" else ""
        with self.engine.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {self.name}{force}"))
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    scratch = ScratchDatabase(POSTGRES_ADMIN_URL, "PostgreSQL on 127.0.0.1:5432")
    yield scratch.create()
    scratch.drop()


@pytest.fixture(scope="session")
def mariadb_url():
    scratch = ScratchDatabase(MARIADB_ADMIN_URL, "MariaDB on 127.0.0.1:3306")
    yield scratch.create()
    scratch.drop()


@pytest.fixture
def make_scratch_database():
    """Give fresh, empty databases on PostgreSQL or MariaDB for one test."""
    made = []

    def make(backend: str) -> str:
        admin_url, what = {
            "postgres": (POSTGRES_ADMIN_URL, "PostgreSQL on 127.0.0.1:5432"),
            "mariadb": (MARIADB_ADMIN_URL, "MariaDB on 127.0.0.1:3306"),
        }[backend]
        scratch = ScratchDatabase(admin_url, what)
        made.append(scratch)
        return scratch.create()

    yield make
    for scratch in made:
        scratch.drop()


def settings_for(instance: Path, database_url: str | None = None, **extra: str):
    env = {"NOMAFLOW_INSTANCE": str(instance), "NOMAFLOW_SCHEDULER_ENABLED": "false"}
    if database_url:
        env["NOMAFLOW_DATABASE_URL"] = database_url
    env.update({f"NOMAFLOW_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


def add_personas(app) -> None:
    """Add the four personas, all with PASSWORD (hashed once per test session: scrypt is slow)."""
    with get_database(app).session_scope() as db_session:
        roles = {role.name: role for role in db_session.scalars(sa.select(Role))}
        for username, role in PERSONAS.items():
            db_session.add(User(username=username, role=roles[role], password_hash=PASSWORD_HASH))


def reset_database(app) -> None:
    """Empty every table but the seeded roles (shared server databases between tests)."""
    from app.db import Base
    from app.models import Run

    with get_database(app).session_scope() as db_session:
        # runs point at runs (chains, replays): MariaDB checks that FK row by row on DELETE
        db_session.execute(sa.update(Run).values(parent_run_id=None, replay_of_id=None))
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "roles":
                db_session.execute(table.delete())


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite file migrated once per session; each test app starts from a copy of it."""
    path = tmp_path_factory.mktemp("template") / "nomaflow.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def make_app(tmp_path, migrated_sqlite_file):
    """Build a migrated app with the personas on SQLite (default) or a given database URL."""
    apps = []

    def make(database_url: str | None = None, **extra: str):
        instance = tmp_path / f"instance{len(apps)}"
        if database_url is None:
            instance.mkdir()
            shutil.copyfile(migrated_sqlite_file, instance / "nomaflow.db")
        else:
            upgrade_database(database_url)
        settings = settings_for(instance, database_url, **extra)
        app = create_app(settings)
        app.config["TESTING"] = True
        reset_database(app)
        add_personas(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_database(app).dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def any_db_app(request, make_app):
    """The same test on the embedded SQLite, on PostgreSQL and on MariaDB."""
    if request.param == "sqlite":
        return make_app()
    url = request.getfixturevalue(f"{request.param}_url")
    return make_app(url)


def new_vault() -> SecretsVault:
    """A vault with a fresh key of its own."""
    return SecretsVault((Fernet.generate_key().decode(),))


@pytest.fixture
def keys():
    """A vault with a fresh key, for tests of sealed secrets."""
    return new_vault()


@pytest.fixture
def db(app):
    """A session on the test app's database, committed at the end of the test."""
    with get_database(app).session_scope() as db_session:
        yield db_session


@pytest.fixture
def client(app):
    return app.test_client()


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client, path: str = "/login") -> str:
    """Read the CSRF token a real form on ``path`` carries."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_FIELD.search(page)
    assert match, f"no csrf_token field on {path}"
    return match.group(1)


def sign_in(client, username: str, password: str = PASSWORD, next_path: str | None = None):
    data = {"username": username, "password": password, "csrf_token": csrf_token(client)}
    if next_path:
        data["next"] = next_path
    return client.post("/login", data=data)


@pytest.fixture
def as_user(app):
    """Return a test client signed in as one of the personas."""

    def make(username: str):
        test_client = app.test_client()
        response = sign_in(test_client, username)
        assert response.status_code == 302, response.get_data(as_text=True)
        return test_client

    return make
