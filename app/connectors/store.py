"""Saving and reading connectors: secrets sealed apart, write-only, exported as enc: tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.connectors import DEFAULT_CONNECTOR, get_connector_kind
from app.crypto import SecretsVault
from app.models import Connector, Job, Step, User

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ConnectorError(ValueError):
    """A connector cannot be saved or deleted; ``fields`` maps fields to problems."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message + "".join(f"; {k}: {v}" for k, v in (fields or {}).items()))
        self.message = message
        self.fields = fields or {}


@dataclass
class ConnectorValues:
    """A connector ready to use: every value, secrets in clear (never log or render them)."""

    name: str
    kind: str
    values: dict[str, Any]
    version: str  # changes whenever the connector is saved (cache key)


def save_connector(
    db: Session,
    vault: SecretsVault,
    name: str,
    kind: str,
    values: dict[str, Any],
    *,
    description: str | None = None,
    clear_secrets: tuple[str, ...] = (),
    user: User | None = None,
    ip: str = "",
) -> tuple[Connector, str]:
    """Create or update a connector; return it and "created" | "updated" | "unchanged".

    A secret left empty keeps the stored one (the UI never shows it); an ``enc:`` token from an
    export is unsealed with this installation's keys; ``clear_secrets`` removes stored ones.
    """
    if not NAME_PATTERN.match(name or ""):
        raise ConnectorError("bad name", {"name": "use letters, digits, dots, dashes, underscores"})
    if name == DEFAULT_CONNECTOR:
        raise ConnectorError("reserved name", {"name": "'default' is the app's own database"})
    try:
        connector_kind = get_connector_kind(kind)
    except LookupError as error:
        raise ConnectorError("bad kind", {"kind": str(error)}) from None
    existing = db.scalar(sa.select(Connector).where(Connector.name == name))
    if existing is not None and existing.kind != kind:
        raise ConnectorError("kind is fixed", {"kind": f"{name} is a {existing.kind} connector"})
    stored_secrets = _unseal(vault, existing) if existing else {}
    values = _move_url_password(kind, dict(values))
    secrets = {k: v for k, v in stored_secrets.items() if k not in clear_secrets}
    plain = {}
    for field_name, value in values.items():
        if field_name in connector_kind.secret_fields:
            if value not in (None, ""):
                secrets[field_name] = _from_export(vault, field_name, value)
        elif value not in (None, ""):
            plain[field_name] = value
    problems = connector_kind.validate({**plain, **secrets})
    if problems:
        raise ConnectorError(f"connector {name} is not valid", problems)
    if existing is None:
        connector = Connector(name=name, kind=kind, description=description or "")
        db.add(connector)
        outcome = "created"
    else:
        connector = existing
        same = (
            existing.config == plain
            and stored_secrets == secrets
            and (description is None or description == existing.description)
        )
        outcome = "unchanged" if same else "updated"
        if description is not None:
            connector.description = description
    connector.config = plain
    connector.secrets_sealed = vault.seal(secrets) if secrets else None
    if outcome != "unchanged":
        record_event(
            db,
            f"connector.{'create' if outcome == 'created' else 'update'}",
            user=user,
            username=None if user else "system",
            target_type="connector",
            target_id=name,
            ip=ip,
            detail={
                "kind": kind,
                "secrets_changed": sorted(
                    k
                    for k in set(secrets) | set(stored_secrets)
                    if secrets.get(k) != stored_secrets.get(k)
                ),
            },
        )
    db.flush()
    return connector, outcome


def delete_connector(db: Session, name: str, user: User | None = None, ip: str = "") -> None:
    """Delete a connector no job uses; ConnectorError names the jobs that still use it."""
    connector = db.scalar(sa.select(Connector).where(Connector.name == name))
    if connector is None:
        raise ConnectorError(f"no connector {name!r}")
    users = jobs_using(db, name)
    if users:
        raise ConnectorError(f"{name} is used by {', '.join(users)}; change those jobs first")
    db.delete(connector)
    record_event(db, "connector.delete", user=user, target_type="connector", target_id=name, ip=ip)


def jobs_using(db: Session, name: str) -> list[str]:
    """Ids of live jobs with a step that names this connector anywhere in its config."""
    used = set()
    rows = db.execute(
        sa.select(Step.job_id, Step.config)
        .join(Job, Job.id == Step.job_id)
        .where(Job.deleted_at.is_(None))
    ).all()
    for job_id, config in rows:
        if name in _connector_names(config):
            used.add(job_id)
    return sorted(used)


def _connector_names(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["connector"]} if isinstance(value.get("connector"), str) else set()
        for item in value.values():
            found |= _connector_names(item)
        return found
    if isinstance(value, list):
        return set().union(*(_connector_names(item) for item in value)) if value else set()
    return set()


def load_connector(db: Session, vault: SecretsVault, name: str) -> ConnectorValues:
    """Return a connector's values with secrets, for use; LookupError when there is none."""
    connector = db.scalar(sa.select(Connector).where(Connector.name == name))
    if connector is None:
        raise LookupError(f"no connector named {name!r}")
    kind = get_connector_kind(connector.kind)
    values = kind.with_defaults({**connector.config, **_unseal(vault, connector)})
    return ConnectorValues(
        connector.name, connector.kind, values, f"{connector.id}:{connector.updated_at.isoformat()}"
    )


def public_view(vault: SecretsVault, connector: Connector) -> dict[str, Any]:
    """What a page may show: plain values, and for each secret only whether it is set."""
    kind = get_connector_kind(connector.kind)
    set_secrets = set(_unseal(vault, connector))
    return {
        "name": connector.name,
        "kind": connector.kind,
        "description": connector.description,
        "values": dict(connector.config),
        "secrets": {f: (f in set_secrets) for f in sorted(kind.secret_fields)},
    }


def export_connector(vault: SecretsVault, connector: Connector) -> dict[str, Any]:
    """The connector as a TOML table: secrets as enc: tokens only these keys can read."""
    table = {"name": connector.name, "kind": connector.kind}
    if connector.description:
        table["description"] = connector.description
    table.update(connector.config)
    for field_name, value in sorted(_unseal(vault, connector).items()):
        table[field_name] = vault.export_token(value)
    return table


def _unseal(vault: SecretsVault, connector: Connector) -> dict[str, Any]:
    return vault.unseal(connector.secrets_sealed) if connector.secrets_sealed else {}


def _from_export(vault: SecretsVault, field_name: str, value: Any) -> Any:
    try:
        return vault.read_export(value)
    except ValueError as error:
        problem = {field_name: str(error)}
        raise ConnectorError("cannot read an exported secret", problem) from None


def _move_url_password(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """Take a password written inside a SQL URL out of it, so the URL is stored in clear."""
    if kind != "sql" or not isinstance(values.get("url"), str):
        return values
    try:
        url = sa.make_url(values["url"])
    except sa.exc.ArgumentError:
        return values
    if url.password:
        if not values.get("password"):
            values["password"] = url.password
        bare = sa.URL.create(
            url.drivername, url.username, None, url.host, url.port, url.database, url.query
        )  # url.set(password=None) keeps it
        values["url"] = bare.render_as_string(hide_password=False)
    return values
