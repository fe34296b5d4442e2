"""Personal API tokens (``/account/tokens``): list, create (shown once), revoke."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.auth import client_ip, requires
from app.permissions import USER_ADMIN
from app.tokens import TokenError, create_token, get_token, list_tokens, revoke_token

bp = Blueprint("tokens", __name__)


@bp.get("/account/tokens")
@requires()
def index():
    """List the user's tokens (an admin sees everyone's)."""
    return _render_page()


@bp.post("/account/tokens")
@requires()
def create():
    """Make a token and show it once."""
    session = db.session()
    try:
        made = create_token(
            session, current_user, request.form.get("name", ""), by=current_user, ip=client_ip()
        )
    except TokenError as error:
        session.rollback()
        return _render_page(errors=error.fields, name=request.form.get("name", "")), 422
    session.commit()
    return _render_page(new_secret=made.secret, new_token=made.token)


@bp.post("/account/tokens/<int:token_id>/revoke")
@requires()
def revoke(token_id: int):
    """Revoke a token at once (an admin may revoke anyone's)."""
    session = db.session()
    token = get_token(session, token_id)
    if token is None or not _may_manage(token):
        abort(404, description="There is no such token.")
    revoke_token(session, token, by=current_user, ip=client_ip())
    session.commit()
    if request.headers.get("HX-Request"):
        return render_template("tokens/_row.html", token=token, show_owner=_sees_all())
    flash(f"Revoked token {token.prefix}…", "success")
    return redirect(url_for("tokens.index"))


def _sees_all() -> bool:
    return current_user.can(USER_ADMIN)


def _may_manage(token) -> bool:
    return token.user_id == current_user.id or _sees_all()


def _render_page(**context):
    session = db.session()
    tokens = list_tokens(session, None if _sees_all() else current_user)
    context.setdefault("errors", {})
    return render_template("tokens/index.html", tokens=tokens, show_owner=_sees_all(), **context)
