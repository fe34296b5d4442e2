"""``[[channels]]`` in job files (DESIGN §8): checked and saved with the rest of an import (all
or nothing), exported with secrets as enc: tokens."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.alerts.channels import CHANNEL_KEYS, ChannelError, export_channel, save_channel
from app.crypto import SecretsVault
from app.models import Channel, User


def channel_tables(document: dict, errors: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ``[[channels]]`` tables that have the shape to be saved, with their paths."""
    tables = document.get("channels", [])
    if not isinstance(tables, list):
        errors.append("channels: expected [[channels]] tables")
        return []
    found, first = [], {}
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            errors.append(f"channels[{index}]: expected a table")
            continue
        name = table.get("name")
        path = (
            f"channels[{index}] {name}" if isinstance(name, str) and name else f"channels[{index}]"
        )
        problems = [
            f"{path} › {key}: unknown channel field {key!r} (known: {', '.join(CHANNEL_KEYS)})"
            for key in table
            if key not in CHANNEL_KEYS
        ]
        for key in ("name", "kind"):
            if not isinstance(table.get(key), str) or not table[key]:
                problem = "required" if key not in table else "expected a string"
                problems.append(f"{path} › {key}: {problem}")
        if isinstance(name, str) and name in first:
            problems.append(
                f"{path} › name: duplicate channel name {name!r} (also channels[{first[name]}])"
            )
        elif isinstance(name, str):
            first[name] = index
        errors.extend(problems)
        if not problems:
            found.append((path, table))
    return found


def unknown_channels(db: Session, specs: dict[int, dict[str, Any]], in_file: set[str]) -> list[str]:
    """Name each alert channel a job names that is neither in this file nor stored."""
    named = [
        (index, name)
        for index, spec in specs.items()
        for name in (spec.get("alerts") or {}).get("channels", [])
    ]
    outside = {name for _, name in named} - in_file
    stored = set()
    if outside:
        stored = set(db.scalars(sa.select(Channel.name).where(Channel.name.in_(outside))))
    return [
        f"jobs[{index}] {specs[index]['id']} › alerts › channels: no channel named {name!r}"
        for index, name in named
        if name not in in_file and name not in stored
    ]


def save_channel_tables(
    db: Session,
    vault: SecretsVault,
    tables: list[tuple[str, dict[str, Any]]],
    errors: list[str],
    user: User | None = None,
    ip: str = "",
) -> dict[str, str]:
    """Save each channel (after the file's connectors: an email channel names one)."""
    outcomes = {}
    for path, table in tables:
        values = {k: v for k, v in table.items() if k not in ("name", "kind")}
        try:
            _, outcome = save_channel(
                db, vault, table["name"], table["kind"], values, user=user, ip=ip
            )
        except ChannelError as error:
            if error.fields:
                errors.extend(f"{path} › {key}: {problem}" for key, problem in error.fields.items())
            else:
                errors.append(f"{path}: {error.message}")
        else:
            outcomes[f"channel {table['name']}"] = outcome
    return outcomes


def channels_to_export(db: Session, definitions: list[dict[str, Any]] | None) -> list[Channel]:
    """Every channel (``definitions`` None), or those the jobs name or are routed to by tag."""
    query = sa.select(Channel).order_by(Channel.name)
    channels = list(db.scalars(query))
    if definitions is None:
        return channels
    named = {n for d in definitions for n in ((d.get("alerts") or {}).get("channels") or [])}
    tags = {t for d in definitions if d.get("alerts") for t in d.get("tags") or []}
    return [
        c for c in channels if c.name in named or set((c.config or {}).get("tags") or ()) & tags
    ]


def export_channel_tables(vault: SecretsVault | None, channels: list[Channel]) -> list[dict]:
    return [export_channel(vault, channel) for channel in channels]
