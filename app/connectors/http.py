"""HTTP connectors: a base URL, default headers and auth (DESIGN §8).

auth: none | basic (username, password) | bearer (token) | api_key (header, token)
      | oauth2 (token_url, client_id, client_secret, scope) — client credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from app.connectors.base import ConnectorKind, Field

AUTH_NEEDS = {
    "none": (),
    "basic": ("username", "password"),
    "bearer": ("token",),
    "api_key": ("token",),
    "oauth2": ("token_url", "client_id", "client_secret"),
}


class HttpKind(ConnectorKind):
    def __init__(self):
        super().__init__(
            kind="http",
            label="HTTP API",
            fields=(
                Field("base_url", required=True, help="e.g. https://api.github.com"),
                Field("headers", "table", help="sent with every request"),
                Field("auth", "choice", default="none", choices=tuple(AUTH_NEEDS)),
                Field("username", help="basic auth"),
                Field("password", secret=True, help="basic auth"),
                Field("token", secret=True, help="bearer or API key"),
                Field("header", default="X-API-Key", help="header carrying the API key"),
                Field("token_url", help="OAuth2 token endpoint"),
                Field("client_id", help="OAuth2 client id"),
                Field("client_secret", secret=True, help="OAuth2 client secret"),
                Field("scope", help="OAuth2 scope"),
                Field("verify_tls", "bool", default=True, help="check the server certificate"),
                Field("ca_bundle", help="path to a CA bundle for a private CA"),
                Field("timeout_seconds", "int", default=30, help="connect and read timeout"),
            ),
        )

    def check(self, values: dict[str, Any]) -> dict[str, str]:
        problems = {}
        for name in ("base_url", "token_url"):
            if values.get(name) and not _is_http_url(values[name]):
                problems[name] = "expected an http:// or https:// URL"
        for name in AUTH_NEEDS[values.get("auth") or "none"]:
            if not values.get(name):
                problems[name] = f"required with auth = {values.get('auth')}"
        return problems

    def test(self, values: dict[str, Any]) -> str:
        from app.connectors.http_client import test_http_connector

        return test_http_connector(values)


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
