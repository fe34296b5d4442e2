"""Settings → Variables: named values and secrets for templates; secrets are write-only."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.crypto import vault
from app.permissions import CONNECTOR_EDIT, CONNECTOR_VIEW
from app.variables import (
    VariableError,
    delete_variable,
    get_variable,
    list_variables,
    set_variable,
)

bp = Blueprint("variables", __name__, url_prefix="/settings/variables")


@bp.get("")
@requires(CONNECTOR_VIEW)
def index():
    """List variables: plain values shown, secrets only as set."""
    return _index_page()


@bp.post("")
@requires(CONNECTOR_EDIT)
def create():
    """Add a variable, or change the one of that name."""
    return _save(request.form.get("name", "").strip(), new=True)


@bp.get("/<name>/edit")
@requires(CONNECTOR_EDIT)
def edit(name: str):
    """Change a variable's value or whether it is secret."""
    variable = get_variable(db.session(), name) or abort(404)
    form = {"name": variable.name, "value": variable.value or "", "secret": variable.secret}
    return render_template("variables/edit.html", variable=variable, form=form, errors={})


@bp.post("/<name>/edit")
@requires(CONNECTOR_EDIT)
def update(name: str):
    """Save a variable; a secret's value left empty is kept."""
    get_variable(db.session(), name) or abort(404)
    return _save(name, new=False)


@bp.post("/<name>/delete")
@requires(CONNECTOR_EDIT)
def delete(name: str):
    """Delete a variable."""
    db_session = db.session()
    try:
        delete_variable(db_session, name, user=current_user, ip=client_ip())
    except VariableError:
        abort(404)
    db_session.commit()
    flash(f"Variable {name} deleted.", "success")
    return redirect(url_for("variables.index"))


def _save(name: str, new: bool):
    db_session = db.session()
    secret = request.form.get("secret") == "true"
    value = request.form.get("value", "")
    try:
        _, outcome = set_variable(
            db_session,
            vault(),
            name,
            value,
            secret=secret,
            user=current_user,
            ip=client_ip(),
        )
    except VariableError as error:
        db_session.rollback()
        form = {"name": name, "value": "" if secret else value, "secret": secret}
        errors = error.fields or {"value": error.message}
        if new:
            return _index_page(form=form, errors=errors), 422
        variable = get_variable(db_session, name)
        page = render_template("variables/edit.html", variable=variable, form=form, errors=errors)
        return page, 422
    db_session.commit()
    flash(f"Variable {name} {'saved' if outcome == 'updated' else outcome}.", "success")
    return redirect(url_for("variables.index"))


def _index_page(form=None, errors=None):
    return render_template(
        "variables/index.html",
        variables=list_variables(db.session()),
        can_edit=current_user.can(CONNECTOR_EDIT),
        form=form or {"name": "", "value": "", "secret": False},
        errors=errors or {},
    )
