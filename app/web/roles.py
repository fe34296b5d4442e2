"""Admin → Roles: list, create, edit (permissions and job tag limit), delete."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.models import Role
from app.permissions import ALL_PERMISSIONS, USER_ADMIN
from app.roles import (
    PERMISSION_HELP,
    RoleError,
    create_role,
    delete_role,
    list_roles,
    parse_tags,
    update_role,
)

bp = Blueprint("roles", __name__, url_prefix="/admin/roles")


@bp.get("")
@requires(USER_ADMIN)
def index():
    """List the roles, and the form to add one."""
    return _index_page()


@bp.post("")
@requires(USER_ADMIN)
def create():
    """Add a custom role."""
    session = db.session()
    form = _form_values()
    try:
        role = create_role(
            session,
            form["name"],
            form["description"],
            form["permissions"],
            parse_tags(form["job_tags"]),
            actor=current_user,
            ip=client_ip(),
        )
    except RoleError as error:
        session.rollback()
        return _index_page(form=form, errors={error.field: error.message}), 422
    session.commit()
    flash(f"Role {role.name} created.", "success")
    return redirect(url_for("roles.index"))


@bp.get("/<int:role_id>")
@requires(USER_ADMIN)
def edit(role_id: int):
    """Show a role's permissions and job tag limit for editing."""
    role = db.session().get(Role, role_id) or abort(404)
    form = {
        "description": role.description,
        "permissions": list(role.permissions),
        "job_tags": ", ".join(role.job_tags or []),
    }
    return _edit_page(role, form, {})


@bp.post("/<int:role_id>")
@requires(USER_ADMIN)
def update(role_id: int):
    """Save a role's description, permissions and job tag limit."""
    session = db.session()
    role = session.get(Role, role_id) or abort(404)
    form = _form_values()
    try:
        changes = update_role(
            session,
            role,
            description=form["description"],
            permissions=form["permissions"],
            job_tags=parse_tags(form["job_tags"]),
            actor=current_user,
            ip=client_ip(),
        )
    except RoleError as error:
        session.rollback()
        return _edit_page(role, form, {error.field: error.message}), 422
    session.commit()
    flash(f"Role {role.name} saved." if changes else f"No changes to {role.name}.", "success")
    return redirect(url_for("roles.index"))


@bp.post("/<int:role_id>/delete")
@requires(USER_ADMIN)
def delete(role_id: int):
    """Delete a custom role no user has (refused with the reason otherwise)."""
    session = db.session()
    role = session.get(Role, role_id) or abort(404)
    name = role.name
    try:
        delete_role(session, role, actor=current_user, ip=client_ip())
    except RoleError as error:
        session.rollback()
        return _index_page(problem=error.message), 409
    session.commit()
    flash(f"Role {name} deleted.", "success")
    return redirect(url_for("roles.index"))


def _form_values() -> dict:
    return {
        "name": request.form.get("name", ""),
        "description": request.form.get("description", ""),
        "permissions": request.form.getlist("permissions"),
        "job_tags": request.form.get("job_tags", ""),
    }


def _index_page(form=None, errors=None, problem=None):
    return render_template(
        "admin/roles.html",
        rows=list_roles(db.session()),
        form=form or {"permissions": []},
        errors=errors or {},
        problem=problem,
        permissions=ALL_PERMISSIONS,
        permission_help=PERMISSION_HELP,
    )


def _edit_page(role, form, errors):
    return render_template(
        "admin/role_edit.html",
        role=role,
        form=form,
        errors=errors,
        permissions=ALL_PERMISSIONS,
        permission_help=PERMISSION_HELP,
    )
