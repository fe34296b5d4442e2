"""LDAP connections from an ldap connector's values, that kind's "Test connection", and the
text form of what directories send (AD GUIDs and SIDs, GeneralizedTime, FILETIME).

Every failure becomes a DirectoryError whose message names the server and the cause; the
password never appears in it (it is scrubbed even from the server's own text).
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from ldap3 import ANONYMOUS, BASE, NONE, SIMPLE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException

from app.connectors.base import ConnectorTestFailed

DEFAULT_TIMEOUT = 10
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
ACTIVE_DIRECTORY_OID = "1.2.840.113556.1.4.800"  # LDAP_CAP_ACTIVE_DIRECTORY_OID
ROOT_DSE_ATTRIBUTES = [
    "objectClass",
    "namingContexts",
    "defaultNamingContext",
    "vendorName",
    "vendorVersion",
    "supportedControl",
    "supportedCapabilities",
    "dnsHostName",
]
# Active Directory puts the reason of a refused bind in "data 52e" inside the message
AD_BIND_REASONS = {
    "525": "no such user",
    "52e": "invalid credentials",
    "530": "logon not permitted at this time",
    "531": "logon not permitted from this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "the user must reset the password",
    "775": "account locked out",
}
# bind results that say "these credentials will not do": no other server or retry will help
REFUSED_BINDS = {
    "invalidCredentials",
    "inappropriateAuthentication",
    "confidentialityRequired",
    "strongerAuthRequired",
    "unwillingToPerform",
    "invalidDNSyntax",
    "insufficientAccessRights",
}
MASK = "••••••"
# AD binary attributes with a canonical text form; other binaries become base64
GUID_ATTRIBUTES = {"objectguid", "msexchmailboxguid", "ms-ds-consistencyguid"}
SID_ATTRIBUTES = {"objectsid", "sidhistory", "securityidentifier"}
BINARY_ATTRIBUTES = {"jpegphoto", "thumbnailphoto", "usercertificate", "cacertificate"}
GENERALIZED_TIME = re.compile(
    r"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)?(\d\d)?(?:[.,](\d+))?(Z|[+-]\d{2}(?:\d{2})?)?"
)
WRAPPED_TEXT = re.compile(r"""\(\s*(['"])(.*)\1\s*,?\s*\)""", re.DOTALL)


class DirectoryError(Exception):
    """The directory cannot be used; the message names the server and the cause."""


class DirectoryUnreachable(DirectoryError):
    """No server answered, or the TLS handshake failed."""


class DirectoryBindFailed(DirectoryError):
    """The server refused the bind DN and password (retrying will not help)."""


class CheckedTls(Tls):
    """ldap3's Tls, with the certificate *and host name* checked by ssl itself.

    ldap3 checks host names with ssl.match_hostname, which is deprecated (a DeprecationWarning
    on every handshake) and gone in Python 3.12; ssl's own check_hostname does it properly.
    """

    def __init__(self, verify: bool = True, ca_bundle: str | None = None):
        super().__init__(validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
        try:
            self.context = ssl.create_default_context(cafile=ca_bundle or None)
        except (OSError, ssl.SSLError) as error:
            raise DirectoryError(f"cannot read ca_bundle {ca_bundle}: {error}") from None
        if not verify:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def wrap_socket(self, connection, do_handshake=False):
        connection.socket = self.context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def server_urls(values: dict[str, Any]) -> list[str]:
    return [u.strip() for u in str(values.get("url") or "").split(",") if u.strip()]


def open_connection(values: dict[str, Any], receive_timeout: float | None = None) -> Connection:
    """Connect (first server that answers), StartTLS if asked, and bind; the caller unbinds.

    Servers are tried in the order given; the errors of all of them are reported when none
    works. A refused bind raises DirectoryBindFailed at once: the other servers share the
    same accounts, so trying them would only risk locking the account out.
    """
    urls = server_urls(values)
    if not urls:
        raise DirectoryError("the connector has no url")
    timeout = int(values.get("timeout_seconds") or DEFAULT_TIMEOUT)
    receive = max(1, int(receive_timeout if receive_timeout is not None else timeout))
    tls = CheckedTls(bool(values.get("verify_tls", True)), values.get("ca_bundle"))
    problems = []
    for url in urls:
        try:
            return _open_one(url, values, tls, timeout, receive)
        except DirectoryUnreachable as error:
            problems.append(str(error))
    raise DirectoryUnreachable("; ".join(problems))


def _open_one(
    url: str, values: dict[str, Any], tls: CheckedTls, timeout: int, receive: int
) -> Connection:
    bind_dn, password = values.get("bind_dn") or None, values.get("password") or None
    if bind_dn and not password:
        # an empty password would be an "unauthenticated bind": anonymous, silently
        raise DirectoryBindFailed(f"bind failed: no password is set for {bind_dn}")
    parts = urlsplit(url)
    secure = parts.scheme == "ldaps"
    server = Server(
        url,
        use_ssl=secure,
        tls=tls,
        get_info=NONE,  # the schema of a big AD is megabytes; nothing here needs it
        connect_timeout=timeout,
    )
    connection = Connection(
        server,
        user=bind_dn,
        password=password,
        authentication=SIMPLE if bind_dn else ANONYMOUS,
        receive_timeout=receive,  # ldap3 packs it as an int for SO_RCVTIMEO
        read_only=True,
        auto_referrals=False,  # AD hands out referrals to other domains: not followed
        raise_exceptions=False,
    )
    stage = "connect"
    try:
        connection.open(read_server_info=False)
        if values.get("start_tls") and not secure:
            stage = "StartTLS"
            connection.start_tls(read_server_info=False)
        stage = "bind"
        if not connection.bind(read_server_info=False):
            refusal = _scrub(bind_failure(connection.result, bind_dn), password)
            if (connection.result or {}).get("description") in REFUSED_BINDS:
                raise DirectoryBindFailed(refusal)
            raise DirectoryUnreachable(f"{url}: {refusal}")
    except DirectoryError:
        close_connection(connection)
        raise
    except (LDAPException, OSError, ValueError, KeyError) as error:  # KeyError: not LDAP talk
        close_connection(connection)
        cause = _scrub(_cause(error, parts.hostname), password)
        raise DirectoryUnreachable(f"{url}: {stage} failed: {cause}") from None
    return connection


def close_connection(connection: Connection) -> None:
    """Unbind and close the socket, whatever state the connection is in."""
    with contextlib.suppress(Exception):
        if not connection.closed:
            connection.unbind()
    # ldap3 leaves the socket open when opening or wrapping it failed
    with contextlib.suppress(Exception):
        if connection.socket is not None:
            connection.socket.close()


def bind_failure(result: dict[str, Any] | None, bind_dn: str | None) -> str:
    """Say why a bind was refused: ``bind failed: invalid credentials for cn=svc,...``."""
    result = result or {}
    description = str(result.get("description") or "refused")
    message = str(result.get("message") or "")
    reason = {
        "invalidCredentials": "invalid credentials",
        "inappropriateAuthentication": "inappropriate authentication",
        "unwillingToPerform": "the server is unwilling to perform the bind",
        "confidentialityRequired": "the server requires TLS (use ldaps:// or start_tls)",
        "strongerAuthRequired": "the server requires TLS (use ldaps:// or start_tls)",
    }.get(description, description)
    for code, ad_reason in AD_BIND_REASONS.items():
        if f"data {code}" in message.lower():
            reason = f"{reason} ({ad_reason})" if ad_reason not in reason else reason
            break
    who = f" for {bind_dn}" if bind_dn else " (anonymous)"
    return f"bind failed: {reason}{who}"


def _cause(error: Exception, host: str | None) -> str:
    if isinstance(error, KeyError):
        return "the server did not answer in LDAP (is this an LDAP port?)"
    text = str(error).strip()
    while match := WRAPPED_TEXT.fullmatch(text):  # ldap3 nests messages in tuple reprs
        text = match.group(2).strip()
    if "invalid server address" in text and host:
        try:
            socket.getaddrinfo(host, None)
        except OSError as lookup:
            return f"cannot resolve {host}: {lookup}"
    return text or type(error).__name__


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, MASK) if password else text


def read_root_dse(connection: Connection) -> dict[str, list]:
    """Return the root DSE's attributes (naming contexts, vendor, controls)."""
    connection.search("", "(objectClass=*)", BASE, attributes=ROOT_DSE_ATTRIBUTES)
    if connection.result.get("description") != "success" or not connection.response:
        return {}
    found = connection.response[0].get("attributes") or {}
    return {k: v if isinstance(v, list) else [v] for k, v in found.items() if v not in (None, [])}


def describe_vendor(root: dict[str, list]) -> str:
    if root.get("vendorName"):
        return " ".join(str(v[0]) for v in (root["vendorName"], root.get("vendorVersion")) if v)
    if ACTIVE_DIRECTORY_OID in [str(c) for c in root.get("supportedCapabilities", [])]:
        return "Active Directory"
    if "OpenLDAProotDSE" in [str(c) for c in root.get("objectClass", [])]:
        return "OpenLDAP"
    return "an LDAP server"


def test_ldap_connector(values: dict[str, Any]) -> str:
    """Bind and read the root DSE; say who the server is and what it holds."""
    try:
        connection = open_connection(values)
    except DirectoryError as error:
        raise ConnectorTestFailed(str(error)) from None
    try:
        root = read_root_dse(connection)
        where = connection.server.name
    finally:
        close_connection(connection)
    who = f"bound as {values['bind_dn']}" if values.get("bind_dn") else "bound anonymously"
    contexts = ", ".join(str(c) for c in root.get("namingContexts", [])) or "none listed"
    paged = PAGED_RESULTS_OID in [str(c) for c in root.get("supportedControl", [])]
    return (
        f"{who} to {where} ({describe_vendor(root)}); naming contexts: {contexts}; "
        f"paged results {'supported' if paged else 'NOT supported'}"
    )


# --- values as directories send them ---------------------------------------------------


def decode_value(attribute: str, raw: bytes | str) -> str:
    """Text for one attribute value: GUIDs and SIDs in their canonical form, binaries base64."""
    if isinstance(raw, str):
        return raw
    name, _, options = attribute.lower().partition(";")
    if name in GUID_ATTRIBUTES and len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))  # AD stores the first three fields little-endian
    if name in SID_ATTRIBUTES and (sid := sid_text(raw)):
        return sid
    if name not in BINARY_ATTRIBUTES and "binary" not in options.split(";"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        if len(raw) == 16:
            return str(uuid.UUID(bytes=raw))
    return base64.b64encode(raw).decode("ascii")


def sid_text(raw: bytes) -> str | None:
    """S-1-5-21-... from a binary SID, or None when the bytes are not one."""
    if len(raw) < 8 or len(raw) != 8 + 4 * raw[1]:
        return None
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{raw[1]}I", raw[8:])
    return f"S-{raw[0]}-{authority}" + "".join(f"-{s}" for s in subs)


def directory_time(value: str) -> datetime:
    """A GeneralizedTime (20240131120000Z), an AD FILETIME (100 ns since 1601), or ISO 8601."""
    if value.isdigit() and len(value) >= 17:
        return datetime(1601, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value) // 10)
    match = GENERALIZED_TIME.fullmatch(value)
    if not match:
        return datetime.fromisoformat(value).astimezone(UTC)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute or 0),
        int(second or 0),
        int((fraction or "0")[:6].ljust(6, "0")),
        tzinfo=UTC,
    )
    if zone and zone != "Z":
        offset = int(zone[1:3]) * 60 + int(zone[3:5] or 0)
        moment -= (1 if zone[0] == "+" else -1) * timedelta(minutes=offset)
    return moment
