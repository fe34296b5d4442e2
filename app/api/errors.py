"""The API's one error shape: ``{"error": code, "message": text, "fields": {name: problem}}``."""

from __future__ import annotations

import json
from typing import Any

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

MAX_BODY_BYTES = 1024 * 1024  # a job definition or a run's parameters: far below this
MAX_ID = 2**63 - 1  # ids are BIGINT: a larger number names nothing (and would overflow drivers)

# the names Werkzeug gives these statuses, so routing errors (app/web/__init__.py) read alike
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_entity_too_large",
    422: "unprocessable_entity",
}


class ApiError(Exception):
    """Answer the request with this status and a JSON error; nothing was changed."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or {}


def error_response(error: ApiError):
    body = {"error": CODES.get(error.status, "error"), "message": error.message}
    body["fields"] = error.fields
    return jsonify(body), error.status


def http_error_response(error: HTTPException):
    """Answer an HTTP error raised in an API view (403 of ``requires``, 413 of a big body)."""
    message = error.description or error.name
    response, status = error_response(ApiError(error.code or 500, message))
    if error.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nomaflow"'
    return response, status


def read_json_object(empty_ok: bool = True) -> dict[str, Any]:
    """Return the request body as a JSON object; 400 when it is not one, 413 when too big."""
    raw = request.get_data(cache=True)  # over the blueprint's limit: 413 from Werkzeug
    if not raw.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "The body must be a JSON object.", {"body": "empty"})
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"The body is not valid JSON: {error}", {"body": "not JSON"}) from None
    if not isinstance(value, dict):
        raise ApiError(400, "The body must be a JSON object.", {"body": "not an object"})
    return value


def query_int(name: str, default: int | None, minimum: int, maximum: int | None = None):
    """Read an integer query argument; 422 naming it when it is not a whole number in range."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        problem = "not a whole number"
        raise ApiError(422, f"{name}: {problem}", {name: problem}) from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(422, f"{name} must be {bounds}", {name: f"must be {bounds}"})
    return value
