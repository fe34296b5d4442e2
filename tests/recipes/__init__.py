"""The seed's recipes (examples/recipes.toml) as TOML files pointed at the test fixtures.

``recipe_text`` fills the ``${name}`` placeholders (fixture URLs, ports, credentials) into a
file; Jinja's ``{{ ... }}`` is left alone, and a literal dollar sign is written twice.
``RecipeApi`` is the small HTTP server the recipes talk to: the tests' HttpTestServer
(auth-checking routes, every request recorded in ``seen``) plus a bearer-protected
``/releases`` feed and a webhook receiver. ``SmtpSink`` is the mail relay of the recipes'
email channel: a real aiosmtpd server keeping every message it receives.
"""

from __future__ import annotations

import json
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from string import Template

from aiosmtpd.controller import Controller
from flask import Response, jsonify, request

from tests.http_test_server import BEARER_TOKEN, HttpTestServer, denied
from tests.server_process import free_port

RECIPES = Path(__file__).resolve().parent
HOOK_TOKEN = "hook-T0ken-3e9a-never-logged"


def recipe_text(name: str, **values: object) -> str:
    """The recipe file ``name`` with every ``${placeholder}`` filled (a missing one raises)."""
    return Template((RECIPES / name).read_text()).substitute(
        {key: str(value) for key, value in values.items()}
    )


class RecipeApi(HttpTestServer):
    """The releases API of recipe 2 and the webhook receiver of recipe 1, in one thread."""

    def __init__(self):
        self.releases: list[dict] = []  # what GET /releases answers; tests change it
        super().__init__()

    def hooks(self) -> list[dict]:
        """The JSON bodies the webhook received, in order."""
        return [json.loads(seen.body) for seen in self.requests_to("/hooks/reporting")]

    def _build(self):
        app = super()._build()

        @app.get("/releases")
        def releases():
            if request.headers.get("Authorization") != f"Bearer {BEARER_TOKEN}":
                return denied("Bearer")
            return jsonify(self.releases)

        @app.post("/hooks/reporting")
        def reporting_hook():
            if request.headers.get("X-Hook-Token") != HOOK_TOKEN:
                return jsonify(error="bad hook token"), 403
            if request.get_json(silent=True) is None:
                return jsonify(error="expected a JSON body"), 400
            return Response(status=204)

        return app


class SmtpSink:
    """A real SMTP server on a free local port; ``messages`` holds what it received, in order."""

    def __init__(self):
        self.messages: list[EmailMessage] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 15) -> list[EmailMessage]:
        """Wait until ``count`` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            came = len(self.messages)
            assert time.monotonic() < deadline, f"{count} emails expected, {came} came"
            time.sleep(0.05)
        return list(self.messages)
