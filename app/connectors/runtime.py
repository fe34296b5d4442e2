"""Connectors at run time: values read fresh, engines and clients cached until a save."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.connectors import DEFAULT_CONNECTOR
from app.connectors.sql import build_engine
from app.connectors.store import ConnectorValues, load_connector
from app.crypto import SecretsVault
from app.db import Database


class ConnectorInUseError(LookupError):
    """A step named a connector that does not exist or is of another kind."""


@dataclass(frozen=True)
class PoolUsage:
    """One SQL connector's connection pool in this process; None: its pool class cannot tell."""

    name: str
    pool: str  # the pool class, e.g. QueuePool
    size: int | None  # connections kept open
    checked_out: int | None  # in use by steps now
    overflow: int | None  # opened beyond ``size``, in use or idle
    max_overflow: int | None

    @property
    def capacity(self) -> int | None:
        """The most connections the pool will hand out at once."""
        return None if self.size is None else self.size + (self.max_overflow or 0)


def pool_usage_of(name: str, pool: Any) -> PoolUsage:
    """Read a SQLAlchemy pool's figures; SQLite's and other pools may lack some of them."""

    def figure(attribute: str) -> int | None:
        value = getattr(pool, attribute, None)
        value = value() if callable(value) else value
        return value if isinstance(value, int) else None

    overflow = figure("overflow")  # QueuePool counts from -size: negative until it overflows
    return PoolUsage(
        name=name,
        pool=type(pool).__name__,
        size=figure("size"),
        checked_out=figure("checkedout"),
        overflow=None if overflow is None else max(0, overflow),
        max_overflow=figure("_max_overflow"),  # QueuePool keeps it private; others: None
    )


class Connectors:
    """One per process: hands steps SQL engines and HTTP/LDAP clients by connector name."""

    def __init__(self, database: Database, vault: SecretsVault):
        self.database, self.vault = database, vault
        self._cache: dict[tuple[str, str], tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def values(self, name: str, kind: str) -> ConnectorValues:
        """Return the connector's values (secrets in clear); LookupError names the problem."""
        with self.database.session_scope() as db:
            try:
                found = load_connector(db, self.vault, name)
            except LookupError:
                raise ConnectorInUseError(f"no connector named {name!r}") from None
        if found.kind != kind:
            raise ConnectorInUseError(f"connector {name!r} is {found.kind}, not {kind}")
        return found

    def sql_engine(self, name: str) -> sa.Engine:
        """The engine of a sql connector (``default``: the app's own database)."""
        if name == DEFAULT_CONNECTOR:
            return self.database.engine
        found = self.values(name, "sql")
        return self._cached(
            ("sql", name),
            found.version,
            lambda: build_engine(found.values),
            lambda engine: engine.dispose(),
        )

    def cached_client(self, kind: str, name: str, build, close=lambda client: None) -> Any:
        """A client built from a connector's values, rebuilt when the connector changes."""
        found = self.values(name, kind)
        return self._cached((kind, name), found.version, lambda: build(found.values), close)

    def _cached(self, key, version: str, build, close) -> Any:
        with self._lock:
            held = self._cache.get(key)
            if held is not None and held[0] == version:
                return held[1]
            client = build()
            self._cache[key] = (version, client)
        if held is not None:
            close(held[1])
        return client

    def pool_usage(self) -> list[PoolUsage]:
        """The pool of each SQL connector with an engine in this process, by name."""
        with self._lock:
            engines = {key[1]: held[1] for key, held in self._cache.items() if key[0] == "sql"}
        return [pool_usage_of(name, engines[name].pool) for name in sorted(engines)]

    def dispose(self) -> None:
        with self._lock:
            held, self._cache = self._cache, {}
        for (kind, _name), (_version, client) in held.items():
            if kind == "sql":
                client.dispose()
            elif hasattr(client, "close"):
                client.close()
