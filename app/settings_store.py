"""Installation settings an admin changes in the UI: typed reads, validated writes, their sources.

Stored as ``settings`` rows (key → JSON), except retention: it lives in the built-in
maintenance job's ``prune`` step, so the job editor, its versions and the settings page show one
and the same value (a settings row beside it could silently disagree with the step's config).
"""

from __future__ import annotations

import copy
import functools
import os
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.builtin_jobs import MAINTENANCE_JOB
from app.config import Settings
from app.db import utcnow
from app.jobspec import apply_job, job_definition
from app.models import Job, Setting, User
from app.steps.maintenance import DEFAULTS as RETENTION_DEFAULTS

DEFAULT_TIMEZONE_KEY = "jobs.default_timezone"
POOL_SIZE_KEY = "runner.pool_size"
POOL_SIZE_ENV = "NOMAFLOW_RUNNER_POOL_SIZE"
POOL_SIZE_BUILTIN = 4  # app/config.py's default
POOL_SIZE_MAX = 64
HEARTBEAT_PREFIX = "node:"
STALE_SECONDS = 30  # as app/engine/runner.py HEARTBEAT_STALE_SECONDS: silent this long = gone
RETENTION_FIELDS = ("keep_days", "keep_failed_days", "keep_runs")


class SettingError(ValueError):
    """A setting value is unusable; ``field`` names the form field it belongs to."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class PoolSize:
    value: int  # what the runner uses at its next start
    source: str  # "environment" | "nomaflow.toml" | "saved setting" | "default"
    stored: int | None  # the saved setting, if any


@dataclass
class ProcessStatus:
    node: str
    seen: datetime | None
    age_seconds: float | None
    role: str  # leader | standby | disabled | unknown
    stale: bool


def get_setting(db: Session, key: str, default: Any = None) -> Any:
    row = db.get(Setting, key)
    return default if row is None or row.value is None else row.value


def _put_setting(db: Session, key: str, value: Any) -> Any:
    """Store ``value``; return the previous one."""
    row = db.get(Setting, key)
    if row is None:
        db.add(Setting(key=key, value=value))
        return None
    old, row.value = row.value, value
    return old


def default_timezone(db: Session) -> str:
    """The timezone a new job starts with (UTC unless an admin chose another)."""
    zone = get_setting(db, DEFAULT_TIMEZONE_KEY)
    return zone if isinstance(zone, str) and zone in _zones() else "UTC"


def set_default_timezone(db: Session, zone: str, *, actor: User | None, ip: str = "") -> bool:
    """Validate and store the default timezone; True when it changed."""
    zone = (zone or "").strip()
    if zone not in _zones():
        raise SettingError("default_timezone", f"{zone!r} is not an IANA timezone name.")
    old = default_timezone(db)
    if zone == old:
        return False
    _put_setting(db, DEFAULT_TIMEZONE_KEY, zone)
    _audit(db, DEFAULT_TIMEZONE_KEY, old, zone, actor, ip)
    return True


def pool_size(db: Session, settings: Settings, environ=None) -> PoolSize:
    """Where the runner's pool size comes from: env, then nomaflow.toml, then this setting."""
    environ = os.environ if environ is None else environ
    stored = get_setting(db, POOL_SIZE_KEY)
    stored = stored if isinstance(stored, int) else None
    if environ.get(POOL_SIZE_ENV):
        return PoolSize(settings.runner_pool_size, "environment", stored)
    if _in_config_file(Path(settings.instance_path) / "nomaflow.toml", "runner_pool_size"):
        return PoolSize(settings.runner_pool_size, "nomaflow.toml", stored)
    if settings.runner_pool_size != POOL_SIZE_BUILTIN:  # given to load_settings explicitly
        return PoolSize(settings.runner_pool_size, "environment", stored)
    if stored is not None:
        return PoolSize(stored, "saved setting", stored)
    return PoolSize(POOL_SIZE_BUILTIN, "default", stored)


def set_pool_size(db: Session, text: str, *, actor: User | None, ip: str = "") -> bool:
    """Validate and store the pool size (used at the next start); True when it changed."""
    try:
        size = int(str(text).strip())
    except ValueError:
        raise SettingError("pool_size", "Type a whole number.") from None
    if not 1 <= size <= POOL_SIZE_MAX:
        raise SettingError("pool_size", f"Use 1 to {POOL_SIZE_MAX} runs at once.")
    old = get_setting(db, POOL_SIZE_KEY)
    if old == size:
        return False
    _put_setting(db, POOL_SIZE_KEY, size)
    _audit(db, POOL_SIZE_KEY, old, size, actor, ip)
    return True


def retention(db: Session) -> dict[str, int] | None:
    """The maintenance job's keep_* values, or None when that job was deleted."""
    step = _prune_step(job_definition(job)) if (job := _maintenance_job(db)) else None
    if step is None:
        return None
    return {name: step.get(name, RETENTION_DEFAULTS[name]) for name in RETENTION_FIELDS}


def set_retention(db: Session, values: dict[str, str], *, actor: User | None, ip: str = "") -> bool:
    """Write keep_* into the maintenance job's step (a new job version); True when changed.

    Raises SettingError for the first unusable field (all are checked before anything is saved).
    """
    numbers = {}
    for name in RETENTION_FIELDS:
        try:
            numbers[name] = int(str(values.get(name, "")).strip())
        except ValueError:
            raise SettingError(name, "Type a whole number of days.") from None
        if not 0 <= numbers[name] <= 36500:
            raise SettingError(name, "Use 0 to 36500.")
    job = _maintenance_job(db)
    definition = job_definition(job) if job else None
    if definition is None or _prune_step(definition) is None:
        raise SettingError(
            "keep_days", "The built-in maintenance job was deleted: old runs are never pruned."
        )
    old = {name: _prune_step(definition).get(name) for name in RETENTION_FIELDS}
    if old == numbers:
        return False
    spec = copy.deepcopy(definition)  # canonical already: the stored job's definition
    _prune_step(spec).update(numbers)
    apply_job(db, spec, actor, ip=ip)
    _audit(db, "retention", old, numbers, actor, ip)
    return True


def processes(db: Session, now: datetime | None = None) -> list[ProcessStatus]:
    """Every process seen through its heartbeat (``node:<name>`` rows), newest first."""
    now = now or utcnow()
    rows = db.execute(
        sa.select(Setting.key, Setting.value).where(Setting.key.like(f"{HEARTBEAT_PREFIX}%"))
    ).all()
    seen_processes = []
    for key, value in rows:
        value = value if isinstance(value, dict) else {}
        try:
            seen = datetime.fromisoformat(value["seen"])
        except (KeyError, TypeError, ValueError):
            seen = None
        age = (now - seen).total_seconds() if seen else None
        seen_processes.append(
            ProcessStatus(
                node=key.removeprefix(HEARTBEAT_PREFIX),
                seen=seen,
                age_seconds=age,
                role=value.get("role") or "unknown",
                stale=age is None or age > STALE_SECONDS,
            )
        )
    return sorted(seen_processes, key=lambda p: (p.stale, p.role != "leader", p.node))


def timezones() -> list[str]:
    return sorted(_zones())


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones() | {"UTC"})


def _in_config_file(path: Path, key: str) -> bool:
    try:
        with path.open("rb") as handle:
            return key in tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):  # a broken file stopped start-up already
        return False


def _maintenance_job(db: Session) -> Job | None:
    job = db.get(Job, MAINTENANCE_JOB["id"])
    return job if job is not None and job.deleted_at is None else None


def _prune_step(definition: dict) -> dict | None:
    return next((s for s in definition["steps"] if s.get("type") == "maintenance"), None)


def _audit(db: Session, key: str, old: Any, new: Any, actor: User | None, ip: str) -> None:
    record_event(
        db,
        "settings.update",
        user=actor,
        target_type="setting",
        target_id=key,
        ip=ip,
        detail={key: [old, new]},
    )
