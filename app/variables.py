"""Variables: named values for templates (``vars.X``) and secrets (``secrets.X``) (DESIGN §3).

A secret's value is sealed with the vault and write-only: nothing here returns it in clear but
the export, which writes an ``enc:`` token only the same keys can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.crypto import ENC_PREFIX, SecretsVault
from app.models import User, Variable

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # templates say vars.NAME
NAME_MAX = 100  # the column size


class VariableError(ValueError):
    """A variable cannot be saved or deleted; ``fields`` maps fields to problems."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message + "".join(f"; {k}: {v}" for k, v in (fields or {}).items()))
        self.message = message
        self.fields = fields or {}


@dataclass(frozen=True)
class VariableView:
    """What a page may show: a secret's value is None, always."""

    name: str
    secret: bool
    value: str | None
    updated_at: datetime


def list_variables(db: Session) -> list[VariableView]:
    """Return every variable by name, secrets without their values."""
    rows = db.scalars(sa.select(Variable).order_by(Variable.name))
    return [_view(variable) for variable in rows]


def get_variable(db: Session, name: str) -> VariableView | None:
    variable = _find(db, name)
    return None if variable is None else _view(variable)


def check_variable(name: Any, value: Any, secret: Any) -> dict[str, str]:
    """Return the problems of a variable's shape by field (no database, no keys)."""
    problems = {}
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems["name"] = "use letters, digits and _ (not starting with a digit)"
    elif len(name) > NAME_MAX:
        problems["name"] = f"use at most {NAME_MAX} characters"
    if value is not None and not isinstance(value, str):
        problems["value"] = "expected text"
    if not isinstance(secret, bool):
        problems["secret"] = "expected true or false"
    return problems


def set_variable(
    db: Session,
    vault: SecretsVault,
    name: str,
    value: str | None,
    *,
    secret: bool = False,
    user: User | None = None,
    ip: str = "",
) -> tuple[Variable, str]:
    """Create or update a variable; return it and "created" | "updated" | "unchanged".

    A secret left empty keeps the stored value (pages never show it), and a plain variable
    turned secret keeps its value, sealed. An ``enc:`` token from an export is unsealed with
    these keys. A secret cannot turn plain without a new value: that would reveal it.
    """
    problems = check_variable(name, value, secret)
    if problems:
        raise VariableError(f"variable {name} is not valid", problems)
    existing = _find(db, name)
    given = value not in (None, "")
    if given and value.startswith(ENC_PREFIX):
        if not secret:
            raise VariableError(
                "an enc: token is a secret", {"value": "add secret = true to read an enc: token"}
            )
        value = _from_export(vault, value)
    if secret:
        before = _clear_value(vault, existing)
        if given:
            clear = value
        elif existing is not None:
            clear = before
        else:
            raise VariableError(f"variable {name} is not valid", {"value": "required"})
    else:
        if existing is not None and existing.secret and not given:
            raise VariableError(
                f"variable {name} is not valid",
                {"value": "give the value again: a secret is never shown, so it cannot turn plain"},
            )
        before = existing.value if existing is not None and not existing.secret else None
        clear = value or ""
    if existing is None:
        variable = Variable(name=name)
        db.add(variable)
        outcome = "created"
    else:
        variable = existing
        unchanged = existing.secret == secret and before == clear
        outcome = "unchanged" if unchanged else "updated"
    if outcome == "unchanged":
        return variable, outcome
    value_changed = existing is None or before != clear
    variable.secret = secret
    variable.value = vault.seal(clear) if secret else clear
    record_event(
        db,
        f"variable.{'create' if outcome == 'created' else 'update'}",
        user=user,
        username=None if user else "system",
        target_type="variable",
        target_id=name,
        ip=ip,
        detail={"secret": secret, "value_changed": value_changed},
    )
    db.flush()
    return variable, outcome


def delete_variable(db: Session, name: str, user: User | None = None, ip: str = "") -> None:
    """Delete a variable; VariableError when there is none."""
    variable = _find(db, name)
    if variable is None:
        raise VariableError(f"no variable {name!r}")
    db.delete(variable)
    record_event(
        db,
        "variable.delete",
        user=user,
        username=None if user else "system",
        target_type="variable",
        target_id=name,
        ip=ip,
    )
    db.flush()


def export_variables(
    db: Session, vault: SecretsVault, names: set[str] | None = None
) -> list[dict[str, Any]]:
    """Return variables (default: all) as TOML tables by name; secrets as enc: tokens."""
    query = sa.select(Variable).order_by(Variable.name)
    if names is not None:
        query = query.where(Variable.name.in_(names))
    tables = []
    for variable in db.scalars(query):
        if variable.secret:
            token = vault.export_token(vault.unseal(variable.value))
            tables.append({"name": variable.name, "secret": True, "value": token})
        else:
            tables.append({"name": variable.name, "value": variable.value})
    return tables


def _find(db: Session, name: str) -> Variable | None:
    return db.scalar(sa.select(Variable).where(Variable.name == name))


def _view(variable: Variable) -> VariableView:
    value = None if variable.secret else variable.value
    return VariableView(variable.name, variable.secret, value, variable.updated_at)


def _clear_value(vault: SecretsVault, variable: Variable | None) -> str | None:
    if variable is None or not variable.secret:
        return None if variable is None else variable.value
    try:
        return vault.unseal(variable.value)
    except ValueError as error:
        raise VariableError("cannot read the stored secret", {"value": str(error)}) from None


def _from_export(vault: SecretsVault, token: str) -> str:
    try:
        value = vault.read_export(token)
    except ValueError as error:
        raise VariableError("cannot read an exported secret", {"value": str(error)}) from None
    if not isinstance(value, str):
        raise VariableError("cannot read an exported secret", {"value": "the token holds no text"})
    return value
