"""Connectors pages: list, create and edit from the kind's field schema, delete, Test connection.

Secrets are write-only: a page says whether one is set, never what it is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.connectors import CONNECTOR_KINDS, DEFAULT_CONNECTOR, get_connector_kind
from app.connectors.base import ConnectorKind, ConnectorTestFailed, Field
from app.connectors.store import (
    ConnectorError,
    delete_connector,
    jobs_using,
    load_connector,
    public_view,
    save_connector,
)
from app.crypto import vault
from app.models import Connector
from app.permissions import CONNECTOR_EDIT, CONNECTOR_VIEW

bp = Blueprint("connectors", __name__)
TEST_GRACE_SECONDS = 2  # on top of the kind's own timeout before the page stops waiting
MASK = "•••"


@dataclass
class TestOutcome:
    ok: bool
    message: str


@bp.get("/connectors")
@requires(CONNECTOR_VIEW)
def index():
    """List the connectors with what jobs use them; ``default`` is listed, read-only."""
    db_session = db.session()
    rows = []
    for connector in db_session.scalars(sa.select(Connector).order_by(Connector.name)):
        try:
            view, problem = public_view(vault(), connector), None
        except (ValueError, LookupError) as error:  # other keys, or a kind gone: say so
            view = {"values": connector.config, "secrets": {}}
            problem = str(error)
        rows.append(
            {
                "id": connector.id,
                "name": connector.name,
                "kind": connector.kind,
                "label": _kind_label(connector.kind),
                "available": connector.kind in CONNECTOR_KINDS,
                "description": connector.description,
                "values": view["values"],
                "secrets": view["secrets"],
                "problem": problem,
                "used_by": jobs_using(db_session, connector.name),
            }
        )
    return render_template(
        "connectors/index.html",
        connectors=rows,
        default_used_by=jobs_using(db_session, DEFAULT_CONNECTOR),
        can_edit=current_user.can(CONNECTOR_EDIT),
    )


@bp.get("/connectors/new")
@requires(CONNECTOR_EDIT)
def new():
    """Choose a kind, then fill in the form drawn from its fields."""
    kind = request.args.get("kind")
    if kind is None:
        return render_template("connectors/choose_kind.html", kinds=CONNECTOR_KINDS.values())
    connector_kind = CONNECTOR_KINDS.get(kind) or abort(404)
    return _form_page(connector_kind, None, form=_initial_form(connector_kind))


@bp.post("/connectors/new")
@requires(CONNECTOR_EDIT)
def create():
    """Create a connector; 422 with the problems next to their fields."""
    connector_kind = CONNECTOR_KINDS.get(request.form.get("kind", "")) or abort(400)
    return _save(connector_kind, None)


@bp.get("/connectors/<name>/edit")
@requires(CONNECTOR_EDIT)
def edit(name: str):
    """Edit a connector: plain values shown, secrets only as set or not."""
    connector = _stored(name)
    kind = get_connector_kind(connector.kind)
    form = {
        **_initial_form(kind),  # a value never set shows its default
        "name": connector.name,
        "description": connector.description,
        **{key: _as_text(value) for key, value in connector.config.items()},
    }
    return _form_page(kind, connector, form=form, secrets=_secret_status(connector))


@bp.post("/connectors/<name>/edit")
@requires(CONNECTOR_EDIT)
def update(name: str):
    """Save a connector; a secret left empty keeps the stored one, "clear" removes it."""
    connector = _stored(name)
    return _save(get_connector_kind(connector.kind), connector)


@bp.get("/connectors/<name>/delete")
@requires(CONNECTOR_EDIT)
def confirm_delete(name: str):
    """Ask before deleting; say at once when jobs still use the connector."""
    connector = _stored(name, usable=False)
    used_by = jobs_using(db.session(), name)
    return render_template("connectors/delete.html", connector=connector, used_by=used_by)


@bp.post("/connectors/<name>/delete")
@requires(CONNECTOR_EDIT)
def delete(name: str):
    """Delete a connector no job uses; 409 naming the jobs otherwise."""
    connector = _stored(name, usable=False)
    db_session = db.session()
    try:
        delete_connector(db_session, name, user=current_user, ip=client_ip())
    except ConnectorError as error:
        db_session.rollback()
        used_by = jobs_using(db_session, name)
        page = render_template(
            "connectors/delete.html", connector=connector, used_by=used_by, error=error.message
        )
        return page, 409
    db_session.commit()
    flash(f"Connector {name} deleted.", "success")
    return redirect(url_for("connectors.index"))


@bp.post("/connectors/<name>/test")
@requires(CONNECTOR_EDIT)
def test(name: str):
    """Test a stored connector (``default``: the app's database); answer with the result."""
    if name == DEFAULT_CONNECTOR:
        url = _app_database_url()
        outcome = test_connection(get_connector_kind("sql"), {"url": url})
        outcome = _masked(outcome, [sa.make_url(url).password])
        target = "connector-default-test"
    else:
        connector = _stored(name)
        try:
            found = load_connector(db.session(), vault(), name)
        except (ValueError, LookupError) as error:
            outcome = TestOutcome(False, str(error))
        else:
            outcome = test_connection(get_connector_kind(found.kind), found.values)
        target = f"connector-{connector.id}-test"
    return _test_result(outcome, target, name)


@bp.post("/connectors/test")
@requires(CONNECTOR_EDIT)
def test_form():
    """Test the values of the form as they are (stored secrets fill the empty secret fields)."""
    original = request.form.get("original")
    stored = _stored(original) if original else None
    # an edited connector keeps its kind: its secrets never go to a test of another kind
    kind_name = stored.kind if stored else request.form.get("kind", "")
    connector_kind = CONNECTOR_KINDS.get(kind_name) or abort(400)
    values, cleared, problems = _read_form(connector_kind)
    if stored:
        try:
            known = load_connector(db.session(), vault(), stored.name).values
        except ValueError as error:
            return _test_result(TestOutcome(False, str(error)), "connector-test", original)
        for secret in connector_kind.secret_fields - set(cleared):
            if values.get(secret) in (None, "") and secret in known:
                values[secret] = known[secret]
    values = {key: value for key, value in values.items() if value not in (None, "")}
    problems |= connector_kind.validate(values)
    if problems:
        listed = "; ".join(f"{field}: {problem}" for field, problem in problems.items())
        outcome = TestOutcome(False, f"not tested: fix the form first ({listed})")
    else:
        outcome = test_connection(connector_kind, connector_kind.with_defaults(values))
    return _test_result(outcome, "connector-test", request.form.get("name", ""))


def test_connection(kind: ConnectorKind, values: dict[str, Any]) -> TestOutcome:
    """Run the kind's test, waiting no longer than its timeout (and a little grace).

    The kinds bound their own work, but a name lookup or a TLS handshake may not honour a
    timeout; the page must answer anyway, so the test runs on a thread we stop waiting for.
    """
    seconds = int(values.get("timeout_seconds") or values.get("connect_timeout") or 10)
    answer: list[TestOutcome] = []

    def attempt() -> None:
        try:
            answer.append(TestOutcome(True, kind.test(values)))
        except ConnectorTestFailed as error:
            answer.append(TestOutcome(False, str(error)))
        except Exception as error:  # a bug or a missing driver: show it rather than a 500
            answer.append(TestOutcome(False, f"{type(error).__name__}: {error}"))

    worker = threading.Thread(target=attempt, name="connector-test", daemon=True)
    worker.start()
    worker.join(seconds + TEST_GRACE_SECONDS)
    if not answer:
        return TestOutcome(False, f"no answer within {seconds + TEST_GRACE_SECONDS} seconds")
    return _masked(answer[0], [values.get(name) for name in kind.secret_fields])


def _masked(outcome: TestOutcome, secrets: list[Any]) -> TestOutcome:
    """Drop any secret a driver might echo in its message (the page must never show one)."""
    message = outcome.message
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(secret, MASK)
    return TestOutcome(outcome.ok, message)


def _test_result(outcome: TestOutcome, target: str, name: str) -> str:
    return render_template(
        "connectors/_test_result.html", outcome=outcome, target=target, name=name
    )


def _save(connector_kind: ConnectorKind, connector: Connector | None):
    db_session = db.session()
    values, cleared, problems = _read_form(connector_kind)
    name = connector.name if connector else request.form.get("name", "").strip()
    description = request.form.get("description", "").strip()
    message = None
    if connector is None and _exists(name):
        problems["name"] = f"a connector named {name} already exists"
    if not problems:
        try:
            _, outcome = save_connector(
                db_session,
                vault(),
                name,
                connector_kind.kind,
                values,
                description=description,
                clear_secrets=tuple(cleared),
                user=current_user,
                ip=client_ip(),
            )
        except ValueError as error:  # ConnectorError, or stored secrets these keys cannot open
            db_session.rollback()
            problems = dict(getattr(error, "fields", {}))
            message = getattr(error, "message", str(error))
        else:
            db_session.commit()
            words = {"created": "created", "updated": "saved", "unchanged": "unchanged"}
            flash(f"Connector {name} {words[outcome]}.", "success")
            return redirect(url_for("connectors.index"))
    secret_fields = connector_kind.secret_fields
    form = {key: value for key, value in request.form.items() if key not in secret_fields}
    secrets = _secret_status(connector) if connector else {}
    page = _form_page(
        connector_kind,
        connector,
        form=form,
        secrets=secrets,
        errors=problems,
        message=message or "Fix the problems marked below.",
    )
    return page, 422


def _read_form(kind: ConnectorKind) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Turn the form into values by the kind's field types; return values, cleared, problems."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for f in kind.fields:
        raw = request.form.get(f.name, "")
        try:
            values[f.name] = _parse(f, raw)
        except ValueError as error:
            problems[f.name] = str(error)
    cleared = [name for name in request.form.getlist("clear") if name in kind.secret_fields]
    return values, cleared, problems


def _parse(f: Field, raw: str) -> Any:
    if f.type == "bool":
        return raw == "true"  # every bool is drawn as a checkbox: absent means unchecked
    if f.secret:
        return raw or None  # never stripped: a password may start or end with a space
    text = raw.strip()
    if text == "":
        return None
    if f.type == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if f.type == "table":
        return _parse_table(text)
    if f.type == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _parse_table(text: str) -> dict[str, str]:
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sign, value = line.partition("=")
        if not sign or not key.strip():
            raise ValueError(f"line {number}: expected name=value")
        table[key.strip()] = value.strip()
    return table


def _as_text(value: Any) -> Any:
    """A stored value as its form field shows it (bools stay bools for the checkbox)."""
    if isinstance(value, dict):
        return "\n".join(f"{key}={inner}" for key, inner in value.items())
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, bool) or value is None:
        return value
    return str(value)


def _initial_form(kind: ConnectorKind) -> dict[str, Any]:
    return {f.name: _as_text(f.default) for f in kind.fields if f.type in ("bool", "choice")}


def _form_page(kind, connector, form, secrets=None, errors=None, message=None):
    fields = [
        {
            "field": f,
            "value": form.get(f.name),
            "checked": _checked(form.get(f.name)),
            "secret_set": bool((secrets or {}).get(f.name)),
        }
        for f in kind.fields
    ]
    return render_template(
        "connectors/form.html",
        kind=kind,
        connector=connector,
        form=form,
        fields=fields,
        errors=errors or {},
        message=message,
    )


def _checked(value: Any) -> bool:
    return value is True or value == "true"


def _secret_status(connector: Connector) -> dict[str, bool]:
    try:
        return public_view(vault(), connector)["secrets"]
    except ValueError:
        return {}


def _stored(name: str, usable: bool = True) -> Connector:
    if name == DEFAULT_CONNECTOR:
        abort(409, description="default is the app's own database: it cannot be changed here.")
    connector = db.session().scalar(sa.select(Connector).where(Connector.name == name))
    if connector is None:
        abort(404, description=f"There is no connector named {name!r}.")
    if usable and connector.kind not in CONNECTOR_KINDS:  # it can still be deleted
        abort(409, description=f"{name} is a {connector.kind} connector, a kind unavailable here.")
    return connector


def _exists(name: str) -> bool:
    query = sa.select(Connector.id).where(Connector.name == name)
    return db.session().scalar(query) is not None


def _kind_label(kind: str) -> str:
    found = CONNECTOR_KINDS.get(kind)
    return found.label if found else f"{kind} (unavailable)"


def _app_database_url() -> str:
    from flask import current_app

    return current_app.config["NOMAFLOW"].database_url
