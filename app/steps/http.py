"""The ``http`` step: one request, optionally through an http connector (base URL and auth).

Config (DESIGN §8): connector, method, url, headers, query, one of json / body / form, expect,
capture, json_path, save_to, max_bytes. Output: ``{"status", "elapsed_ms", "json" | "text"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests

from app.connectors.http_client import (
    CONNECT_TIMEOUT_SECONDS,
    HttpClient,
    HttpClientError,
    RequestWatch,
    explain,
    header_text,
    safe_url,
)
from app.steps.base import (
    ConfigField,
    StepCanceled,
    StepContext,
    StepFailed,
    StepRetryLater,
    StepTimedOut,
    StepType,
)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
CAPTURES = ("json", "text", "none")
BODY_KINDS = ("json", "body", "form")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 64 * 1024  # text kept as output; save_to keeps everything
OUTPUT_LIMIT_BYTES = 1024 * 1024  # the engine's limit for a step's output (execution.py)
MAX_RETRY_AFTER_SECONDS = 3600.0  # a server asking for a day must not park the run for a day
EXCERPT_CHARS = 300
CHUNK_BYTES = 64 * 1024
JSON_PATH = re.compile(r"^(?:[^.\[\]]+|\[\d+\])(?:\.[^.\[\]]+|\[\d+\])*$")
JSON_PATH_PART = re.compile(r"[^.\[\]]+|\[\d+\]")


class HttpStep(StepType):
    kind = "http"
    label = "HTTP request"
    fields = (
        ConfigField("connector", "string", help="http connector: base URL and auth (optional)"),
        ConfigField("method", "string", help=f"{' | '.join(METHODS)} (GET)"),
        ConfigField(
            "url",
            "string",
            required=True,
            templated=True,
            help="absolute, or relative to the connector's base URL",
        ),
        ConfigField("headers", "table", templated=True, help="extra request headers"),
        ConfigField("query", "table", templated=True, help="query string parameters"),
        ConfigField("json", "table", templated=True, help="a JSON body"),
        ConfigField("body", "text", templated=True, help="a raw body"),
        ConfigField("form", "table", templated=True, help="a form body (urlencoded)"),
        ConfigField("expect", "list", help="accepted statuses (any 2xx)"),
        ConfigField("capture", "string", help="json | text | none (json)"),
        ConfigField("json_path", "string", help="keep only this part of the JSON: data.items[0]"),
        ConfigField("save_to", "string", templated=True, help="file under <instance>/data/"),
        ConfigField("max_bytes", "int", help=f"largest response read ({DEFAULT_MAX_BYTES:,})"),
    )

    def validate(self, config: dict[str, Any]) -> dict[str, str]:
        problems = super().validate(config)
        connector = config.get("connector")
        if connector is not None and (not isinstance(connector, str) or not connector.strip()):
            problems["connector"] = "expected a connector name"
        method = config.get("method") or "GET"
        if not isinstance(method, str) or method.upper() not in METHODS:
            problems["method"] = f"expected one of {', '.join(METHODS)}"
        if "url" not in problems:
            problem = url_problem(config.get("url"), bool(connector))
            if problem:
                problems["url"] = problem
        for name in ("headers", "query", "form"):
            problem = table_problem(config.get(name), lists=name != "headers")
            if problem:
                problems[name] = problem
        if config.get("body") is not None and not isinstance(config["body"], str):
            problems["body"] = "expected text"
        given = [kind for kind in BODY_KINDS if config.get(kind) is not None]
        if len(given) > 1:
            problems[given[1]] = f"give one body: {' or '.join(given)}, not both"
        problem = expect_problem(config.get("expect"))
        if problem:
            problems["expect"] = problem
        capture = config.get("capture") or "json"
        if capture not in CAPTURES:
            problems["capture"] = f"expected one of {', '.join(CAPTURES)}"
        json_path = config.get("json_path")
        if json_path is not None:
            if not isinstance(json_path, str) or not JSON_PATH.match(json_path):
                problems["json_path"] = "expected a path like data.items[0].id"
            elif capture != "json":
                problems["json_path"] = "needs capture = json"
        if config.get("save_to") is not None:
            problem = save_to_problem(config["save_to"])
            if problem:
                problems["save_to"] = problem
        max_bytes = config.get("max_bytes")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            problems["max_bytes"] = "expected a whole number of bytes >= 1"
        return problems

    def connector_refs(self, config: dict[str, Any]) -> list[tuple[str, str, str]]:
        name = config.get("connector")
        return [("connector", name, "http")] if isinstance(name, str) and name else []

    def run(self, config: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Send the request and return status, time and the captured body.

        Raises StepFailed (unexpected status, not JSON, too large, unreachable),
        StepRetryLater (429/503 with Retry-After), StepTimedOut at ctx.deadline and
        StepCanceled once ctx.is_cancelled() — both cut the request off mid-flight.
        """
        problems = self.validate(config)
        if problems:
            raise StepFailed("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        if ctx.is_cancelled():
            raise StepCanceled("aborted")
        client, owned = connector_client(config.get("connector"), ctx)
        try:
            return Exchange(client, config, ctx).perform()
        finally:
            if owned:
                client.close()


def connector_client(name: str | None, ctx: StepContext) -> tuple[HttpClient, bool]:
    """Return the client to use, and whether this step owns it (and must close it)."""
    if not name:
        return HttpClient({}), True
    if ctx.connectors is None:
        raise StepFailed(f"connector {name!r}: no connectors in this context")
    try:
        return ctx.connectors.cached_client("http", name, HttpClient, HttpClient.close), False
    except LookupError as error:
        raise StepFailed(str(error)) from None


class Exchange:
    """One request and its response, read under the step's deadline and abort."""

    def __init__(self, client: HttpClient, config: dict[str, Any], ctx: StepContext):
        self.client, self.config, self.ctx = client, config, ctx
        self.method = (config.get("method") or "GET").upper()
        try:
            self.url = client.url_for(config["url"])
        except HttpClientError as error:
            raise StepFailed(str(error)) from None
        self.query = query_values(config.get("query"))
        self.shown = safe_url(self.url, self.query)
        self.capture = config.get("capture") or "json"
        self.max_bytes = config.get("max_bytes") or DEFAULT_MAX_BYTES
        self.watch: RequestWatch | None = None

    def perform(self) -> dict[str, Any]:
        ctx = self.ctx
        ctx.log.info(f"{self.method} {self.shown}")
        started = time.monotonic()
        with RequestWatch(ctx.is_cancelled, ctx.deadline) as self.watch:
            response = self.send()
            with response:
                ctx.metrics["status"] = response.status_code
                self.check_status(response, started)
                content, size, saved = self.read(response)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        ctx.metrics["bytes"] = size
        status = f"HTTP {response.status_code} {response.reason}"
        where = f", saved to data/{saved}" if saved else ""
        ctx.log.info(f"{status} in {elapsed_ms} ms, {size:,} bytes{where}")
        output: dict[str, Any] = {"status": response.status_code, "elapsed_ms": elapsed_ms}
        if self.capture == "json":
            output["json"] = self.parse_json(content, response)
        elif self.capture == "text":
            output["text"] = self.text(content, response)
        if saved:
            output["saved_to"] = saved
        return output

    def send(self) -> requests.Response:
        config = self.config
        headers = {str(k): header_text(v) for k, v in (config.get("headers") or {}).items()}
        body: dict[str, Any] = {}
        if config.get("json") is not None:
            body["data"] = json.dumps(config["json"], default=plain_value).encode()
            headers.setdefault("Content-Type", "application/json")
        elif config.get("body") is not None:
            body["data"] = str(config["body"]).encode()
        elif config.get("form") is not None:
            body["data"] = query_values(config["form"])
        try:
            return self.client.request(
                self.method,
                self.url,
                headers=headers,
                params=self.query,
                timeout=self.timeouts(),
                **body,
            )
        except HttpClientError as error:
            self.raise_if_stopped()
            raise StepFailed(self.client.mask(str(error))) from None
        except requests.RequestException as error:
            self.raise_if_stopped()
            raise StepFailed(self.failure(error)) from None

    def timeouts(self) -> tuple[float, float]:
        left = self.ctx.deadline - time.monotonic()
        if left <= 0:
            raise StepTimedOut(f"timed out after {self.ctx.timeout_seconds:g}s")
        # the connector's timeout_seconds bounds each wait for data; the step's the whole step
        limit = self.client.timeout_seconds
        read = min(left, limit) if limit else left
        return (min(CONNECT_TIMEOUT_SECONDS, read), read)

    def failure(self, error: requests.RequestException) -> str:
        host = urlsplit(self.url).netloc.rsplit("@", 1)[-1]
        said = f"{self.method} {self.shown}"
        if isinstance(error, requests.ReadTimeout) and self.client.timeout_seconds:
            return (
                f"{said}: no answer from {host} within {self.client.timeout_seconds:g}s "
                "(the connector's timeout_seconds)"
            )
        # requests' own words would quote the value or the URL, which may hold a secret
        if isinstance(error, requests.exceptions.InvalidHeader):
            return f"{said}: a header value is not valid (a line break, or not text)"
        if isinstance(error, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
            return f"{said}: not a valid http(s) URL"
        return f"{said}: cannot reach {host}: {explain(error)}"

    def raise_if_stopped(self) -> None:
        stopped = self.watch.stopped if self.watch else None
        if stopped == "cancel" or self.ctx.is_cancelled():
            raise StepCanceled("aborted")
        if stopped == "timeout" or time.monotonic() >= self.ctx.deadline:
            raise StepTimedOut(
                f"timed out after {self.ctx.timeout_seconds:g}s ({self.method} {self.shown})"
            )

    def check_status(self, response: requests.Response, started: float) -> None:
        status = response.status_code
        expect = self.config.get("expect")
        if (status in expect) if expect else (200 <= status < 300):
            return
        elapsed_ms = round((time.monotonic() - started) * 1000)
        self.ctx.log.info(f"HTTP {status} {response.reason} in {elapsed_ms} ms")
        wanted = ", ".join(str(s) for s in expect) if expect else "2xx"
        said = f"HTTP {status} {response.reason} from {self.method} {self.shown}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in (429, 503) and retry_after is not None:
            raise StepRetryLater(
                f"{said}; the server asks to retry after {retry_after:g}s", retry_after
            )
        hint = ""
        if status in (401, 403) and self.client.auth != "none":
            hint = " (check the connector's credentials)"
        failure = StepFailed(f"{said} (expected {wanted}){hint}: {self.excerpt(response)}")
        failure.retryable = status not in (401, 403)  # refused credentials stay refused
        raise failure

    def excerpt(self, response: requests.Response) -> str:
        try:
            head = next(response.iter_content(EXCERPT_CHARS * 4), b"")
        except requests.RequestException:
            self.raise_if_stopped()
            head = b""
        text = " ".join(head.decode(response.encoding or "utf-8", "replace").split())
        text = self.client.mask(text)
        if len(text) > EXCERPT_CHARS:
            text = text[:EXCERPT_CHARS] + "…"
        return text or "(empty body)"

    def read(self, response: requests.Response) -> tuple[bytes, int, str | None]:
        """Stream the body within max_bytes; return what capture keeps, the size, the file."""
        declared = response.headers.get("Content-Length", "")
        if self.method != "HEAD" and declared.isdigit() and int(declared) > self.max_bytes:
            raise StepFailed(self.too_large(f"announces {int(declared):,} bytes"))
        keep = self.capture != "none"
        save_to = self.config.get("save_to")
        chunks, size = [], 0
        with self.target_file(save_to) as sink:
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise StepFailed(self.too_large(f"went past {self.max_bytes:,} bytes"))
                    if keep:
                        chunks.append(chunk)
                    if sink is not None:
                        sink.write(chunk)
            except requests.RequestException as error:
                self.raise_if_stopped()
                raise StepFailed(
                    f"{self.method} {self.shown}: the response broke off after {size:,} bytes: "
                    f"{explain(error)}"
                ) from None
            if self.watch is not None and self.watch.stopped:
                self.raise_if_stopped()  # a cut-off body can look complete: never keep it
        return b"".join(chunks), size, (save_to if sink is not None else None)

    def too_large(self, what: str) -> str:
        return (
            f"{self.method} {self.shown}: the response {what}; max_bytes is "
            f"{self.max_bytes:,} (stopped reading)"
        )

    @contextlib.contextmanager
    def target_file(self, save_to: str | None):
        """Yield a file to stream into, renamed to save_to only once the body is complete."""
        if not save_to:
            yield None
            return
        target = data_path(self.ctx.instance_path, save_to)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as sink:
                yield sink
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    def parse_json(self, content: bytes, response: requests.Response) -> Any:
        if not content.strip():
            return None  # 204 No Content and friends: nothing to parse is not an error
        try:
            document = json.loads(content)
        except ValueError:
            kind = response.headers.get("Content-Type") or "no Content-Type"
            raise StepFailed(
                f"{self.method} {self.shown}: the response is not JSON ({kind}); "
                f'use capture = "text" or "none": {self.client.mask(excerpt_of(content))}'
            ) from None
        path = self.config.get("json_path")
        if path:
            document = follow_json_path(document, path)
        size = len(json.dumps(document))
        if size > OUTPUT_LIMIT_BYTES:
            raise StepFailed(
                f"the JSON kept as output is {size:,} bytes; a step's output holds at most "
                f"{OUTPUT_LIMIT_BYTES:,}: keep a part with json_path, or save_to a file with "
                'capture = "none"'
            )
        return document

    def text(self, content: bytes, response: requests.Response) -> str:
        try:
            text = content.decode(response.encoding or "utf-8", "replace")
        except LookupError:  # an encoding Python does not know
            text = content.decode("utf-8", "replace")
        if len(text) > MAX_TEXT_CHARS:
            self.ctx.log.warning(
                f"text output cut to {MAX_TEXT_CHARS:,} of {len(text):,} characters "
                "(save_to keeps the whole body)"
            )
            text = text[:MAX_TEXT_CHARS]
        return text


def url_problem(url: Any, has_connector: bool) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "expected a URL"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 — raises on a port that is not a number
    except ValueError as error:
        if "{{" in url or "{%" in url:
            return None  # decided once the run renders it
        return f"not a well-formed URL: {error}"
    if parts.scheme:
        if parts.scheme not in ("http", "https"):
            return "expected an http:// or https:// URL"
        if not parts.netloc:
            return f"expected a host after {parts.scheme}://"
        return None
    if url.lstrip().startswith(("{{", "{%")):
        return None  # the whole URL comes from a template: decided once the run renders it
    if not has_connector:
        return "a relative URL needs a connector (its base URL); or give http(s)://host/…"
    return None


def table_problem(value: Any, lists: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "expected a table of names and values"
    for key, item in value.items():
        items = item if lists and isinstance(item, list) else [item]
        if not all(is_plain(i) for i in items):
            return f"{key}: expected text, a number, true/false" + (" or a list" if lists else "")
    return None


def is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | date)


def expect_problem(expect: Any) -> str | None:
    if expect is None:
        return None
    if not isinstance(expect, list) or not expect:
        return "expected a list of HTTP statuses, e.g. [200, 201]"
    for status in expect:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            return f"{status!r} is not an HTTP status (100-599)"
    return None


def save_to_problem(path: Any) -> str | None:
    if not isinstance(path, str) or not path.strip():
        return "expected a file path under <instance>/data/"
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or path.startswith("~") or ":" in pure.parts[0]:
        return "must stay inside <instance>/data/: a relative path without .."
    return None


def data_path(instance_path: str, save_to: str) -> Path:
    """Resolve save_to under <instance>/data/; StepFailed when it would land elsewhere."""
    problem = save_to_problem(save_to)
    data = (Path(instance_path) / "data").resolve()
    target = (data / save_to).resolve()
    if problem or not target.is_relative_to(data) or target == data:
        raise StepFailed(f"save_to {save_to!r}: {problem or 'must stay inside <instance>/data/'}")
    return target


def query_values(table: dict[str, Any] | None) -> dict[str, Any] | None:
    """Query or form values as text: true/false, ISO dates; None drops the name."""
    if not table:
        return None
    return {
        str(k): [plain_value(i) for i in v] if isinstance(v, list) else plain_value(v)
        for k, v in table.items()
        if v is not None
    }


def plain_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str) or value is None:
        return value
    return str(value)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(when.tzinfo)).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def follow_json_path(document: Any, path: str) -> Any:
    """Walk ``data.items[0].id`` (a number after a dot indexes a list too)."""
    current, walked = document, "$"
    for part in JSON_PATH_PART.findall(path):
        index = int(part[1:-1]) if part.startswith("[") else None
        if index is None and isinstance(current, list) and part.isdigit():
            index = int(part)
        if index is not None:
            if not isinstance(current, list) or index >= len(current):
                raise StepFailed(f"json_path {path!r}: {walked} has no item [{index}]")
            current, walked = current[index], f"{walked}[{index}]"
        else:
            if not isinstance(current, dict) or part not in current:
                raise StepFailed(f"json_path {path!r}: {walked} has no key {part!r}")
            current, walked = current[part], f"{walked}.{part}"
    return current


def excerpt_of(content: bytes) -> str:
    text = " ".join(content[: EXCERPT_CHARS * 4].decode("utf-8", "replace").split())
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")
