"""Alert channels: saved with their secrets (URL, headers) sealed apart, write-only, exported
as enc: tokens, and routed to jobs by name or by tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.connectors.store import NAME_PATTERN, ConnectorError
from app.crypto import SecretsVault
from app.models import Channel, Connector, Job, Role, User

# kind -> its own fields (every kind also takes ``tags``); url and headers are secrets
CHANNEL_KINDS: dict[str, tuple[str, ...]] = {
    "email": ("connector", "to"),
    "slack": ("url",),
    "teams": ("url",),
    "webhook": ("url", "headers"),
    "in_app": ("roles",),
}
KIND_LABELS = {
    "email": "Email (through an SMTP connector)",
    "slack": "Slack incoming webhook",
    "teams": "Microsoft Teams webhook",
    "webhook": "Generic JSON webhook",
    "in_app": "In-app notifications (the bell)",
}
SECRET_FIELDS = ("url", "headers")
LIST_FIELDS = ("to", "roles", "tags")
CHANNEL_KEYS = ("name", "kind", "connector", "to", "url", "headers", "roles", "tags")


class ChannelError(ConnectorError):
    """A channel cannot be saved or deleted; ``fields`` maps fields to problems."""


@dataclass
class ChannelValues:
    """A channel ready to deliver to: every value, secrets in clear (never log or render)."""

    name: str
    kind: str
    values: dict[str, Any]


def save_channel(
    db: Session,
    vault: SecretsVault,
    name: str,
    kind: str,
    values: dict[str, Any],
    *,
    clear_secrets: tuple[str, ...] = (),
    user: User | None = None,
    ip: str = "",
) -> tuple[Channel, str]:
    """Create or update a channel; return it and "created" | "updated" | "unchanged".

    A secret left empty keeps the stored one (pages never show it); an ``enc:`` token from an
    export is unsealed with these keys; ``clear_secrets`` removes stored ones.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ChannelError("bad name", {"name": "use letters, digits, dots, dashes, underscores"})
    if kind not in CHANNEL_KINDS:
        known = ", ".join(CHANNEL_KINDS)
        raise ChannelError("bad kind", {"kind": f"unknown channel kind {kind!r} (known: {known})"})
    existing = db.scalar(sa.select(Channel).where(Channel.name == name))
    if existing is not None and existing.kind != kind:
        raise ChannelError("kind is fixed", {"kind": f"{name} is a {existing.kind} channel"})
    allowed = (*CHANNEL_KINDS[kind], "tags")
    problems = {
        key: f"unknown field for a {kind} channel (known: {', '.join(allowed)})"
        for key in values
        if key not in allowed
    }
    stored = _unseal(vault, existing) if existing else {}
    secrets = {k: v for k, v in stored.items() if k not in clear_secrets}
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if key in problems or value in (None, "", [], {}):
            continue
        if key in SECRET_FIELDS:
            secrets[key] = _from_export(vault, key, value)
        elif key in LIST_FIELDS:
            plain[key] = _as_list(value)
        else:
            plain[key] = value
    problems |= _check(db, kind, plain, secrets)
    if problems:
        raise ChannelError(f"channel {name} is not valid", problems)
    if existing is None:
        channel, outcome = Channel(name=name, kind=kind), "created"
        db.add(channel)
    else:
        channel = existing
        same = existing.config == plain and stored == secrets
        outcome = "unchanged" if same else "updated"
    channel.config = plain
    channel.secrets_sealed = vault.seal(secrets) if secrets else None
    if outcome != "unchanged":
        changed = sorted(k for k in set(secrets) | set(stored) if secrets.get(k) != stored.get(k))
        record_event(
            db,
            f"channel.{'create' if outcome == 'created' else 'update'}",
            user=user,
            username=None if user else "system",
            target_type="channel",
            target_id=name,
            ip=ip,
            detail={"kind": kind, "secrets_changed": changed},
        )
    db.flush()
    return channel, outcome


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
    return value


def _check(db: Session, kind: str, plain: dict[str, Any], secrets: dict[str, Any]) -> dict:
    problems: dict[str, str] = {}
    for key in LIST_FIELDS:
        value = plain.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        ):
            problems[key] = "expected a list of names"
    if kind == "email":
        connector = plain.get("connector")
        if not isinstance(connector, str) or not connector:
            problems["connector"] = "required: the smtp connector that sends the mail"
        else:
            found = db.scalar(sa.select(Connector.kind).where(Connector.name == connector))
            if found != "smtp":
                also = f" ({connector} is a {found} connector)" if found else ""
                problems["connector"] = f"no smtp connector named {connector!r}{also}"
        if not plain.get("to") and "to" not in problems:
            problems["to"] = "required: one address or more"
        for address in plain.get("to") or []:
            if isinstance(address, str) and "@" not in address:
                problems["to"] = f"{address!r} is not an email address"
    elif kind in ("slack", "teams", "webhook"):
        url = secrets.get("url")
        if not url:
            problems["url"] = "required"
        elif not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems["url"] = "expected an http:// or https:// URL"
        headers = secrets.get("headers")
        if headers is not None and not (
            isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            problems["headers"] = "expected a table of header names and text values"
    elif kind == "in_app":
        roles = plain.get("roles")
        if not roles and "roles" not in problems:
            problems["roles"] = "required: the roles whose users see the notification"
        elif isinstance(roles, list):
            known = set(db.scalars(sa.select(Role.name)))
            unknown = [r for r in roles if r not in known]
            if unknown:
                problems["roles"] = (
                    f"unknown role {unknown[0]!r} (known: {', '.join(sorted(known))})"
                )
    return problems


def delete_channel(db: Session, name: str, user: User | None = None, ip: str = "") -> list[str]:
    """Delete a channel; return the ids of jobs that still name it (their alerts skip it)."""
    channel = db.scalar(sa.select(Channel).where(Channel.name == name))
    if channel is None:
        raise ChannelError(f"no channel {name!r}")
    users = jobs_naming(db, name)
    db.delete(channel)
    record_event(db, "channel.delete", user=user, target_type="channel", target_id=name, ip=ip)
    return users


def jobs_naming(db: Session, name: str) -> list[str]:
    """Ids of live jobs whose alerts name this channel."""
    rows = db.execute(sa.select(Job.id, Job.alerts).where(Job.deleted_at.is_(None))).all()
    return sorted(
        job_id for job_id, alerts in rows if name in ((alerts or {}).get("channels") or [])
    )


def load_channel(db: Session, vault: SecretsVault, name: str) -> ChannelValues:
    """Return a channel's values with secrets, for delivery; LookupError when there is none."""
    channel = db.scalar(sa.select(Channel).where(Channel.name == name))
    if channel is None:
        raise LookupError(f"no alert channel named {name!r}")
    return ChannelValues(channel.name, channel.kind, {**channel.config, **_unseal(vault, channel)})


def channels_for_job(db: Session, own: list[str], job_tags: list[str]) -> list[str]:
    """The job's own channels, then those routed to it by a shared tag, each once."""
    names = list(dict.fromkeys(own))
    if job_tags:
        for name, config in db.execute(
            sa.select(Channel.name, Channel.config).order_by(Channel.name)
        ):
            if set((config or {}).get("tags") or ()) & set(job_tags) and name not in names:
                names.append(name)
    return names


def channel_names(db: Session) -> list[str]:
    return list(db.scalars(sa.select(Channel.name).order_by(Channel.name)))


def public_view(vault: SecretsVault, channel: Channel) -> dict[str, Any]:
    """What a page may show: plain values, and for each secret only whether it is set."""
    set_secrets = set(_unseal(vault, channel))
    secret_fields = [f for f in SECRET_FIELDS if f in CHANNEL_KINDS[channel.kind]]
    return {
        "name": channel.name,
        "kind": channel.kind,
        "values": dict(channel.config),
        "secrets": {f: (f in set_secrets) for f in secret_fields},
    }


def export_channel(vault: SecretsVault, channel: Channel) -> dict[str, Any]:
    """The channel as a TOML table: secrets as enc: tokens only these keys can read."""
    table: dict[str, Any] = {"name": channel.name, "kind": channel.kind}
    table.update(channel.config)
    for key, value in sorted(_unseal(vault, channel).items()):
        table[key] = vault.export_token(value)
    return table


def _unseal(vault: SecretsVault, channel: Channel) -> dict[str, Any]:
    return vault.unseal(channel.secrets_sealed) if channel.secrets_sealed else {}


def _from_export(vault: SecretsVault, key: str, value: Any) -> Any:
    try:
        return vault.read_export(value)
    except ValueError as error:
        raise ChannelError("cannot read an exported secret", {key: str(error)}) from None
