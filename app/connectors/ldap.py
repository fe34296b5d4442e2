"""LDAP connectors: server URL(s), bind DN and password, StartTLS or LDAPS, timeouts."""

from __future__ import annotations

from typing import Any

from app.connectors.base import ConnectorKind, Field


class LdapKind(ConnectorKind):
    def __init__(self):
        super().__init__(
            kind="ldap",
            label="LDAP / Active Directory",
            fields=(
                Field(
                    "url",
                    required=True,
                    help="ldap://host:389 or ldaps://host:636; several separated by commas",
                ),
                Field("bind_dn", help="e.g. cn=svc,dc=example,dc=org (empty: anonymous)"),
                Field("password", secret=True),
                Field("start_tls", "bool", default=False),
                Field("verify_tls", "bool", default=True),
                Field("ca_bundle", help="path to a CA bundle for a private CA"),
                Field("timeout_seconds", "int", default=10),
            ),
        )

    def check(self, values: dict[str, Any]) -> dict[str, str]:
        urls = [u.strip() for u in str(values["url"]).split(",") if u.strip()]
        if not urls or not all(u.startswith(("ldap://", "ldaps://")) for u in urls):
            return {"url": "expected ldap:// or ldaps:// URLs"}
        if values.get("password") and not values.get("bind_dn"):
            return {"bind_dn": "required with a password"}
        return {}

    def test(self, values: dict[str, Any]) -> str:
        from app.connectors.ldap_client import test_ldap_connector

        return test_ldap_connector(values)
