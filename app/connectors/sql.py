"""SQL connectors: a SQLAlchemy URL (password kept apart, encrypted) and pool settings."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from app.connectors.base import ConnectorKind, ConnectorTestFailed, Field


class SqlKind(ConnectorKind):
    def __init__(self):
        super().__init__(
            kind="sql",
            label="SQL database",
            fields=(
                Field(
                    "url",
                    required=True,
                    help="SQLAlchemy URL, e.g. postgresql+psycopg://etl@db1:5432/ops",
                ),
                Field("password", secret=True, help="kept out of the URL, encrypted"),
                Field("pool_size", "int", default=5, help="connections kept open"),
                Field("connect_timeout", "int", default=10, help="seconds to connect"),
            ),
        )

    def check(self, values: dict[str, Any]) -> dict[str, str]:
        try:
            url = sa.make_url(values["url"])
            url.get_dialect()
        except (ArgumentError, NoSuchModuleError, ImportError) as error:
            return {"url": f"not a usable database URL ({type(error).__name__}: {error})"}
        if values.get("pool_size", 5) < 1:
            return {"pool_size": "expected at least 1"}
        del url
        return {}

    def test(self, values: dict[str, Any]) -> str:
        try:
            engine = build_engine(values, pooled=False)
        except (sa.exc.ArgumentError, ImportError, ValueError) as error:
            raise ConnectorTestFailed(f"not a usable database URL: {error}") from error
        try:
            with engine.connect() as connection:
                version = _server_version(connection)
        except sa.exc.SQLAlchemyError as error:
            raise ConnectorTestFailed(_reason(error)) from error
        finally:
            engine.dispose()
        return f"connected: {version}"


def url_with_password(values: dict[str, Any]) -> sa.URL:
    url = sa.make_url(values["url"])
    if values.get("password"):
        url = url.set(password=values["password"])
    return url


def build_engine(values: dict[str, Any], pooled: bool = True) -> sa.Engine:
    """Create the engine for a connector's values (password included)."""
    url = url_with_password(values)
    timeout = int(values.get("connect_timeout") or 10)
    backend = url.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": timeout, "check_same_thread": False}
    elif backend in ("postgresql", "mysql", "mariadb"):
        options["connect_args"] = {"connect_timeout": timeout}
    if not pooled:
        options["poolclass"] = sa.pool.NullPool
    elif backend != "sqlite":
        options.update(
            pool_size=int(values.get("pool_size") or 5), max_overflow=2, pool_recycle=1800
        )
    return sa.create_engine(url, **options)


def _server_version(connection: sa.Connection) -> str:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        return "SQLite " + connection.execute(sa.text("select sqlite_version()")).scalar_one()
    return connection.execute(sa.text("select version()")).scalar_one().split(",")[0]


def _reason(error: Exception) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]
