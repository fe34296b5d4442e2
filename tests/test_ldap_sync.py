"""The ldap_sync step through the engine, against a real slapd, into real databases: the app's
own SQLite ("default"), PostgreSQL and MariaDB; plus the ldap connector's Test connection."""

from __future__ import annotations

import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import render_template
from ldap3 import SUBTREE

from app.connectors import get_connector_kind
from app.connectors.base import ConnectorTestFailed
from app.connectors.ldap_client import bind_failure, decode_value, directory_time
from app.connectors.runtime import Connectors
from app.connectors.store import save_connector
from app.crypto import vault
from app.db import get_database
from app.engine.dispatch import dispatch
from app.engine.service import start_runner, stop_runner
from app.jobspec import validate_job
from app.steps import get_step_type
from app.steps.base import StepCanceled, StepContext, StepTimedOut
from app.steps.ldap_sync import LdapSync
from tests.conftest import service_missing
from tests.engine_helpers import log_messages, make_job, wait_for_run
from tests.slapd_server import (
    SERVICE_DN,
    SERVICE_PASSWORD,
    SIZE_LIMIT,
    SUFFIX,
    SlapdServer,
    SlapdUnavailable,
    free_port,
)

USERS = 30  # three times the server's size limit
USERS_DDL = (
    "CREATE TABLE {table} (username VARCHAR(64) PRIMARY KEY, full_name VARCHAR(100), "
    "email VARCHAR(100) {unique}, active BOOLEAN NOT NULL DEFAULT TRUE)"
)


@pytest.fixture(scope="module")
def slapd():
    with tempfile.TemporaryDirectory(prefix="nomaflow-slapd-") as directory:
        server = SlapdServer(Path(directory))
        try:
            server.start()
        except SlapdUnavailable as error:
            service_missing("slapd (OpenLDAP)", error)
        yield server
        server.stop()


@pytest.fixture
def tree(slapd):
    """30 users, admins = user1 + user2, operators = user3, in a subtree of this test's own."""
    tree = slapd.new_tree()
    tree.add_users(USERS)
    tree.add_group("admins", ["user1", "user2"])
    tree.add_group("operators", ["user3"])
    return tree


@pytest.fixture
def runner(app):
    started = start_runner(app)
    yield started
    stop_runner(app)


@dataclass
class Target:
    connector: str
    engine: sa.Engine
    table: str

    def execute(self, sql: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text(sql.format(table=self.table, unique="")))

    def rows(self, table: str | None = None) -> list[dict]:
        with self.engine.connect() as connection:
            found = connection.execute(sa.text(f"SELECT * FROM {table or self.table}"))
            return [dict(row._mapping) for row in found]

    def users(self) -> dict[str, dict]:
        return {row["username"]: row for row in self.rows()}


@pytest.fixture(params=["default", "postgres", "mariadb"])
def target(request, app):
    """Where the rows go: the app's own SQLite database, or a PostgreSQL / MariaDB connector."""
    table = f"directory_users_{uuid.uuid4().hex[:8]}"
    if request.param == "default":
        yield Target("default", get_database(app).engine, table)
        return
    url = request.getfixturevalue(f"{request.param}_url")
    add_connector(app, "reporting", "sql", url=url)
    engine = sa.create_engine(url)
    yield Target("reporting", engine, table)
    with engine.begin() as connection:
        for name in (table, f"{table}_groups"):
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def add_connector(app, name: str, kind: str, **values) -> None:
    with get_database(app).session_scope() as db:
        save_connector(db, vault(app), name, kind, values)


def add_directory(app, url: str, **values) -> None:
    values = {"bind_dn": SERVICE_DN, "password": SERVICE_PASSWORD, **values}
    add_connector(app, "directory", "ldap", url=url, **values)


def sync_step(base_dn: str, target: Target | None = None, **fields) -> dict:
    """The mirror step of DESIGN §8: inetOrgPerson users into directory_users."""
    step = {
        "name": "mirror",
        "type": "ldap_sync",
        "connector": "directory",
        "base_dn": base_dn,
        "filter": "(objectClass=inetOrgPerson)",
        "scope": "subtree",
        "attributes": ["uid", "cn", "mail", "memberOf"],
        "target": {
            "connector": target.connector if target else "default",
            "table": target.table if target else "directory_users",
            "key": "username",
        },
        "mapping": {"uid": "username", "cn": "full_name", "mail": "email"},
        "deletion": "soft",
        "deletion_column": "active",
    }
    step.update(fields)
    return step


def counts(**given) -> dict[str, int]:
    keys = ("fetched", "created", "updated", "unchanged", "deactivated", "failed")
    return {key: given.get(key, 0) for key in keys}


def run_sync(app, job_id: str = "mirror", params: dict | None = None) -> dict:
    """Run the job to its end; check that no password reached the log or the run document."""
    run = dispatch(get_database(app), vault(app), job_id, "manual", params)
    document = wait_for_run(app, run.id)
    for _, _, message in log_messages(app, run.id):
        assert SERVICE_PASSWORD not in message
    assert SERVICE_PASSWORD not in repr(document)
    return document


def messages(app, run_id: int, level: str | None = None) -> list[str]:
    return [m for _, lvl, m in log_messages(app, run_id) if level in (None, lvl)]


# --- the mirror job ------------------------------------------------------------------------


def test_mirror_job_creates_then_keeps_then_updates_soft_deletes_and_reactivates(
    app, runner, slapd, tree, target
):
    target.execute(USERS_DDL)
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people, target)])

    first = run_sync(app)
    assert first["state"] == "SUCCEEDED", first["reason"]
    assert first["steps"][0]["output"] == counts(fetched=30, created=30)
    users = target.users()
    assert len(users) == 30
    assert {k: users["user7"][k] for k in ("full_name", "email")} == {
        "full_name": "User 7",
        "email": "user7@example.org",
    }
    assert all(bool(row["active"]) for row in users.values())
    summary = (
        f"synced {tree.people} into {target.table}: fetched 30, created 30, updated 0, "
        "unchanged 0, deactivated 0, failed 0"
    )
    assert summary in messages(app, first["id"], "INFO")

    assert run_sync(app)["steps"][0]["output"] == counts(fetched=30, unchanged=30)

    tree.modify_user("user5", mail="robin@example.org", cn="Robin Five")
    tree.delete_user("user7")
    third = run_sync(app)
    assert third["steps"][0]["output"] == counts(fetched=29, updated=1, unchanged=28, deactivated=1)
    users = target.users()
    assert (users["user5"]["full_name"], users["user5"]["email"]) == (
        "Robin Five",
        "robin@example.org",
    )
    assert not users["user7"]["active"]
    assert "deactivated 1 rows gone from the directory: user7" in messages(app, third["id"])

    tree.add_user("user7")  # back in the directory: active again
    fourth = run_sync(app)
    assert fourth["steps"][0]["output"] == counts(fetched=30, updated=1, unchanged=29)
    assert target.users()["user7"]["active"]
    metrics = fourth["steps"][0]["metrics"]
    assert (metrics["fetched"], metrics["updated"], metrics["rows"]) == (30, 1, 30)


def test_hard_deletion_removes_rows_and_memberships_in_created_tables(
    app, runner, slapd, tree, target
):
    groups_table = f"{target.table}_groups"
    add_directory(app, slapd.url)
    step = sync_step(
        tree.people,
        target,
        deletion="hard",
        create=True,
        groups={"table": groups_table, "attribute": "memberOf"},
    )
    del step["deletion_column"]
    make_job(app, "mirror", steps=[step])

    first = run_sync(app)
    assert first["state"] == "SUCCEEDED", first["reason"]
    assert first["steps"][0]["output"] == counts(fetched=30, created=30)
    admins, operators = tree.group_dn("admins"), tree.group_dn("operators")

    def memberships():
        return {(r["username"], r["group_dn"]) for r in target.rows(groups_table)}

    assert memberships() == {("user1", admins), ("user2", admins), ("user3", operators)}
    assert f"memberships in {groups_table}: 3 added, 0 removed" in messages(app, first["id"])

    tree.delete_user("user2")
    tree.set_members("operators", ["user3", "user4"])
    second = run_sync(app)
    assert second["steps"][0]["output"] == counts(fetched=29, unchanged=29, deactivated=1)
    assert "user2" not in target.users()
    assert memberships() == {("user1", admins), ("user3", operators), ("user4", operators)}
    assert "deleted 1 rows gone from the directory: user2" in messages(app, second["id"])

    tree.add_user("user2")
    third = run_sync(app)
    assert third["steps"][0]["output"] == counts(fetched=30, created=1, unchanged=29)
    assert target.users()["user2"]["full_name"] == "User 2"


def test_groups_can_be_stored_by_name(app, runner, slapd, tree):
    add_directory(app, slapd.url)
    groups = {"table": "directory_groups", "value": "name"}
    make_job(app, "mirror", steps=[sync_step(tree.people, create=True, groups=groups)])
    assert run_sync(app)["state"] == "SUCCEEDED"
    with get_database(app).engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT username, group_name FROM directory_groups"))
        assert set(map(tuple, rows)) == {
            ("user1", "admins"),
            ("user2", "admins"),
            ("user3", "operators"),
        }


def test_paged_search_reads_past_the_server_size_limit(app, runner, slapd, tree):
    with slapd.connect(SERVICE_DN, SERVICE_PASSWORD) as plain:  # without paging it stops at 10
        plain.search(tree.people, "(objectClass=inetOrgPerson)", SUBTREE, attributes=["uid"])
        assert plain.result["description"] == "sizeLimitExceeded"
        assert len(plain.entries) == SIZE_LIMIT
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people, paged_size=7, create=True)])
    document = run_sync(app)
    assert document["state"] == "SUCCEEDED", document["reason"]
    assert document["steps"][0]["output"] == counts(fetched=30, created=30)
    assert document["steps"][0]["metrics"]["pages"] == 5  # 7 + 7 + 7 + 7 + 2
    assert "fetched 30 entries in 5 page(s)" in messages(app, document["id"])


def test_filter_is_templated_and_checked_again_once_rendered(app, runner, slapd, tree):
    add_directory(app, slapd.url)
    step = sync_step(
        tree.people, create=True, filter="(&(objectClass=person)(uid={{ params.who }}))"
    )
    make_job(app, "mirror", params=[{"name": "who", "type": "string"}], steps=[step])
    document = run_sync(app, params={"who": "user1*"})
    assert document["steps"][0]["output"]["fetched"] == 11  # user1, user10 .. user19
    document = run_sync(app, params={"who": "x)(y"})
    assert document["state"] == "FAILED"
    assert (
        document["steps"][0]["error"]
        == "filter: not a valid LDAP filter: invalid matching assertion"
    )


# --- failures --------------------------------------------------------------------------------


def test_a_wrong_bind_password_fails_at_once_with_a_clear_message(app, runner, slapd, tree):
    add_directory(app, slapd.url, password="wrong-" + SERVICE_PASSWORD)  # a leak would show
    make_job(app, "mirror", steps=[sync_step(tree.people, create=True)])
    started = time.monotonic()
    document = run_sync(app)
    assert time.monotonic() - started < 5
    assert document["state"] == "FAILED"
    step = document["steps"][0]
    assert (
        step["error"] == f"bind failed: invalid credentials for {SERVICE_DN} (connector directory)"
    )
    assert step["attempts"] == 1
    assert document["reason"] == step["error"]


def test_a_refused_bind_is_not_retried(app, runner, slapd, tree):
    add_directory(app, slapd.url, password="wrong-" + SERVICE_PASSWORD)
    retry = {"attempts": 3, "base_seconds": 0, "max_seconds": 0}
    make_job(app, "mirror", retry=retry, steps=[sync_step(tree.people, create=True)])
    assert run_sync(app)["steps"][0]["attempts"] == 1


def test_an_unreachable_server_fails_naming_the_cause(app, runner):
    url = f"ldap://127.0.0.1:{free_port()}"
    add_directory(app, url)
    make_job(app, "mirror", steps=[sync_step(f"ou=people,{SUFFIX}", create=True)])
    document = run_sync(app)
    assert document["state"] == "FAILED"
    error = document["steps"][0]["error"]
    assert error.startswith(f"{url}: connect failed: ")
    assert "Connection refused" in error


def test_a_missing_base_dn_and_a_missing_table_fail_clearly(app, runner, slapd, tree):
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people)])
    document = run_sync(app)
    assert document["steps"][0]["error"] == (
        "table directory_users does not exist on default (create it, or set create = true)"
    )
    nowhere = f"ou=nowhere,{SUFFIX}"
    make_job(app, "mirror", steps=[sync_step(nowhere, create=True)])
    document = run_sync(app)
    assert document["steps"][0]["error"] == (
        f"search of {nowhere} failed: noSuchObject (the base DN does not exist)"
    )


def test_an_empty_result_never_deactivates_the_whole_table(app, runner, slapd, tree):
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people, create=True)])
    assert run_sync(app)["steps"][0]["output"]["created"] == 30
    make_job(app, "mirror", steps=[sync_step(tree.people, filter="(uid=nobody)")])
    document = run_sync(app)
    assert document["state"] == "FAILED"
    assert document["steps"][0]["error"].startswith(
        "the directory returned no entries; refusing to deactivate all 30 rows"
    )
    with get_database(app).engine.connect() as connection:
        active = connection.execute(sa.text("SELECT COUNT(*) FROM directory_users WHERE active"))
        assert active.scalar_one() == 30


def test_bad_entries_are_logged_by_dn_skipped_and_counted(app, runner, slapd, tree):
    target = Target("default", get_database(app).engine, "directory_users")
    target.execute(USERS_DDL)
    no_uid = tree.add_entry(
        f"cn=No Uid,{tree.people}", ["inetOrgPerson"], cn="No Uid", sn="Uid", mail="n@example.org"
    )
    too_long = tree.add_user("user31", mail="x" * 120 + "@example.org")
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people, target)])
    document = run_sync(app)
    assert document["state"] == "SUCCEEDED"
    assert document["steps"][0]["output"] == counts(fetched=32, created=30, failed=2)
    assert sorted(messages(app, document["id"], "WARNING")) == sorted(
        [
            f"skipped {no_uid}: no uid (the key attribute)",
            f"skipped {too_long}: mail is 132 characters; column email holds 100",
        ]
    )
    assert "user31" not in target.users()


def test_a_row_the_database_refuses_is_skipped_and_the_rest_written(
    app, runner, slapd, tree, target
):
    with target.engine.begin() as connection:
        connection.execute(sa.text(USERS_DDL.format(table=target.table, unique="UNIQUE")))
    twin = tree.add_user("user31", mail="user1@example.org")  # same mail as user1
    add_directory(app, slapd.url)
    make_job(app, "mirror", steps=[sync_step(tree.people, target, paged_size=10)])
    document = run_sync(app)
    assert document["state"] == "SUCCEEDED", document["reason"]
    assert document["steps"][0]["output"] == counts(fetched=31, created=30, failed=1)
    [warning] = messages(app, document["id"], "WARNING")
    users = target.users()
    loser = "user31" if "user1" in users else "user1"
    assert warning.startswith(f"skipped {tree.user_dn(loser)}: insert failed: ")
    assert loser not in users and len(users) == 30
    assert twin == tree.user_dn("user31")


# --- Active Directory specifics ----------------------------------------------------------------


def test_binary_guid_and_sid_become_canonical_text(app, runner, slapd, tree):
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    subs = [int(part) for part in sid.split("-")[3:]]
    raw_sid = bytes([1, len(subs)]) + (5).to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)
    tree.modify_user("user1", objectSid=raw_sid)
    add_directory(app, slapd.url)
    step = sync_step(
        tree.people,
        attributes=[],
        mapping={"uid": "username", "objectGUID": "guid", "objectSid": "sid", "memberOf": "groups"},
        multi={"memberOf": "join"},
        separator="|",
        create=True,
    )
    tree.set_members("operators", ["user1", "user3"])
    make_job(app, "mirror", steps=[step])
    assert run_sync(app)["state"] == "SUCCEEDED"
    with get_database(app).engine.connect() as connection:
        found = connection.execute(sa.text("SELECT * FROM directory_users ORDER BY username"))
        rows = {row.username: row for row in found}
    assert rows["user1"].guid == str(tree.guids["user1"])
    assert rows["user1"].sid == sid
    assert rows["user2"].sid is None
    assert rows["user1"].groups.split("|") == [tree.group_dn("admins"), tree.group_dn("operators")]


def test_directory_values_decode_like_ad_tools_show_them():
    guid = uuid.UUID("e1a57a9c-2d9b-4c6b-9a5e-0123456789ab")
    assert decode_value("objectGUID", guid.bytes_le) == str(guid)
    assert decode_value("someOtherId", b"\xff" * 16) == str(uuid.UUID(bytes=b"\xff" * 16))
    assert decode_value("jpegPhoto", b"\xff\xd8\xff") == "/9j/"
    assert decode_value("userCertificate;binary", b"0\x82") == "MII="
    assert decode_value("cn", "Zoë".encode()) == "Zoë"
    assert directory_time("20240131120000Z").isoformat() == "2024-01-31T12:00:00+00:00"
    assert directory_time("20240131130000.5+0100").isoformat() == "2024-01-31T12:00:00.500000+00:00"
    assert directory_time("133511760000000000").isoformat() == "2024-01-31T12:00:00+00:00"


def test_an_active_directory_bind_refusal_says_why():
    message = "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 775"
    result = {"description": "invalidCredentials", "message": message}
    assert bind_failure(result, SERVICE_DN) == (
        f"bind failed: invalid credentials (account locked out) for {SERVICE_DN}"
    )


# --- abort and timeout between pages ---------------------------------------------------------


class RecordingLog:
    def __init__(self):
        self.lines = []

    def debug(self, message):
        self.lines.append(("DEBUG", message))

    def info(self, message):
        self.lines.append(("INFO", message))

    def warning(self, message):
        self.lines.append(("WARNING", message))

    def error(self, message):
        self.lines.append(("ERROR", message))


def step_context(app, connectors, **fields) -> StepContext:
    values = {
        "run_id": 1,
        "job_id": "mirror",
        "step_name": "mirror",
        "triggered_by": None,
        "params": {},
        "steps": {},
        "log": RecordingLog(),
        "is_cancelled": lambda: False,
        "timeout_seconds": 60,
        "deadline": time.monotonic() + 60,
        "instance_path": app.instance_path,
        "database": get_database(app),
        "connectors": connectors,
        **fields,
    }
    return StepContext(**values)


def test_abort_and_timeout_are_checked_between_pages(app, slapd, tree):
    add_directory(app, slapd.url)
    connectors = Connectors(get_database(app), vault(app))
    step = sync_step(tree.people, paged_size=5, create=True)
    config = {k: v for k, v in step.items() if k not in ("name", "type")}
    asked = []

    def cancelled_after_two_pages():
        asked.append(True)
        return len(asked) > 3  # before the bind, before page 1, before page 2

    ctx = step_context(app, connectors, is_cancelled=cancelled_after_two_pages)
    with pytest.raises(StepCanceled):
        LdapSync().run(config, ctx)
    assert [m for _, m in ctx.log.lines if m.startswith("page ")] == [
        "page 1: 5 entries",
        "page 2: 5 entries",
    ]
    with pytest.raises(StepTimedOut, match="timed out after 1s"):
        LdapSync().run(config, step_context(app, connectors, timeout_seconds=1, deadline=0))
    with get_database(app).engine.connect() as connection:  # nothing was written
        assert connection.execute(sa.text("SELECT COUNT(*) FROM directory_users")).scalar() == 0
    connectors.dispose()


# --- config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("(&(uid=a)(cn=b)", "unbalanced parentheses: 1 '(' not closed"),
        ("(uid=a))", "unbalanced parentheses: ')' at position 8 closes nothing"),
        ("uid=a", "an LDAP filter is wrapped in parentheses, e.g. (uid=a)"),
        ("(uid=a)(cn=b)", "two filters side by side: join them with (&...) or (|...)"),
        ("(=a)", "not a valid LDAP filter: a comparison without an attribute, or an empty"),
        ("(uid)", "not a valid LDAP filter: invalid matching assertion"),
    ],
)
def test_a_filter_syntax_error_is_a_validation_error(bad, problem):
    step = sync_step(f"ou=p,{SUFFIX}", filter=bad)
    spec, errors = validate_job({"id": "mirror", "steps": [step]})
    assert spec is None
    [error] = errors
    assert error.path.endswith("› steps[0] mirror › filter")
    assert error.message.startswith(problem)


def test_validation_names_each_wrong_field():
    step = LdapSync()
    config = {k: v for k, v in sync_step(f"ou=p,{SUFFIX}").items() if k not in ("name", "type")}
    assert step.validate(config) == {}
    wrong = {
        **config,
        "scope": "tree",
        "deletion": "archive",
        "base_dn": "not a dn",
        "paged_size": 0,
        "target": {"connector": "default", "table": "users;drop", "key": "login", "x": 1},
        "mapping": {"uid": "username", "cn": "username"},
        "multi": "all",
        "groups": {"value": "cn"},
    }
    assert step.validate(wrong) == {
        "scope": "expected one of base, one, subtree",
        "deletion": "expected one of none, soft, hard",
        "base_dn": "not a valid DN: 'not a dn'",
        "paged_size": "expected a whole number ≥ 1",
        "target.x": "unknown field (known: connector, table, key)",
        "target.table": "expected a table name (letters, digits, _; schema.table)",
        "target.key": "'login' is not one of the mapped columns (username, username)",
        "mapping": "two attributes map to the same column",
        "multi": "expected one of first, join",
        "groups.table": "required",
        "groups.value": "expected one of dn, name",
    }
    bad_attribute = step.validate({**config, "mapping": {"u id": "username"}})
    assert bad_attribute == {"mapping": 'expected {attribute = "column"} with plain column names'}
    missing = step.validate({})
    assert {k for k, v in missing.items() if v == "required"} == {
        "connector",
        "base_dn",
        "target",
        "mapping",
    }


def test_the_step_is_registered_and_names_its_connectors():
    step = get_step_type("ldap_sync")
    assert isinstance(step, LdapSync)
    config = sync_step(f"ou=p,{SUFFIX}", target=Target("reporting", None, "users"))
    assert step.connector_refs(config) == [
        ("connector", "directory", "ldap"),
        ("target.connector", "reporting", "sql"),
    ]
    assert {f.name for f in step.fields if f.templated} == {"filter"}


def test_the_editor_partial_draws_every_field_escaped(app):
    config = sync_step(f"ou=p,{SUFFIX}", filter="(cn=<script>alert(1)</script>)")
    with app.test_request_context():
        html = render_template(
            "steps/_ldap_sync_editor.html",
            config=config,
            problems={"filter": "bad <b>filter</b>"},
            step_id=3,
        )
    assert '<fieldset id="step-3-ldap-sync"' in html
    assert "<script>" not in html and "<b>" not in html
    assert "(cn=&lt;script&gt;alert(1)&lt;/script&gt;)" in html
    assert "bad &lt;b&gt;filter&lt;/b&gt;" in html
    for field in LdapSync.fields:
        names = (
            [f"config.{field.name}.{k}" for k in ("connector", "table", "key")]
            if field.name == "target"
            else [f"config.{field.name}.table"]
            if field.name == "groups"
            else [f"config.{field.name}"]
        )
        for name in names:
            assert f'name="{name}"' in html, name
    assert "uid = username\ncn = full_name\nmail = email\n" in html


# --- Test connection -------------------------------------------------------------------------


def ldap_values(**values) -> dict:
    given = {"bind_dn": SERVICE_DN, "password": SERVICE_PASSWORD, **values}
    return get_connector_kind("ldap").with_defaults(given)


def test_connection_test_names_the_server_and_its_naming_contexts(slapd):
    kind = get_connector_kind("ldap")
    tail = "(OpenLDAP); naming contexts: dc=example,dc=org; paged results supported"
    assert kind.test(ldap_values(url=slapd.url)) == f"bound as {SERVICE_DN} to {slapd.url} {tail}"
    secure = ldap_values(url=slapd.ldaps_url, ca_bundle=slapd.ca_file)
    assert kind.test(secure) == f"bound as {SERVICE_DN} to {slapd.ldaps_url} {tail}"
    start_tls = ldap_values(url=slapd.url, start_tls=True, ca_bundle=slapd.ca_file)
    assert kind.test(start_tls).startswith(f"bound as {SERVICE_DN} to {slapd.url}")
    anonymous = {"url": f"ldap://127.0.0.1:{free_port()}, {slapd.url}"}  # the first is down
    assert kind.test(anonymous) == f"bound anonymously to {slapd.url} {tail}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "bind failed: invalid credentials for cn=svc,dc=example,dc=org"),
        ("nothing listening", "connect failed: socket connection error while opening: "),
        ("ldaps, unknown CA", "connect failed: socket ssl wrapping error: [SSL: CERTIFICATE_VE"),
        ("StartTLS, unknown CA", "StartTLS failed: wrap socket error: [SSL: CERTIFICATE_VERIFY"),
        ("no such host", "connect failed: cannot resolve no-such-host.invalid: "),
    ],
)
def test_connection_test_failures_name_the_cause_never_the_password(slapd, case, expected):
    values = {
        "wrong password": ldap_values(url=slapd.url, password="wrong-" + SERVICE_PASSWORD),
        "nothing listening": ldap_values(url=f"ldap://127.0.0.1:{free_port()}"),
        "ldaps, unknown CA": ldap_values(url=slapd.ldaps_url),
        "StartTLS, unknown CA": ldap_values(url=slapd.url, start_tls=True),
        "no such host": ldap_values(url="ldap://no-such-host.invalid:389"),
    }[case]
    with pytest.raises(ConnectorTestFailed) as failed:
        get_connector_kind("ldap").test(values)
    assert expected in str(failed.value)
    assert SERVICE_PASSWORD not in str(failed.value)
