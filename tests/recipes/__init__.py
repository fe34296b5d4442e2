"""The seed's recipes (examples/recipes.toml) as TOML files pointed at the test fixtures.

``recipe_text`` fills the ``${name}`` placeholders (fixture URLs, ports, credentials) into a
file; Jinja's ``{{ ... }}`` is left alone, and a literal dollar sign is written twice.
``RecipeApi`` is the small HTTP server the recipes talk to: the tests' HttpTestServer
(auth-checking routes, every request recorded in ``seen``) plus a bearer-protected
``/releases`` feed and a webhook receiver.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from flask import Response, jsonify, request

from tests.http_test_server import BEARER_TOKEN, HttpTestServer, denied

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
