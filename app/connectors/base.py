"""What every connector kind is: a field schema (what the form, TOML and API name), validation,
and a connection test. Kinds live one per module; the registry is app/connectors/__init__.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConnectorTestFailed(Exception):
    """Test connection did not work; the message names the cause (never a secret)."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"  # string | int | bool | table | list | choice
    required: bool = False
    secret: bool = False  # encrypted at rest, write-only in the UI, exported as enc: tokens
    default: Any = None
    choices: tuple[str, ...] = ()
    help: str = ""


@dataclass
class ConnectorKind:
    kind: str = ""
    label: str = ""
    fields: tuple[Field, ...] = field(default_factory=tuple)

    @property
    def secret_fields(self) -> set[str]:
        return {f.name for f in self.fields if f.secret}

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def with_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        return {f.name: f.default for f in self.fields if f.default is not None} | {
            k: v for k, v in values.items() if v is not None
        }

    def validate(self, values: dict[str, Any]) -> dict[str, str]:
        """Return problems by field for a complete set of values (secrets included)."""
        problems = {}
        for name in values:
            if self.field(name) is None:
                known = ", ".join(f.name for f in self.fields)
                problems[name] = f"unknown field for a {self.kind} connector (known: {known})"
        for f in self.fields:
            value = values.get(f.name)
            if value in (None, "", [], {}):
                if f.required:
                    problems[f.name] = "required"
                continue
            problem = _type_problem(f, value)
            if problem:
                problems[f.name] = problem
        if not problems:
            problems.update(self.check(values))
        return problems

    def check(self, values: dict[str, Any]) -> dict[str, str]:
        """Kind-specific checks after the field types are right (override)."""
        return {}

    def test(self, values: dict[str, Any]) -> str:
        """Try the connection within the connector's timeout; return what worked."""
        raise NotImplementedError


def _type_problem(f: Field, value: Any) -> str | None:
    if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return "expected a whole number"
    if f.type == "bool" and not isinstance(value, bool):
        return "expected true or false"
    if f.type in ("string", "choice") and not isinstance(value, str):
        return "expected text"
    if f.type == "choice" and value not in f.choices:
        return f"expected one of {', '.join(f.choices)}"
    if f.type == "table" and not isinstance(value, dict):
        return "expected a table of names and values"
    if f.type == "list" and not isinstance(value, list | str):
        return "expected a list"
    return None
