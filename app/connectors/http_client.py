"""HTTP at run time: a client per http connector (base URL, headers, auth, TLS, timeouts).

The ``http`` step, the Python step's ``ctx.http()`` and "Test connection" all go through
``HttpClient``. Requests made inside a ``RequestWatch`` can be cut off mid-flight: an abort or a
deadline shuts the socket down, whatever the server is doing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError

from app.connectors.base import ConnectorTestFailed

CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_TIMEOUT_SECONDS = 30.0
TOKEN_ANSWER_BYTES = 64 * 1024
TOKEN_MARGIN_SECONDS = 60.0  # refresh this long before expiry (a tenth of a short lifetime)
MASK = "••••••"
WATCH_POLL_SECONDS = 0.1


class HttpClientError(Exception):
    """A request could not be made; the message names the cause (never a secret)."""


class HttpAuthFailed(HttpClientError):
    """The OAuth2 token endpoint did not hand out a token."""


class HttpClient:
    """Requests on behalf of one http connector; share it between threads, close it once.

    ``HttpClient({})`` is a client without a connector: absolute URLs only, no auth.
    """

    def __init__(self, values: dict[str, Any]):
        self.base_url = (values.get("base_url") or "").strip() or None
        self.auth = values.get("auth") or "none"
        self.values = values
        timeout = values.get("timeout_seconds")
        self.timeout_seconds = float(timeout) if timeout else None
        self.headers = {str(k): header_text(v) for k, v in (values.get("headers") or {}).items()}
        self.verify: bool | str = values.get("ca_bundle") or values.get("verify_tls", True)
        self.session = ConnectorSession()
        key_header = (self._api_key_header(),) if self.auth == "api_key" else ()
        self.session.own_headers = (*self.headers, *key_header)
        self._token: str | None = None
        self._token_expires: float | None = None  # time.monotonic(); None = until a 401
        self._issued: list[str] = []  # access tokens seen, for masking
        self._token_lock = threading.Lock()

    def url_for(self, url: str) -> str:
        """Return the absolute URL: ``url`` itself when absolute, else joined to base_url."""
        url = (url or "").strip()
        if urlsplit(url).scheme:
            return url
        if not self.base_url:
            raise HttpClientError(f"{url!r} is relative: give an absolute URL or a connector")
        if not url:
            return self.base_url
        return self.base_url.rstrip("/") + "/" + url.lstrip("/")

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        timeout: tuple[float, float] | None = None,
        stream: bool = True,
    ) -> requests.Response:
        """Send one request; the caller reads and closes the (streamed) response.

        The connector's headers and auth go only to its own origin (scheme, host and port of
        base_url), so an absolute URL elsewhere never receives its credentials; a header the
        caller sets wins over both. With OAuth2 a 401 fetches a new token and resends once.
        Raises HttpAuthFailed, HttpClientError, or what requests raises (see ``explain``).
        """
        url = self.url_for(url)
        timeout = timeout or self.default_timeout()
        own = self.base_url is not None and origin(url) == origin(self.base_url)
        options = dict(params=params, json=json, data=data, timeout=timeout, stream=stream)
        token, fetched = None, False
        if own and self.auth == "oauth2":
            token, fetched = self._access_token(timeout)
        response = self._send(method, url, self._headers_for(own, token, headers), options)
        if token is not None and not fetched and response.status_code == 401:
            # revoked or expired early: one new token, one more try
            response.close()
            self._forget_token(token)
            token, _ = self._access_token(timeout)
            response = self._send(method, url, self._headers_for(own, token, headers), options)
        return response

    def default_timeout(self) -> tuple[float, float]:
        read = self.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        return (min(CONNECT_TIMEOUT_SECONDS, read), read)

    def mask(self, text: str) -> str:
        """Replace the connector's secrets (and tokens it was issued) found in ``text``."""
        for secret in self._secrets():
            text = text.replace(secret, MASK)
        return text

    def close(self) -> None:
        self.session.close()

    def _headers_for(self, own: bool, token: str | None, given: dict[str, str] | None):
        merged = requests.structures.CaseInsensitiveDict()
        if own:
            merged.update(self.headers)
            merged.update(self._auth_headers(token))
        merged.update(given or {})
        return merged

    def _send(self, method: str, url: str, headers, options: dict[str, Any]) -> requests.Response:
        try:
            # verify per request: set on the session, REQUESTS_CA_BUNDLE would override it
            return self.session.request(method, url, headers=headers, verify=self.verify, **options)
        except OSError as error:  # e.g. a ca_bundle that is not there
            if isinstance(error, requests.RequestException):
                raise
            raise HttpClientError(f"cannot send the request: {error}") from None

    def _auth_headers(self, token: str | None) -> dict[str, str]:
        values = self.values
        if self.auth == "basic":
            pair = f"{values.get('username') or ''}:{values.get('password') or ''}"
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {values.get('token') or ''}"}
        if self.auth == "api_key":
            return {self._api_key_header(): values.get("token") or ""}
        if self.auth == "oauth2" and token is not None:
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _api_key_header(self) -> str:
        return self.values.get("header") or "X-API-Key"

    def _access_token(self, timeout: tuple[float, float]) -> tuple[str, bool]:
        """Return the cached token, or a new one; and whether it was fetched just now."""
        # one fetch at a time: the runs waiting here then share the token it brings
        with self._token_lock:
            fresh = self._token_expires is None or time.monotonic() < self._token_expires
            if self._token is not None and fresh:
                return self._token, False
            self._token, self._token_expires = self._fetch_token(timeout)
            self._issued = [*self._issued[-9:], self._token]
            return self._token, True

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _fetch_token(self, timeout: tuple[float, float]) -> tuple[str, float | None]:
        values = self.values
        token_url = values.get("token_url") or ""
        form = {"grant_type": "client_credentials"}
        if values.get("scope"):
            form["scope"] = values["scope"]
        client = (values.get("client_id") or "", values.get("client_secret") or "")
        started = time.monotonic()
        answer = self._post_token(token_url, form, client, timeout)
        if answer.status_code in (400, 401):
            # some servers take the client's credentials only in the form (client_secret_post)
            form.update(client_id=client[0], client_secret=client[1])
            answer = self._post_token(token_url, form, None, timeout)
        where = safe_url(token_url)
        if answer.status_code != 200:
            raise HttpAuthFailed(
                f"the OAuth2 token endpoint {where} refused: HTTP {answer.status_code} "
                f"{answer.reason}{oauth_error(answer.body)}"
            )
        try:
            document = json.loads(answer.body)
            token = document["access_token"]
            lifetime = float(document["expires_in"]) if document.get("expires_in") else None
        except (ValueError, KeyError, TypeError):
            raise HttpAuthFailed(
                f"the OAuth2 token endpoint {where} answered without an access_token"
            ) from None
        if not isinstance(token, str) or not token:
            raise HttpAuthFailed(f"the OAuth2 token endpoint {where} answered an empty token")
        if lifetime is None:
            return token, None
        return token, started + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 10)

    def _post_token(self, token_url, form, client, timeout) -> TokenAnswer:
        auth = None
        if client is not None:
            pair = f"{client[0]}:{client[1]}"
            auth = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        try:
            response = self.session.post(
                token_url,
                data=form,
                headers={"Accept": "application/json", **(auth or {})},
                timeout=timeout,
                stream=True,
                verify=self.verify,
                allow_redirects=False,  # credentials go to the configured endpoint only
            )
        except OSError as error:  # requests' errors, and a ca_bundle that is not there
            raise HttpAuthFailed(
                f"cannot reach the OAuth2 token endpoint {safe_url(token_url)}: {explain(error)}"
            ) from None
        with response:
            try:
                body = read_at_most(response, TOKEN_ANSWER_BYTES)
            except requests.RequestException as error:
                raise HttpAuthFailed(
                    f"the OAuth2 token endpoint {safe_url(token_url)} broke off: {explain(error)}"
                ) from None
        return TokenAnswer(response.status_code, response.reason, body)

    def _secrets(self) -> list[str]:
        values = self.values
        found = [values.get(k) for k in ("password", "token", "client_secret")] + self._issued
        return [s for s in found if isinstance(s, str) and len(s) >= 4]


class TokenAnswer:
    def __init__(self, status_code: int, reason: str, body: bytes):
        self.status_code, self.reason, self.body = status_code, reason, body


class ConnectorSession(requests.Session):
    """A session that keeps no cookies, and whose redirects elsewhere lose the connector's
    headers (requests itself drops Authorization)."""

    own_headers: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        # a cached client serves many runs: cookies would carry state from one to the next
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        adapter = WatchedAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def rebuild_auth(self, prepared_request, response) -> None:
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.own_headers:
                prepared_request.headers.pop(name, None)
        super().rebuild_auth(prepared_request, response)


def test_http_connector(values: dict[str, Any]) -> str:
    """GET the base URL with the connector's auth; return the status and the time it took.

    ConnectorTestFailed names the cause: refused credentials, a token endpoint that says no, a
    TLS failure, an unreachable host, a server error. Never a secret.
    """
    client = HttpClient(values)
    where = safe_url(client.base_url or "")
    try:
        started = time.monotonic()
        try:
            response = client.request("GET", client.base_url or "")
        except HttpClientError as error:
            raise ConnectorTestFailed(client.mask(str(error))) from None
        except requests.RequestException as error:
            raise ConnectorTestFailed(f"cannot reach {where}: {explain(error)}") from None
        elapsed_ms = round((time.monotonic() - started) * 1000)
        response.close()
    finally:
        client.close()
    status = f"HTTP {response.status_code} {response.reason}"
    if response.status_code in (401, 403, 407):
        problem = "refused the credentials" if client.auth != "none" else "wants credentials"
        raise ConnectorTestFailed(f"{where} {problem}: {status}")
    if response.status_code >= 500:
        raise ConnectorTestFailed(f"{where} answered {status}")
    token = "token obtained; " if client.auth == "oauth2" else ""
    return f"{token}GET {where}: {status} in {elapsed_ms} ms"


# --- cutting a request off: abort and deadline ----------------------------------------------

_watching = threading.local()


class RequestWatch:
    """While open, shut down the socket of this thread's request on abort or at the deadline.

    ``stopped`` then says why ("cancel" | "timeout"); the request in flight fails or its body
    ends early, so the caller must look at ``stopped`` before trusting what it got.
    """

    def __init__(self, is_cancelled: Callable[[], bool], deadline: float):
        self.is_cancelled, self.deadline = is_cancelled, deadline
        self.stopped: str | None = None
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-watch", daemon=True)

    def __enter__(self) -> RequestWatch:
        _watching.current = self
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        _watching.current = None
        self._done.set()
        self._thread.join()

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
            if self.stopped:
                shut(connection)

    def _watch(self) -> None:
        while not self._done.wait(WATCH_POLL_SECONDS):
            if self.stopped is None:
                if self.is_cancelled():
                    self.stopped = "cancel"
                elif time.monotonic() >= self.deadline:
                    self.stopped = "timeout"
            if self.stopped is not None:
                # again on every tick: a connection still connecting has no socket to shut yet
                with self._lock:
                    if self._connection is not None:
                        shut(self._connection)


def shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        # the plain socket's shutdown: it wakes a recv blocked in another thread, TLS or not
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _attach(connection: HTTPConnection) -> None:
    watch = getattr(_watching, "current", None)
    if watch is not None:
        watch.attach(connection)


class WatchedConnection:
    """Tells this thread's RequestWatch which connection carries its request."""

    def connect(self) -> None:
        _attach(self)
        super().connect()

    def request(self, *args, **kwargs) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class WatchedHTTPConnection(WatchedConnection, HTTPConnection):
    pass


class WatchedHTTPSConnection(WatchedConnection, HTTPSConnection):
    pass


class WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


WATCHED_POOLS = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections a RequestWatch can reach."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS managers bring pools of their own
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


# --- words for operators ----------------------------------------------------------------------


def explain(error: BaseException) -> str:
    """Say why a request failed, from its root cause, without the URL (it may hold secrets)."""
    causes = list(_causes(error))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate not accepted: {cause.verify_message} "
                "(a private CA needs ca_bundle)"
            )
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or str(cause)
            hint = ""
            if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
                hint = " (does this port speak plain HTTP? try http://)"
            return f"TLS handshake failed: {reason.lower().replace('_', ' ')}{hint}"
    for cause in causes:
        if isinstance(cause, NameResolutionError | socket.gaierror):
            return "host name not found"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    if isinstance(error, requests.ConnectTimeout):
        return "no connection within the connect timeout"
    if isinstance(error, requests.ReadTimeout):
        return "no answer within the read timeout"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
    if isinstance(error, requests.exceptions.ChunkedEncodingError | requests.ConnectionError):
        return "the connection broke off"
    if isinstance(error, requests.exceptions.ContentDecodingError):
        return "the response could not be decompressed"
    # requests' own words quote the URL, which may hold a secret
    return type(error).__name__ if isinstance(error, requests.RequestException) else str(error)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        cause = stack.pop()
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        nested = [getattr(cause, "reason", None), cause.__cause__, cause.__context__, *cause.args]
        stack.extend(c for c in reversed(nested) if isinstance(c, BaseException))


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or ""), port


def safe_url(url: str, params: Any = None) -> str:
    """The URL to show in a log: no user info, every query value masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    keys = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if isinstance(params, dict):
        keys += [str(k) for k, v in params.items() if v is not None]
    query = "&".join(f"{k}=•••" for k in keys)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_at_most(response: requests.Response, limit: int) -> bytes:
    """Read the body up to ``limit`` bytes (the rest is left unread)."""
    chunks, size = [], 0
    for chunk in response.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def oauth_error(body: bytes) -> str:
    """The ``error`` and ``error_description`` of an OAuth2 error answer, if it has them."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict) or not document.get("error"):
        return ""
    described = str(document.get("error_description") or "")[:200]
    return f" ({document['error']}{': ' + described if described else ''})"
