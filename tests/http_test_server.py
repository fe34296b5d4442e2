"""A small real HTTP API on 127.0.0.1 for the http step and connector tests.

Routes check basic / bearer / API-key auth, hand out short-lived OAuth2 client-credentials
tokens (and count the requests), answer JSON, text, any status, 429/503 with Retry-After, a
huge body, a hanging response, a redirect, and echo what they received. Every request is
recorded in ``seen`` so tests assert on what really reached the server. ``tls=(cert, key)``
serves HTTPS.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

USERNAME = "ada"
PASSWORD = "basic-Pa55word-9f2c"
BEARER_TOKEN = "bearer-Tok3n-71b0"
API_KEY = "api-K3y-5d1e"
API_KEY_HEADER = "X-Api-Token"
CLIENT_ID = "nomaflow"
CLIENT_SECRET = "client-S3cret-c4a8"
CREDENTIAL_HEADERS = {"authorization", API_KEY_HEADER.lower()}
MB = 1024 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class HttpTestServer:
    """The API in a thread; ``url`` is its base URL once started."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self.seen: list[Seen] = []
        self.token_requests = 0
        self.token_lifetime = 60  # seconds; tests shorten it
        self.tokens: dict[str, float] = {}  # issued token -> expiry (monotonic)
        self.hits: dict[str, int] = {}
        self.huge_bytes_sent = 0
        self.hanging = threading.Event()  # set while a /hang request is held
        self.release = threading.Event()  # ends every held /hang request
        self.lock = threading.Lock()
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True, ssl_context=tls)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HttpTestServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def _build(self) -> Flask:
        app = Flask(__name__)

        @app.before_request
        def record():
            with self.lock:
                self.seen.append(
                    Seen(
                        request.method,
                        request.path,
                        dict(request.headers),
                        request.args.to_dict(),
                        request.get_data(cache=True),
                    )
                )

        @app.get("/basic")
        def basic():
            expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {expected}":
                return denied('Basic realm="test"')
            return jsonify(user=USERNAME)

        @app.get("/bearer")
        def bearer():
            if request.headers.get("Authorization") != f"Bearer {BEARER_TOKEN}":
                return denied("Bearer")
            return jsonify(user="bearer-client")

        @app.get("/api-key")
        def api_key():
            if request.headers.get(API_KEY_HEADER) != API_KEY:
                return jsonify(error="bad or missing API key"), 401
            return jsonify(user="key-holder")

        @app.post("/oauth/token")
        def token():
            with self.lock:
                self.token_requests += 1
            if request.form.get("grant_type") != "client_credentials":
                return jsonify(error="unsupported_grant_type"), 400
            if client_credentials() != (CLIENT_ID, CLIENT_SECRET):
                return jsonify(error="invalid_client", error_description="bad client"), 401
            issued = f"at-{secrets.token_hex(12)}"
            with self.lock:
                self.tokens[issued] = time.monotonic() + self.token_lifetime
            return jsonify(access_token=issued, token_type="Bearer", expires_in=self.token_lifetime)

        @app.route("/oauth/data", methods=["GET", "POST"])
        def oauth_data():
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            with self.lock:
                valid = self.tokens.get(given, 0) > time.monotonic()
            if not valid:
                return denied('Bearer error="invalid_token"')
            return jsonify(items=[{"id": 1, "name": "first"}, {"id": 2, "name": "second"}])

        @app.route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        @app.route("/echo/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def echo(rest: str = ""):
            return jsonify(
                method=request.method,
                path=request.path,
                query=request.args.to_dict(flat=False),
                headers={
                    k: v for k, v in request.headers.items() if k.lower() not in CREDENTIAL_HEADERS
                },
                content_type=request.content_type,
                json=request.get_json(silent=True),
                form=request.form.to_dict(flat=False),
                body=request.get_data(as_text=True),
            )

        @app.get("/items")
        def items():
            return jsonify(data={"items": [{"id": 7, "name": "seven"}, {"id": 8, "name": "8"}]})

        @app.get("/text")
        def text():
            return Response("hello, plain world\n", mimetype="text/plain")

        @app.get("/html")
        def html():
            return Response("<html><body>Not an API</body></html>", mimetype="text/html")

        @app.get("/status/<int:code>")
        def status(code: int):
            return Response(f"status {code} body: something went wrong", status=code)

        @app.get("/busy/<key>")
        def busy(key: str):
            """The first hit of each key answers 429 (or ?status=503) with Retry-After."""
            with self.lock:
                self.hits[key] = self.hits.get(key, 0) + 1
                hit = self.hits[key]
            if hit == 1:
                after = request.args.get("after", "1")
                code = int(request.args.get("status", "429"))
                return Response("slow down", status=code, headers={"Retry-After": after})
            return jsonify(attempt=hit)

        @app.get("/huge")
        def huge():
            """1 GB of JSON-ish bytes, streamed; ``?length=1`` announces it in Content-Length."""
            total = 1024 * MB

            def chunks():
                block = b"x" * MB
                for _ in range(total // MB):
                    with self.lock:
                        self.huge_bytes_sent += len(block)
                    yield block

            headers = {"Content-Length": str(total)} if request.args.get("length") else {}
            return Response(chunks(), mimetype="application/octet-stream", headers=headers)

        @app.get("/redirect")
        def redirect():
            return Response("", status=302, headers={"Location": request.args["to"]})

        @app.get("/hang")
        def hang():
            self.hanging.set()
            self.release.wait(60)
            return jsonify(late=True)

        return app


def denied(challenge: str):
    return Response(
        '{"error": "unauthorized"}',
        status=401,
        mimetype="application/json",
        headers={"WWW-Authenticate": challenge},
    )


def client_credentials() -> tuple[str, str] | tuple[None, None]:
    """The client's id and secret, from HTTP Basic or from the form (client_secret_post)."""
    if request.authorization and request.authorization.type == "basic":
        return request.authorization.username, request.authorization.password
    return request.form.get("client_id"), request.form.get("client_secret")


def http_values(server: HttpTestServer, auth: str = "none", **values: Any) -> dict[str, Any]:
    """Values of an http connector to ``server`` with the right credentials for ``auth``."""
    credentials = {
        "none": {},
        "basic": {"username": USERNAME, "password": PASSWORD},
        "bearer": {"token": BEARER_TOKEN},
        "api_key": {"header": API_KEY_HEADER, "token": API_KEY},
        "oauth2": {
            "token_url": f"{server.url}/oauth/token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "read",
        },
    }[auth]
    return {"base_url": server.url, "auth": auth, **credentials, **values}
