"""``nomaflow connectors list|test`` and ``nomaflow keys rotate`` (DESIGN §8).

Imports from app.cli and the domain happen inside the commands: app.cli registers these groups
at its end, and `nomaflow --help` should not load the whole app.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.orm import Session

RUN_BATCH = 1000  # runs re-encrypted per statement: history can be long
MASK = "•••"


def register(main: click.Group) -> None:
    main.add_command(connectors)
    main.add_command(keys)


@click.group()
def connectors() -> None:
    """List connectors and test their connections."""


@contextmanager
def _app_session() -> Iterator[tuple[Any, Session]]:
    """Give the app and a session that commits at the end; exit 3 without a database."""
    from app.cli import EXIT_NO_DATABASE, app_or_exit, fail
    from app.db import get_database
    from app.startup import unreachable_message

    app = app_or_exit()
    try:
        with get_database(app).session_scope() as db_session:
            yield app, db_session
    except sa.exc.OperationalError as error:
        fail(unreachable_message(app.config["NOMAFLOW"].database_url, error), EXIT_NO_DATABASE)


@connectors.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def list_command(as_json: bool) -> None:
    """List the connectors: name, kind, the jobs that use them, description."""
    from app.cli import EXIT_BAD_INPUT, fail
    from app.connectors import DEFAULT_CONNECTOR
    from app.connectors.store import jobs_using, public_view
    from app.crypto import vault
    from app.models import Connector

    with _app_session() as (app, db_session):
        documents = [
            {
                "name": DEFAULT_CONNECTOR,
                "kind": "sql",
                "description": "the app's own database (built in)",
                "builtin": True,
                "values": {},
                "secrets": {},
                "used_by": jobs_using(db_session, DEFAULT_CONNECTOR),
            }
        ]
        secrets_vault = vault(app)
        for connector in db_session.scalars(sa.select(Connector).order_by(Connector.name)):
            try:
                view = public_view(secrets_vault, connector)
            except ValueError as error:
                fail(f"connector {connector.name}: {error}", EXIT_BAD_INPUT)
            documents.append(
                {
                    **view,
                    "builtin": False,
                    "used_by": jobs_using(db_session, connector.name),
                }
            )
    if as_json:
        click.echo(json.dumps(documents, indent=2))
        return
    rows = [("NAME", "KIND", "USED BY", "DESCRIPTION")]
    for document in documents:
        used_by = ", ".join(document["used_by"]) or "-"
        rows.append((document["name"], document["kind"], used_by, document["description"]))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@connectors.command("test")
@click.argument("name")
def test_command(name: str) -> None:
    """Try a connector's connection: exit 0 with what worked, else 1 with the reason."""
    from app.cli import EXIT_BAD_INPUT, EXIT_FAILED, fail
    from app.connectors import DEFAULT_CONNECTOR, get_connector_kind
    from app.connectors.base import ConnectorTestFailed
    from app.connectors.store import load_connector
    from app.crypto import vault

    with _app_session() as (app, db_session):
        if name == DEFAULT_CONNECTOR:
            url = app.config["NOMAFLOW"].database_url
            kind_name, values = "sql", {"url": url}
            secrets = [sa.make_url(url).password]
        else:
            try:
                found = load_connector(db_session, vault(app), name)
            except LookupError as error:
                fail(f"{error} (`nomaflow connectors list` shows them)", EXIT_BAD_INPUT)
            except ValueError as error:
                fail(f"connector {name}: {error}", EXIT_BAD_INPUT)
            kind_name, values = found.kind, found.values
            secrets = [values.get(field) for field in get_connector_kind(kind_name).secret_fields]
    kind = get_connector_kind(kind_name)
    started = time.monotonic()
    try:
        message = kind.test(values)
    except ConnectorTestFailed as error:
        fail(f"{name}: {_masked(str(error), secrets)}", EXIT_FAILED)
    except Exception as error:  # a driver's own exception: still one line, still exit 1
        fail(f"{name}: {_masked(f'{type(error).__name__}: {error}', secrets)}", EXIT_FAILED)
    elapsed = time.monotonic() - started
    click.echo(f"{name}: {_masked(message, secrets)} ({elapsed:.2f} s)")


def _masked(message: str, secrets: list[Any]) -> str:
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(secret, MASK)
    return message


@click.group()
def keys() -> None:
    """Manage the keys that encrypt stored secrets."""


@keys.command("rotate")
def rotate_command() -> None:
    """Put a new key first and re-encrypt every stored secret with it, in one transaction.

    The old keys stay (after the new one), so older exports and backups still open.
    """
    from app.cli import EXIT_FAILED, EXIT_NO_DATABASE, fail, settings_or_exit
    from app.db import Database
    from app.startup import unreachable_message

    settings = settings_or_exit()
    source = _key_source(settings.instance_path)
    new_key = Fernet.generate_key().decode()
    all_keys = (new_key, *settings.encryption_keys)
    fernet = MultiFernet([Fernet(key) for key in all_keys])
    database = Database(settings.database_url)
    try:
        with database.session_scope() as db_session:
            counts = reencrypt_secrets(db_session, fernet)
            _record_rotation(db_session, counts, source)
            # the key is kept before the commit: sealed values never exist without their key
            if source == "file":
                _write_keys_file(settings.instance_path / "encryption_keys", all_keys)
            else:
                _tell_where_to_put(new_key, source)
    except UnreadableSecret as error:
        fail(f"{error}; nothing was re-encrypted and the keys are unchanged", EXIT_FAILED)
    except sa.exc.OperationalError as error:
        fail(unreachable_message(settings.database_url, error), EXIT_NO_DATABASE)
    finally:
        database.dispose()
    if source == "file":
        where = settings.instance_path / "encryption_keys"
        click.echo(f"new key written first in {where} ({len(all_keys)} keys, newest first)")
    click.echo(
        f"re-encrypted {counts['connectors']} connectors, "
        f"{counts['variables']} secret variables, {counts['runs']} runs"
    )
    click.echo("restart every Nomaflow process so it reads the new key")


class UnreadableSecret(Exception):
    """A stored value none of the keys opens; the message says which."""


def reencrypt_secrets(db: Session, fernet: MultiFernet) -> dict[str, int]:
    """Seal every stored secret again with the first key; return counts by table.

    MultiFernet.rotate: any key opens, the first key seals, the original timestamp stays.
    """
    from app.models import Connector, Run, Variable

    def rotate(token: str, what: str) -> str:
        try:
            return fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UnreadableSecret(f"cannot decrypt {what}: none of the keys opens it") from None

    counts = {"connectors": 0, "variables": 0, "runs": 0}
    query = sa.select(Connector).where(Connector.secrets_sealed.is_not(None))
    for connector in db.scalars(query):
        connector.secrets_sealed = rotate(connector.secrets_sealed, f"connector {connector.name}")
        counts["connectors"] += 1
    for variable in db.scalars(sa.select(Variable).where(Variable.secret.is_(True))):
        variable.value = rotate(variable.value, f"variable {variable.name}")
        counts["variables"] += 1
    after = 0
    while True:  # keyset batches: never the whole history in memory
        rows = db.execute(
            sa.select(Run.id, Run.params_sealed)
            .where(Run.params_sealed.is_not(None), Run.id > after)
            .order_by(Run.id)
            .limit(RUN_BATCH)
        ).all()
        if not rows:
            break
        changes = [{"id": id_, "params_sealed": rotate(token, f"run {id_}")} for id_, token in rows]
        db.execute(sa.update(Run), changes)
        counts["runs"] += len(rows)
        after = rows[-1].id
    db.flush()
    return counts


def _record_rotation(db: Session, counts: dict[str, int], source: str) -> None:
    from app.audit import record_event

    record_event(
        db, "keys.rotate", username="system", target_type="keys", detail={**counts, "keys": source}
    )


def _key_source(instance_path: Path) -> str:
    """Where the keys come from, as config.py reads them: environment, config file, or file."""
    import tomllib

    if os.environ.get("NOMAFLOW_ENCRYPTION_KEYS"):
        return "environment"
    config_file = instance_path / "nomaflow.toml"
    if config_file.exists():
        with config_file.open("rb") as handle:
            if tomllib.load(handle).get("encryption_keys"):
                return "config"
    return "file"


def _write_keys_file(path: Path, all_keys: tuple[str, ...]) -> None:
    """Replace the keys file at once (mode 0600): a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(all_keys) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _tell_where_to_put(new_key: str, source: str) -> None:
    where = (
        "NOMAFLOW_ENCRYPTION_KEYS"
        if source == "environment"
        else "encryption_keys in nomaflow.toml"
    )
    click.echo(f"new key (stored nowhere yet, keep it now): {new_key}")
    click.echo(
        f"put it FIRST in {where}, comma-separated before the current keys, for every "
        "Nomaflow process: the secrets are now sealed with it"
    )
