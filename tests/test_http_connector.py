"""HTTP connectors: "Test connection" against a real local server, and what HttpClient sends
where (auth only to the connector's own origin, nothing secret in any message)."""

from __future__ import annotations

import datetime
import ipaddress
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.connectors import get_connector_kind
from app.connectors.base import ConnectorTestFailed
from app.connectors.http_client import HttpClient
from app.connectors.store import load_connector, save_connector
from app.crypto import vault
from app.db import get_database
from tests.http_test_server import (
    API_KEY,
    API_KEY_HEADER,
    BEARER_TOKEN,
    CLIENT_SECRET,
    PASSWORD,
    HttpTestServer,
    http_values,
)

SECRETS = (PASSWORD, BEARER_TOKEN, API_KEY, CLIENT_SECRET)


@pytest.fixture
def api():
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def other():
    """A second server: another origin than ``api``."""
    server = HttpTestServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no default CA vouches for, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nomaflow test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_connection(values: dict) -> str:
    return get_connector_kind("http").test(values)


test_connection.__test__ = False  # a helper, not a test


def failure_of(values: dict) -> str:
    with pytest.raises(ConnectorTestFailed) as raised:
        test_connection(values)
    message = str(raised.value)
    assert not [s for s in SECRETS if s in message]
    return message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("auth", "path"),
    [("none", "/items"), ("basic", "/basic"), ("bearer", "/bearer"), ("api_key", "/api-key")],
)
def test_a_working_connector_reports_status_and_time(api, auth, path):
    result = test_connection(http_values(api, auth, base_url=api.url + path))
    assert result.startswith(f"GET {api.url}{path}: HTTP 200 OK in ")
    assert result.endswith(" ms")


def test_an_oauth2_connector_gets_a_token_first(api):
    result = test_connection(http_values(api, "oauth2", base_url=api.url + "/oauth/data"))
    assert result.startswith(f"token obtained; GET {api.url}/oauth/data: HTTP 200 OK in ")
    assert api.token_requests == 1


def test_a_stored_connector_is_tested_with_its_sealed_secrets(app, api):
    with get_database(app).session_scope() as db:
        save_connector(db, vault(app), "api", "http", http_values(api, "basic", base_url=api.url))
    with get_database(app).session_scope() as db:
        found = load_connector(db, vault(app), "api")
    found.values["base_url"] += "/basic"
    assert test_connection(found.values).startswith(f"GET {api.url}/basic: HTTP 200 OK")


def test_a_wrong_password_is_reported_without_the_password(api):
    values = http_values(api, "basic", base_url=api.url + "/basic", password="wrong-pass-42")
    message = failure_of(values)
    assert message == f"{api.url}/basic refused the credentials: HTTP 401 UNAUTHORIZED"
    assert "wrong-pass-42" not in message


def test_a_wrong_client_secret_is_reported_by_the_token_endpoint(api):
    values = http_values(api, "oauth2", client_secret="wrong-secret-42")
    assert failure_of(values) == (
        f"the OAuth2 token endpoint {api.url}/oauth/token refused: HTTP 401 UNAUTHORIZED "
        "(invalid_client: bad client)"
    )
    assert api.token_requests == 2  # HTTP Basic, then the form (client_secret_post)


def test_an_unreachable_port_is_reported(api):
    port = free_port()
    message = failure_of(http_values(api, base_url=f"http://127.0.0.1:{port}/x?key=abc"))
    assert message == f"cannot reach http://127.0.0.1:{port}/x?key=•••: connection refused"


def test_https_to_a_plain_http_port_is_reported(api):
    message = failure_of(http_values(api, base_url=api.url.replace("http:", "https:")))
    assert message.startswith(f"cannot reach {api.url.replace('http:', 'https:')}: TLS ")
    assert "does this port speak plain HTTP? try http://" in message


def test_a_server_error_or_a_silent_server_is_reported(api):
    assert failure_of(http_values(api, base_url=api.url + "/status/503")) == (
        f"{api.url}/status/503 answered HTTP 503 SERVICE UNAVAILABLE"
    )
    message = failure_of(http_values(api, base_url=api.url + "/hang", timeout_seconds=1))
    assert message == f"cannot reach {api.url}/hang: no answer within the read timeout"


# verify_tls = false is insecure, and urllib3 says so: that warning is the expected outcome
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_private_ca_needs_ca_bundle_or_verify_tls_false(self_signed):
    server = HttpTestServer(tls=self_signed).start()
    try:
        values = {"base_url": server.url + "/items"}
        message = failure_of(values)
        assert message.startswith(f"cannot reach {server.url}/items: TLS certificate not accepted")
        assert message.endswith("(a private CA needs ca_bundle)")
        assert "HTTP 200 OK" in test_connection({**values, "ca_bundle": self_signed[0]})
        assert "HTTP 200 OK" in test_connection({**values, "verify_tls": False})
    finally:
        server.stop()


def test_relative_urls_join_the_base_url_path():
    client = HttpClient({"base_url": "https://api.example.org/v2/"})
    try:
        assert client.url_for("/releases") == "https://api.example.org/v2/releases"
        assert client.url_for("releases?page=2") == "https://api.example.org/v2/releases?page=2"
        assert client.url_for("http://elsewhere.org/x") == "http://elsewhere.org/x"
    finally:
        client.close()


@pytest.mark.parametrize("auth", ["bearer", "api_key"])
def test_credentials_go_only_to_the_connector_origin(api, other, auth):
    client = HttpClient(http_values(api, auth, headers={"X-Team": "ops"}))
    try:
        client.request("GET", "/echo").close()
        client.request("GET", other.url + "/echo").close()
        client.request("GET", f"/redirect?to={other.url}/echo/redirected").close()
    finally:
        client.close()
    own = api.requests_to("/echo")[0].headers
    assert own["X-Team"] == "ops"
    assert (own.get("Authorization") or own.get(API_KEY_HEADER)) in (
        f"Bearer {BEARER_TOKEN}",
        API_KEY,
    )
    for seen in other.seen:
        assert "Authorization" not in seen.headers
        assert API_KEY_HEADER not in seen.headers
        assert "X-Team" not in seen.headers
    assert [s.path for s in other.seen] == ["/echo", "/echo/redirected"]


def test_error_messages_mask_secrets_the_server_echoes(api):
    client = HttpClient(http_values(api, "bearer"))
    try:
        assert client.mask(f"invalid token {BEARER_TOKEN}!") == "invalid token ••••••!"
    finally:
        client.close()
