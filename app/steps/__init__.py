"""The registry of step types: an explicit dict, one module per kind (DESIGN §5)."""

from __future__ import annotations

from app.steps.base import StepType
from app.steps.call_job import CallJobStep
from app.steps.http import HttpStep
from app.steps.ldap_sync import LdapSync
from app.steps.maintenance import MaintenanceStep
from app.steps.python import PythonStep
from app.steps.sql_copy import SqlCopyStep
from app.steps.sql_query import SqlQueryStep

STEP_TYPES: dict[str, StepType] = {
    t.kind: t
    for t in (
        SqlQueryStep(),
        SqlCopyStep(),
        PythonStep(),
        HttpStep(),
        LdapSync(),
        CallJobStep(),
        MaintenanceStep(),
    )
}


def get_step_type(kind: str) -> StepType:
    """Return the step type for ``kind``; LookupError names the known kinds."""
    try:
        return STEP_TYPES[kind]
    except KeyError:
        known = ", ".join(sorted(STEP_TYPES))
        raise LookupError(f"unknown step type {kind!r} (known: {known})") from None
