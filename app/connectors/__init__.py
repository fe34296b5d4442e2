"""Connectors: named SQL pools, HTTP APIs, LDAP directories and SMTP relays (DESIGN §3, §8)."""

from __future__ import annotations

from app.connectors.base import ConnectorKind
from app.connectors.http import HttpKind
from app.connectors.ldap import LdapKind
from app.connectors.smtp import SmtpKind
from app.connectors.sql import SqlKind

CONNECTOR_KINDS: dict[str, ConnectorKind] = {
    k.kind: k for k in (SqlKind(), HttpKind(), LdapKind(), SmtpKind())
}
DEFAULT_CONNECTOR = "default"  # the app's own database, always there as a sql connector


def get_connector_kind(kind: str) -> ConnectorKind:
    """Return the kind; LookupError names the known kinds."""
    try:
        return CONNECTOR_KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(CONNECTOR_KINDS))
        raise LookupError(f"unknown connector kind {kind!r} (known: {known})") from None
