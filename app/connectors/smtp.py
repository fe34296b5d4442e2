"""SMTP connectors: a relay for alert emails."""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

from app.connectors.base import ConnectorKind, ConnectorTestFailed, Field


class SmtpKind(ConnectorKind):
    def __init__(self):
        super().__init__(
            kind="smtp",
            label="SMTP relay",
            fields=(
                Field("host", required=True),
                Field("port", "int", default=587),
                Field("tls", "choice", default="starttls", choices=("none", "starttls", "ssl")),
                Field("username"),
                Field("password", secret=True),
                Field("sender", required=True, help="From address, e.g. nomaflow@example.org"),
                Field("timeout_seconds", "int", default=10),
            ),
        )

    def check(self, values: dict[str, Any]) -> dict[str, str]:
        if "@" not in values["sender"]:
            return {"sender": "expected an email address"}
        if values.get("password") and not values.get("username"):
            return {"username": "required with a password"}
        return {}

    def test(self, values: dict[str, Any]) -> str:
        try:
            with open_smtp(values) as smtp:
                code, _ = smtp.noop()
        except (OSError, smtplib.SMTPException) as error:
            raise ConnectorTestFailed(f"{type(error).__name__}: {error}") from error
        return f"connected to {values['host']}:{values.get('port', 587)} (NOOP {code})"


def open_smtp(values: dict[str, Any]) -> smtplib.SMTP:
    """Connect, secure (STARTTLS/SSL) and log in as the connector says."""
    values = {"port": 587, "tls": "starttls", "timeout_seconds": 10, **values}
    context = ssl.create_default_context()
    if values["tls"] == "ssl":
        smtp = smtplib.SMTP_SSL(
            values["host"], values["port"], timeout=values["timeout_seconds"], context=context
        )
    else:
        smtp = smtplib.SMTP(values["host"], values["port"], timeout=values["timeout_seconds"])
    try:
        if values["tls"] == "starttls":
            smtp.starttls(context=context)
        if values.get("username"):
            smtp.login(values["username"], values.get("password") or "")
    except BaseException:
        smtp.close()
        raise
    return smtp
