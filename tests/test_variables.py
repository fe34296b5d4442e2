"""Variables: plain values and write-only secrets, in the store and on Settings → Variables."""

import pytest
import sqlalchemy as sa

from app.db import get_database
from app.models import AuditEvent, User, Variable
from app.variables import (
    VariableError,
    delete_variable,
    export_variables,
    list_variables,
    set_variable,
)
from tests.conftest import csrf_token, new_vault

SECRET = "xoxb-never-shown-4711"


def stored(db, name) -> Variable:
    return db.scalar(sa.select(Variable).where(Variable.name == name))


def test_a_secret_is_sealed_and_never_listed(db, keys):
    ada = db.scalar(sa.select(User).where(User.username == "ada"))
    assert set_variable(db, keys, "REGION", "eu-west-1", user=ada)[1] == "created"
    assert set_variable(db, keys, "SLACK", SECRET, secret=True, user=ada, ip="10.1.1.1")[1] == (
        "created"
    )
    row = stored(db, "SLACK")
    assert SECRET not in row.value and keys.unseal(row.value) == SECRET  # what runs read
    listed = {v.name: (v.secret, v.value) for v in list_variables(db)}
    assert listed == {"REGION": (False, "eu-west-1"), "SLACK": (True, None)}
    events = db.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.action, e.username, e.target_id, e.detail) for e in events] == [
        ("variable.create", "ada", "REGION", {"secret": False, "value_changed": True}),
        ("variable.create", "ada", "SLACK", {"secret": True, "value_changed": True}),
    ]
    assert SECRET not in str([e.detail for e in events])


def test_an_empty_secret_keeps_its_value_and_a_secret_turns_plain_only_with_a_new_one(db, keys):
    set_variable(db, keys, "TOKEN", SECRET, secret=True)
    assert set_variable(db, keys, "TOKEN", "", secret=True)[1] == "unchanged"
    assert set_variable(db, keys, "TOKEN", SECRET, secret=True)[1] == "unchanged"
    assert keys.unseal(stored(db, "TOKEN").value) == SECRET
    with pytest.raises(VariableError) as raised:
        set_variable(db, keys, "TOKEN", "", secret=False)
    assert "cannot turn plain" in raised.value.fields["value"]
    assert set_variable(db, keys, "TOKEN", "public", secret=False)[1] == "updated"
    assert stored(db, "TOKEN").value == "public"

    set_variable(db, keys, "HOST", "db1")
    assert set_variable(db, keys, "HOST", "", secret=True)[1] == "updated"  # sealed, kept
    assert keys.unseal(stored(db, "HOST").value) == "db1"
    with pytest.raises(VariableError, match="value: required"):
        set_variable(db, keys, "NEW_SECRET", "", secret=True)


def test_names_are_template_identifiers(db, keys):
    for bad in ("1ST", "has-dash", "with space", "", "x" * 101):
        with pytest.raises(VariableError) as raised:
            set_variable(db, keys, bad, "v")
        assert "name" in raised.value.fields
    set_variable(db, keys, "_ok_2", "v")
    assert [v.name for v in list_variables(db)] == ["_ok_2"]


def test_export_writes_enc_tokens_that_only_the_same_keys_open(db, keys):
    set_variable(db, keys, "PLAIN", "p")
    set_variable(db, keys, "SECRET", SECRET, secret=True)
    tables = export_variables(db, keys)
    assert tables[0] == {"name": "PLAIN", "value": "p"}
    token = tables[1]["value"]
    assert tables[1]["secret"] is True and token.startswith("enc:") and SECRET not in token
    assert set_variable(db, keys, "SECRET", token, secret=True)[1] == "unchanged"
    assert set_variable(db, keys, "COPY", token, secret=True)[1] == "created"
    assert keys.unseal(stored(db, "COPY").value) == SECRET
    with pytest.raises(VariableError, match="add secret = true"):
        set_variable(db, keys, "PLAIN", token)
    stranger = new_vault()
    with pytest.raises(VariableError) as raised:
        set_variable(db, stranger, "OTHER", token, secret=True)
    assert raised.value.fields["value"].startswith("cannot decrypt a stored secret")
    assert export_variables(db, keys, {"PLAIN"}) == [{"name": "PLAIN", "value": "p"}]


def test_delete(db, keys):
    set_variable(db, keys, "GONE", "x")
    delete_variable(db, "GONE")
    assert stored(db, "GONE") is None
    with pytest.raises(VariableError, match="no variable 'GONE'"):
        delete_variable(db, "GONE")
    actions = db.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["variable.create", "variable.delete"]


# Settings → Variables


def eddie_list(app):
    with get_database(app).session_scope() as db_session:
        return list_variables(db_session)


def form(client, **data):
    return {**data, "csrf_token": csrf_token(client, "/settings/variables")}


def test_who_may_see_and_change_variables(app, as_user):
    with app.app_context(), get_database(app).session_scope() as db_session:
        from app.crypto import vault

        set_variable(db_session, vault(app), "REGION", "eu-west-1")
        set_variable(db_session, vault(app), "TOKEN", SECRET, secret=True)
    vera, otto = as_user("vera"), as_user("otto")
    assert vera.get("/settings/variables").status_code == 403
    assert ">Variables</a>" not in vera.get("/jobs").get_data(as_text=True)

    page = otto.get("/settings/variables").get_data(as_text=True)
    assert ">Variables</a>" in page
    assert "<code>eu-west-1</code>" in page and "<code>TOKEN</code>" in page
    assert "set — write-only" in page and SECRET not in page
    assert 'id="variable-form"' not in page and "Edit REGION" not in page
    token = csrf_token(otto, "/settings/variables")
    for path in ("/settings/variables", "/settings/variables/REGION/edit"):
        response = otto.post(path, data={"name": "REGION", "value": "x", "csrf_token": token})
        assert response.status_code == 403
    delete = otto.post("/settings/variables/REGION/delete", data={"csrf_token": token})
    assert delete.status_code == 403
    assert otto.get("/settings/variables/REGION/edit").status_code == 403
    eddie = as_user("eddie")
    no_token = eddie.post("/settings/variables", data={"name": "A", "value": "b"})
    assert no_token.status_code == 400  # CSRF on every state change
    names = [row.name for row in eddie_list(app)]
    assert names == ["REGION", "TOKEN"]


def test_an_editor_adds_edits_and_deletes_variables_and_never_sees_a_secret(app, as_user):
    eddie = as_user("eddie")
    responses = [
        eddie.post("/settings/variables", data=form(eddie, name="REGION", value="eu")),
        eddie.post(
            "/settings/variables", data=form(eddie, name="TOKEN", value=SECRET, secret="true")
        ),
        eddie.get("/settings/variables"),
        eddie.get("/settings/variables/TOKEN/edit"),
        eddie.post(
            "/settings/variables/TOKEN/edit",
            data=form(eddie, name="TOKEN", value="", secret="true"),
        ),
        eddie.post(
            "/settings/variables", data=form(eddie, name="bad name", value=SECRET, secret="true")
        ),
        eddie.post("/settings/variables/TOKEN/edit", data=form(eddie, value="")),
    ]
    statuses = [response.status_code for response in responses]
    assert statuses == [302, 302, 200, 200, 302, 422, 422]
    for response in responses:
        assert SECRET not in response.get_data(as_text=True)
    assert 'id="variable-name-error">use letters, digits and _' in responses[5].get_data(
        as_text=True
    )
    assert "cannot turn plain" in responses[6].get_data(as_text=True)
    edit = responses[3].get_data(as_text=True)
    assert 'type="password" value=""' in edit and "set — leave empty to keep" in edit

    with app.app_context(), get_database(app).session_scope() as db_session:
        from app.crypto import vault

        assert vault(app).unseal(stored(db_session, "TOKEN").value) == SECRET  # kept
        events = db_session.scalars(sa.select(AuditEvent.username)).all()
        assert set(events) == {"eddie"}

    edit = eddie.get("/settings/variables/REGION/edit").get_data(as_text=True)
    assert 'value="eu"' in edit
    saved = eddie.post("/settings/variables/REGION/edit", data=form(eddie, value="us"))
    assert saved.status_code == 302
    assert "<code>us</code>" in eddie.get("/settings/variables").get_data(as_text=True)
    deleted = eddie.post("/settings/variables/REGION/delete", data=form(eddie))
    assert deleted.status_code == 302
    page = eddie.get("/settings/variables").get_data(as_text=True)
    assert "Variable REGION deleted." in page and "<code>us</code>" not in page
    assert eddie.get("/settings/variables/REGION/edit").status_code == 404
