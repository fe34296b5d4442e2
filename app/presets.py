"""Named sets of Run-with-parameters values kept on the job (``Job.presets``).

A preset is ``{"params": {name: value}, "log_level": str, "disabled_steps": [str]}``. Secret
parameters are never stored: they are dropped on save, so a preset can be shown to anyone who
may run the job.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from app.audit import record_event
from app.engine.dispatch import LOG_LEVELS
from app.engine.params import coerce, secret_names
from app.models import Job, User

PRESET_NAME = re.compile(r"^[\w .-]{1,60}$")


class PresetError(ValueError):
    """The preset was not saved; ``fields`` maps each bad input to its problem."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def save_preset(
    db: Session,
    job: Job,
    name: str,
    params: dict[str, Any],
    log_level: str | None = None,
    disabled_steps: list[str] | tuple[str, ...] = (),
    user: User | None = None,
    ip: str = "",
) -> dict[str, Any]:
    """Store (or replace) the preset ``name`` on the job; raise PresetError on bad input."""
    name = name.strip()
    problems: dict[str, str] = {}
    if not PRESET_NAME.match(name):
        problems["preset_name"] = "give a name of 1-60 letters, digits, spaces, . _ -"
    declared = {p["name"]: p for p in job.params or []}
    hidden = secret_names(job.params or [])
    kept: dict[str, Any] = {}
    for key, value in params.items():
        if key in hidden or key not in declared or value in (None, ""):
            continue  # secrets are never stored; empty means "use the default"
        try:
            coerce(declared[key], value)
        except ValueError as error:
            problems[key] = str(error)
            continue
        kept[key] = value
    if log_level and log_level not in LOG_LEVELS:
        problems["log_level"] = f"expected one of {', '.join(LOG_LEVELS)}"
    steps = {step.name for step in job.steps}
    if set(disabled_steps) - steps:
        problems["steps"] = "unknown steps: " + ", ".join(sorted(set(disabled_steps) - steps))
    if problems:
        raise PresetError(problems)
    preset = {"params": kept, "log_level": log_level, "disabled_steps": list(disabled_steps)}
    job.presets = {**(job.presets or {}), name: preset}  # a new dict: JSON columns track by value
    record_event(
        db,
        "job.preset.save",
        user=user,
        target_type="job",
        target_id=job.id,
        ip=ip,
        detail={"preset": name},
    )
    return preset


def delete_preset(db: Session, job: Job, name: str, user: User | None = None, ip: str = "") -> bool:
    """Remove the preset ``name``; return whether there was one."""
    if name not in (job.presets or {}):
        return False
    job.presets = {k: v for k, v in job.presets.items() if k != name}
    record_event(
        db,
        "job.preset.delete",
        user=user,
        target_type="job",
        target_id=job.id,
        ip=ip,
        detail={"preset": name},
    )
    return True


def get_preset(job: Job, name: str) -> dict[str, Any] | None:
    preset = (job.presets or {}).get(name)
    if not isinstance(preset, dict):
        return None
    hidden = secret_names(job.params or [])
    params = {k: v for k, v in (preset.get("params") or {}).items() if k not in hidden}
    return {
        "params": params,
        "log_level": preset.get("log_level"),
        "disabled_steps": list(preset.get("disabled_steps") or []),
    }
