import sqlalchemy as sa
from flask import Blueprint, abort, make_response, render_template, request
from flask_login import current_user

from app import db
from app.audit_search import AuditFilter, action_choices, find_events, known_actions
from app.auth import client_ip, requires
from app.models import User
from app.permissions import USER_ADMIN
from app.run_history import usernames
from app.users import UserError, create_user, role_names, set_password, update_user

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/")
@bp.get("/users")
@requires(USER_ADMIN)
def users():
    """List users with their roles, and the form to add one."""
    return _users_page()


@bp.post("/users")
@requires(USER_ADMIN)
def create():
    """Add a user; a blank password is generated and shown once."""
    db_session = db.session()
    form = {k: request.form.get(k, "") for k in ("username", "display_name", "role", "password")}
    try:
        user, generated = create_user(
            db_session,
            form["username"],
            form["role"],
            form["password"] or None,
            display_name=form["display_name"],
            actor=current_user,
            ip=client_ip(),
        )
    except UserError as error:
        db_session.rollback()
        return _users_page(form=form, errors={error.field: error.message}), 422
    db_session.commit()
    return _users_page(notice=f"User {user.username} created.", password=generated)


@bp.post("/users/<int:user_id>")
@requires(USER_ADMIN)
def update(user_id: int):
    """Change a user's role or active flag; answer with the user's row (htmx) or the page."""
    db_session = db.session()
    user = db_session.get(User, user_id) or abort(404)
    error = None
    try:
        update_user(
            db_session,
            user,
            role_name=request.form.get("role") or None,
            active=_flag(request.form.get("active")),
            actor=current_user,
            ip=client_ip(),
        )
        db_session.commit()
    except UserError as exc:
        db_session.rollback()
        db_session.refresh(user)
        error = exc.message
    status = 422 if error else 200
    if request.headers.get("HX-Request"):
        return render_template(
            "admin/_user_row.html", u=user, roles=role_names(db_session), error=error
        ), status
    return _users_page(
        notice=None if error else f"User {user.username} updated.", row_errors={user.id: error}
    ), status


@bp.post("/users/<int:user_id>/password")
@requires(USER_ADMIN)
def reset_password(user_id: int):
    """Give a user a new generated password, shown once."""
    db_session = db.session()
    user = db_session.get(User, user_id) or abort(404)
    generated = set_password(db_session, user, None, actor=current_user, ip=client_ip())
    db_session.commit()
    return _users_page(notice=f"New password for {user.username}.", password=generated)


@bp.get("/audit")
@requires(USER_ADMIN)
def audit():
    """List audit events newest first, filtered, a keyset page at a time (htmx: results only)."""
    audit_filter, errors = AuditFilter.from_args(request.args)
    before = request.args.get("before", type=int)
    context = {
        "page": find_events(db.session(), audit_filter, before=before),
        "audit_filter": audit_filter,
        "errors": errors,
        "before": before,
    }
    if request.headers.get("HX-Request") and not request.headers.get("HX-History-Restore-Request"):
        response = make_response(render_template("admin/_audit_results.html", **context))
    else:
        actions = action_choices(known_actions(db.session()))
        context["actions"] = actions
        context["usernames"] = usernames(db.session())
        response = make_response(render_template("admin/audit.html", **context))
    response.vary.add("HX-Request")
    return response


def _users_page(form=None, errors=None, notice=None, password=None, row_errors=None):
    db_session = db.session()
    all_users = db_session.scalars(sa.select(User).order_by(User.username)).all()
    return render_template(
        "admin/users.html",
        users=all_users,
        roles=role_names(db_session),
        form=form or {"role": "viewer"},
        errors=errors or {},
        notice=notice,
        password=password,
        row_errors=row_errors or {},
    )


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    return value in ("1", "true", "on", "yes")
