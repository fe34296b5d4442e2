"""Sign-in wiring: Flask-Login, the ``requires`` guard, idle expiry, 401/403 answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps

from flask import Flask, abort, current_app, flash, g, jsonify, redirect, request, session, url_for
from flask_login import AnonymousUserMixin, LoginManager, current_user, logout_user

from app import db
from app.models import User
from app.tokens import authenticate, bearer_value

login_manager = LoginManager()

# Endpoints anyone may reach; every other endpoint needs a signed-in user (checked before the
# view runs) and carries a ``requires`` guard (checked by tests/test_permissions.py).
# hooks.trigger authenticates itself with the job's own trigger token (app/hooks.py).
PUBLIC_ENDPOINTS = {"auth.login", "health.healthz", "static", "hooks.trigger"}


class Anonymous(AnonymousUserMixin):
    def can(self, permission: str) -> bool:
        return False


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.anonymous_user = Anonymous
    login_manager.user_loader(_load_user)
    login_manager.unauthorized_handler(_unauthorized)
    app.before_request(_require_sign_in)


def requires(permission: str | None = None) -> Callable:
    """Guard a view: signed-in user, and ``permission`` when given (else 403)."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if permission is not None and not current_user.can(permission):
                abort(403, description=f"You need the {permission} permission for this.")
            return view(*args, **kwargs)

        guarded.required_permission = permission
        return guarded

    return decorate


def client_ip() -> str:
    return request.remote_addr or ""


def _load_user(user_id: str) -> User | None:
    try:
        user = db.session().get(User, int(user_id))
    except ValueError:
        return None
    return user if user is not None and user.active else None


def _require_sign_in():
    """Turn away anonymous requests to private endpoints, and end idle sessions."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if request.path.startswith("/api/"):
        return _sign_in_by_token()
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    settings = current_app.config["NOMAFLOW"]
    now = int(time.time())
    last_seen = session.get("last_seen", now)
    if now - last_seen > settings.session_idle_minutes * 60:
        logout_user()
        session.clear()
        flash(
            f"Your session expired after {settings.session_idle_minutes} minutes without "
            "activity. Please sign in again.",
            "warning",
        )
        return login_manager.unauthorized()
    if now - last_seen >= 30:  # no need to rewrite the cookie on every request
        session["last_seen"] = now
    return None


def _sign_in_by_token():
    """Let an API call in on its bearer token only: a session cookie never authorises one, so
    no cross-site form can ride on a signed-in browser (the API is CSRF-exempt)."""
    user = authenticate(db.session(), bearer_value(request.headers.get("Authorization")))
    if user is None:
        return _unauthorized()
    g._login_user = user  # Flask-Login's current_user for this request; the session is untouched
    return None


def _unauthorized():
    """401 for API and htmx callers (htmx is sent to the login page), a redirect otherwise."""
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if request.path.startswith("/api/"):
        message = "Send a valid API token: Authorization: Bearer nf_..."
        response = jsonify(error="unauthorized", message=message, fields={})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="nomaflow"'
        return response
    if request.headers.get("HX-Request"):
        response = jsonify(error="unauthorized", message="Your session has ended.")
        response.status_code = 401
        response.headers["HX-Redirect"] = login_url
        return response
    return redirect(login_url)
