from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app import db
from app.audit import record_event
from app.auth import client_ip, requires
from app.users import authenticate

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the sign-in form; sign in on POST."""
    next_url = _safe_next(request.values.get("next"))
    if current_user.is_authenticated and request.method == "GET":
        return redirect(next_url)
    if request.method == "GET":
        return render_template("auth/login.html", next=next_url, username="", error=None)
    settings = current_app.config["NOMAFLOW"]
    username = request.form.get("username", "")
    db_session = db.session()
    result = authenticate(
        db_session,
        username,
        request.form.get("password", ""),
        ip=client_ip(),
        max_failures=settings.login_max_failures,
        lockout_minutes=settings.login_lockout_minutes,
    )
    db_session.commit()
    if result.user is None:
        return (
            render_template(
                "auth/login.html", next=next_url, username=username, error=result.error
            ),
            401,
        )
    session.clear()  # a fresh session on sign-in: no fixation
    login_user(result.user)
    return redirect(next_url)


@bp.post("/logout")
@requires()
def logout():
    """Sign out and return to the sign-in page."""
    db_session = db.session()
    record_event(
        db_session,
        "logout",
        user=current_user,
        target_type="user",
        target_id=current_user.username,
        ip=client_ip(),
    )
    db_session.commit()
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


def _safe_next(target: str | None) -> str:
    """Only follow same-site paths after sign-in (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("jobs.index")
