"""The connector store: secrets sealed apart and write-only, audit events, jobs that use one."""

import pytest
import sqlalchemy as sa

from app.connectors.store import (
    ConnectorError,
    delete_connector,
    export_connector,
    jobs_using,
    load_connector,
    public_view,
    save_connector,
)
from app.db import get_database
from app.models import AuditEvent, Connector, User
from tests.conftest import new_vault
from tests.engine_helpers import make_job

SECRET = "s3cret-Value!"


def events(db, target):
    query = sa.select(AuditEvent).where(AuditEvent.target_id == target).order_by(AuditEvent.id)
    return [(e.action, e.username, e.detail) for e in db.scalars(query)]


def raw_row(db, name) -> str:
    """Every column of the stored row as text, the way someone with the database sees it."""
    row = db.execute(sa.text("SELECT * FROM connectors WHERE name = :n"), {"n": name}).one()
    return " ".join(str(value) for value in row)


def test_save_seals_secrets_apart_and_audits_who_changed_what(db, keys):
    eddie = db.scalar(sa.select(User).where(User.username == "eddie"))
    values = {"host": "smtp.example.org", "sender": "n@example.org", "username": "u"}
    connector, outcome = save_connector(
        db, keys, "mail", "smtp", {**values, "password": SECRET}, user=eddie, ip="10.0.0.9"
    )
    assert outcome == "created"
    assert connector.config == values
    assert SECRET not in raw_row(db, "mail")
    assert load_connector(db, keys, "mail").values["password"] == SECRET
    assert load_connector(db, keys, "mail").values["port"] == 587  # the kind's default

    assert save_connector(db, keys, "mail", "smtp", values, user=eddie)[1] == "unchanged"
    assert save_connector(db, keys, "mail", "smtp", {**values, "port": 25}, user=eddie)[1] == (
        "updated"
    )
    assert load_connector(db, keys, "mail").values["password"] == SECRET  # empty keeps it
    save_connector(db, keys, "mail", "smtp", values, clear_secrets=("password",), user=eddie)
    assert "password" not in load_connector(db, keys, "mail").values
    assert events(db, "mail") == [
        ("connector.create", "eddie", {"kind": "smtp", "secrets_changed": ["password"]}),
        ("connector.update", "eddie", {"kind": "smtp", "secrets_changed": []}),
        ("connector.update", "eddie", {"kind": "smtp", "secrets_changed": ["password"]}),
    ]
    assert db.scalar(sa.select(AuditEvent.ip).where(AuditEvent.target_id == "mail")) == "10.0.0.9"


def test_a_password_written_in_a_sql_url_is_moved_out_of_it(db, keys):
    url = f"postgresql+psycopg://etl:{SECRET}@db1:5432/ops"
    connector, _ = save_connector(db, keys, "ops", "sql", {"url": url})
    assert connector.config["url"] == "postgresql+psycopg://etl@db1:5432/ops"
    assert SECRET not in raw_row(db, "ops")
    assert load_connector(db, keys, "ops").values["password"] == SECRET


def test_public_view_tells_only_whether_a_secret_is_set(db, keys):
    connector, _ = save_connector(
        db, keys, "api", "http", {"base_url": "https://x.org", "auth": "bearer", "token": SECRET}
    )
    view = public_view(keys, connector)
    assert view == {
        "name": "api",
        "kind": "http",
        "description": "",
        "values": {"base_url": "https://x.org", "auth": "bearer"},
        "secrets": {"client_secret": False, "password": False, "token": True},
    }
    assert SECRET not in str(view)


def test_bad_names_kinds_and_values_are_refused_by_field(db, keys):
    cases = [
        (("bad name", "sql", {"url": "sqlite://"}), "name"),
        (("default", "sql", {"url": "sqlite://"}), "name"),
        (("x", "ftp", {}), "kind"),
        (("x", "sql", {}), "url"),
        (("x", "sql", {"url": "sqlite://", "pool_size": "5"}), "pool_size"),
        (("x", "smtp", {"host": "h", "sender": "not-an-address"}), "sender"),
        (("x", "http", {"base_url": "https://x.org", "auth": "bearer"}), "token"),
        (("x", "ldap", {"url": "ldap://dc1", "shoe_size": 3}), "shoe_size"),
    ]
    for args, field in cases:
        with pytest.raises(ConnectorError) as raised:
            save_connector(db, keys, *args)
        assert field in raised.value.fields, (args, raised.value.fields)
    assert db.scalar(sa.select(sa.func.count()).select_from(Connector)) == 0


def test_a_kind_is_fixed_once_saved(db, keys):
    save_connector(db, keys, "ops", "sql", {"url": "sqlite://"})
    with pytest.raises(ConnectorError, match="ops is a sql connector"):
        save_connector(db, keys, "ops", "smtp", {"host": "h", "sender": "a@b.org"})


def test_delete_is_refused_while_a_job_uses_the_connector(app, keys):
    make_job(app, "fetch", steps=[{"name": "get", "type": "http", "connector": "api", "url": "/"}])
    with get_database(app).session_scope() as db:
        save_connector(db, keys, "api", "http", {"base_url": "https://x.org"})
        save_connector(db, keys, "spare", "http", {"base_url": "https://y.org"})
        assert jobs_using(db, "api") == ["fetch"] and jobs_using(db, "spare") == []
        with pytest.raises(ConnectorError, match="api is used by fetch; change those jobs first"):
            delete_connector(db, "api")
        delete_connector(db, "spare")
        with pytest.raises(ConnectorError, match="no connector 'spare'"):
            delete_connector(db, "spare")
        assert [action for action, *_ in events(db, "spare")] == [
            "connector.create",
            "connector.delete",
        ]


def test_an_export_token_opens_only_with_the_same_keys(db, keys):
    connector, _ = save_connector(
        db,
        keys,
        "mail",
        "smtp",
        {"host": "h", "sender": "a@b.org", "username": "u", "password": SECRET},
    )
    table = export_connector(keys, connector)
    assert table["password"].startswith("enc:") and SECRET not in str(table)
    fields = {k: v for k, v in table.items() if k not in ("name", "kind")}
    assert save_connector(db, keys, "mail", "smtp", fields)[1] == "unchanged"
    stranger = new_vault()
    with pytest.raises(ConnectorError) as raised:
        save_connector(db, stranger, "copy", "smtp", fields)
    assert raised.value.fields == {
        "password": "cannot decrypt a stored secret: NOMAFLOW_ENCRYPTION_KEYS lacks the key it "
        "was sealed with"
    }
