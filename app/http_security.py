"""HTTP hardening: CSRF on every state change, CSP to our own origin, cookie flags."""

from __future__ import annotations

from flask import Flask, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

csrf = CSRFProtect()

# All JS and CSS is vendored, so nothing but our own origin is needed; no inline script/style.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class SessionCookies(SecureCookieSessionInterface):
    """Mark the session cookie Secure when configured, or (auto) when the request is HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        mode = app.config["NOMAFLOW"].cookie_secure
        if mode == "auto":
            return request.is_secure
        return mode == "true"


def init_app(app: Flask) -> None:
    settings = app.config["NOMAFLOW"]
    if settings.proxy_count:
        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=settings.proxy_count,
            x_proto=settings.proxy_count,
            x_host=settings.proxy_count,
        )
    app.session_interface = SessionCookies()
    csrf.init_app(app)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.after_request(_add_security_headers)


def _csrf_failed(error: CSRFError):
    message = (
        "This form was sent without a valid security token (it may have expired). "
        "Reload the page and try again."
    )
    return render_template("errors/error.html", code=400, title="Bad request", message=message), 400


def _add_security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":  # htmx gets partials, browsers pages: cache apart
        response.vary.add("HX-Request")
    return response
