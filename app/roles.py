"""Roles: create, change and delete them; the permissions and job tags a role grants (DESIGN §7)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.audit import record_event
from app.models import Role, User
from app.permissions import (
    ALL_PERMISSIONS,
    CONNECTOR_EDIT,
    CONNECTOR_VIEW,
    JOB_DELETE,
    JOB_EDIT,
    JOB_RUN,
    JOB_VIEW,
    PYTHON_EDIT,
    SETTINGS_ADMIN,
    USER_ADMIN,
)
from app.users import an_active_admin_exists, lock_admin_changes

ROLE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TAG_PATTERN = re.compile(r"^[^\s,]{1,64}$")
ADMIN_ROLE = "admin"

# what each permission lets a user do, shown beside its checkbox
PERMISSION_HELP = {
    JOB_VIEW: "See jobs, their runs, logs, the schedule and the dashboard.",
    JOB_RUN: "Run jobs (now or with parameters), abort and replay runs, save presets.",
    JOB_EDIT: "Create and change jobs and their steps, restore versions.",
    JOB_DELETE: "Delete jobs (their runs stay in the history).",
    PYTHON_EDIT: "Write or change the code of Python steps.",
    CONNECTOR_VIEW: "See connectors and variables (never their secrets).",
    CONNECTOR_EDIT: "Create, change and test connectors and variables.",
    USER_ADMIN: "Manage users, roles and read the audit log.",
    SETTINGS_ADMIN: "Change retention, runner and timezone settings; see the scheduler status.",
}


class RoleError(ValueError):
    """Bad input for a role change; ``field`` names the form field it belongs to."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class RoleRow:
    role: Role
    users: int


def list_roles(db: Session) -> list[RoleRow]:
    """Every role with the number of users it has, built-in roles first."""
    counts = dict(db.execute(sa.select(User.role_id, sa.func.count()).group_by(User.role_id)).all())
    roles = db.scalars(sa.select(Role).order_by(Role.builtin.desc(), Role.name)).all()
    return [RoleRow(role, counts.get(role.id, 0)) for role in roles]


def parse_tags(text: str | None) -> list[str] | None:
    """Read the tag limit field: blank means every job (None); else the tags, comma-separated."""
    words = [word.strip() for word in re.split(r"[,\s]+", text or "") if word.strip()]
    if not words:
        return None
    for word in words:
        if not TAG_PATTERN.match(word):
            raise RoleError("job_tags", f"{word!r} is not a tag (up to 64 characters, no commas).")
    return sorted(set(words))


def create_role(
    db: Session,
    name: str,
    description: str = "",
    permissions: list[str] | tuple[str, ...] = (),
    job_tags: list[str] | None = None,
    *,
    actor: User | None = None,
    ip: str = "",
) -> Role:
    """Add a custom role."""
    name = (name or "").strip()
    if not ROLE_NAME_PATTERN.match(name):
        raise RoleError(
            "name",
            "Use 1-64 letters, digits, dots, dashes or underscores, starting with a letter or "
            "digit.",
        )
    if db.scalar(sa.select(Role.id).where(Role.name == name)) is not None:
        raise RoleError("name", f"A role named {name!r} already exists.")
    role = Role(
        name=name,
        description=_description(description),
        permissions=_checked_permissions(permissions),
        job_tags=job_tags,
        builtin=False,
    )
    db.add(role)
    db.flush()
    record_event(
        db,
        "role.create",
        user=actor,
        target_type="role",
        target_id=name,
        ip=ip,
        detail={"permissions": role.permissions, "job_tags": job_tags},
    )
    return role


def update_role(
    db: Session,
    role: Role,
    *,
    description: str | None = None,
    permissions: list[str] | tuple[str, ...] | None = None,
    job_tags: list[str] | None | object = ...,
    actor: User | None = None,
    ip: str = "",
) -> dict:
    """Change a role's description, permissions or tag limit; return what changed (old, new).

    The built-in admin role keeps ``user:admin`` and every job, and no change may leave the
    installation without an active user who can administer users (refused after the change is
    flushed: the caller rolls back).
    """
    changes: dict = {}
    removes_admin = False
    if description is not None and _description(description) != role.description:
        changes["description"] = [role.description, _description(description)]
    if permissions is not None:
        wanted = _checked_permissions(permissions)
        if set(wanted) != set(role.permissions):
            if role.builtin and role.name == ADMIN_ROLE and USER_ADMIN not in wanted:
                raise RoleError("permissions", "The admin role keeps user:admin: never lock out.")
            removes_admin = USER_ADMIN in role.permissions and USER_ADMIN not in wanted
            changes["permissions"] = [role.permissions, wanted]
    if job_tags is not ... and job_tags != role.job_tags:
        if role.builtin and role.name == ADMIN_ROLE:
            raise RoleError("job_tags", "The admin role sees every job; it cannot be limited.")
        changes["job_tags"] = [role.job_tags, job_tags]
    if not changes:
        return changes
    if removes_admin:
        lock_admin_changes(db)  # before the change: another admin change waits for this one
    for field, (_old, new) in changes.items():
        setattr(role, field, new)
    if removes_admin and not an_active_admin_exists(db):  # the caller rolls back
        raise RoleError(
            "permissions",
            f"Only users of {role.name} can administer users: keep user:admin here.",
        )
    record_event(
        db,
        "role.update",
        user=actor,
        target_type="role",
        target_id=role.name,
        ip=ip,
        detail=changes,
    )
    return changes


def delete_role(db: Session, role: Role, *, actor: User | None = None, ip: str = "") -> None:
    """Delete a custom role that no user has."""
    if role.builtin:
        raise RoleError("role", f"{role.name} is a built-in role; it cannot be deleted.")
    users = db.scalars(sa.select(User.username).where(User.role_id == role.id).limit(6)).all()
    if users:
        shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
        raise RoleError(
            "role",
            f"{role.name} is still given to {shown}: give them another role first.",
        )
    record_event(db, "role.delete", user=actor, target_type="role", target_id=role.name, ip=ip)
    db.delete(role)


def _checked_permissions(permissions) -> list[str]:
    unknown = sorted(set(permissions) - set(ALL_PERMISSIONS))
    if unknown:
        raise RoleError("permissions", f"Unknown permission {unknown[0]!r}.")
    return [p for p in ALL_PERMISSIONS if p in set(permissions)]  # stored in a stable order


def _description(text: str) -> str:
    return (text or "").strip()[:255]
