"""Users and sign-in: create, change, authenticate (with throttling), the first admin."""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from app.audit import record_event
from app.db import utcnow
from app.models import AuditEvent, Role, Setting, User
from app.permissions import USER_ADMIN

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 8
ADMINS_LOCK_KEY = "lock:admins"  # the settings row every change that may remove an admin takes


@functools.cache
def _dummy_hash() -> str:
    """A hash to check when the username is unknown, so both paths cost one hash check.

    Made on first use, not at import: scrypt takes ~0.15 s, which start-up need not pay.
    """
    return generate_password_hash("not-a-real-password")


class UserError(ValueError):
    """Bad input for a user change; ``field`` names the form field it belongs to."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class SignIn:
    user: User | None
    error: str | None = None


def new_password() -> str:
    return secrets.token_urlsafe(15)


def role_names(db: Session) -> list[str]:
    return list(db.scalars(sa.select(Role.name).order_by(Role.id)))


def find_user(db: Session, username: str) -> User | None:
    return db.scalar(sa.select(User).where(User.username == username))


def create_user(
    db: Session,
    username: str,
    role_name: str,
    password: str | None = None,
    *,
    display_name: str = "",
    actor: User | None = None,
    ip: str = "",
) -> tuple[User, str | None]:
    """Add a user; return it and the generated password when none was given."""
    username = (username or "").strip()
    if not USERNAME_PATTERN.match(username):
        raise UserError(
            "username",
            "Use 1-64 letters, digits, dots, dashes, underscores or @, starting with a letter "
            "or digit.",
        )
    if find_user(db, username):
        raise UserError("username", f"A user named {username!r} already exists.")
    role = _role(db, role_name)
    generated = None
    if not password:
        password = generated = new_password()
    _check_password(password)
    user = User(
        username=username,
        display_name=display_name.strip(),
        role=role,
        password_hash=generate_password_hash(password),
    )
    db.add(user)
    db.flush()
    record_event(
        db,
        "user.create",
        user=actor,
        username=None if actor else "system",
        target_type="user",
        target_id=username,
        ip=ip,
        detail={"role": role.name},
    )
    return user, generated


def update_user(
    db: Session,
    user: User,
    *,
    role_name: str | None = None,
    active: bool | None = None,
    display_name: str | None = None,
    actor: User | None = None,
    ip: str = "",
) -> dict:
    """Change a user's role, active flag or name; return what changed (old, new).

    A change that may leave no active administrator is refused (UserError) after it is
    flushed: the caller rolls back.
    """
    changes = {}
    was_admin = user.active and USER_ADMIN in user.role.permissions
    removes_admin = ""  # the field whose change may take away the last administrator
    if role_name is not None and role_name != user.role.name:
        role = _role(db, role_name)
        if USER_ADMIN not in role.permissions and was_admin:
            removes_admin = "role"
        changes["role"] = [user.role.name, role.name]
    if active is not None and active != user.active:
        if not active:
            if actor is not None and actor.id == user.id:
                raise UserError("active", "You cannot deactivate your own account.")
            removes_admin = removes_admin or ("active" if was_admin else "")
        changes["active"] = [user.active, active]
    if removes_admin:
        lock_admin_changes(db)
    if "role" in changes:
        user.role = role
    if "active" in changes:
        user.active = active
    if removes_admin and not an_active_admin_exists(db):
        raise UserError(removes_admin, "This is the last active administrator; keep at least one.")
    if display_name is not None and display_name.strip() != user.display_name:
        changes["display_name"] = [user.display_name, display_name.strip()]
        user.display_name = display_name.strip()
    if changes:
        record_event(
            db,
            "user.update",
            user=actor,
            target_type="user",
            target_id=user.username,
            ip=ip,
            detail=changes,
        )
    return changes


def set_password(
    db: Session, user: User, password: str | None, *, actor: User | None = None, ip: str = ""
) -> str | None:
    """Replace a user's password; return the generated one when none was given."""
    generated = None
    if not password:
        password = generated = new_password()
    _check_password(password)
    user.password_hash = generate_password_hash(password)
    record_event(
        db, "user.password", user=actor, target_type="user", target_id=user.username, ip=ip
    )
    return generated


def authenticate(
    db: Session, username: str, password: str, *, ip: str, max_failures: int, lockout_minutes: int
) -> SignIn:
    """Check a sign-in; record it in the audit log; refuse while the account is throttled."""
    username = (username or "").strip()[:64]
    user = find_user(db, username) if username else None
    if _recent_failures(db, username, user, lockout_minutes) >= max_failures:
        record_event(
            db, "login.throttled", username=username, target_type="user", target_id=username, ip=ip
        )
        return SignIn(
            None,
            f"Too many failed sign-ins for this account. Try again in {lockout_minutes} minutes.",
        )
    valid = check_password_hash(user.password_hash if user else _dummy_hash(), password or "")
    if not (user and valid and user.active):
        reason = "unknown user" if not user else ("inactive" if valid else "wrong password")
        record_event(
            db,
            "login.failed",
            user=user,
            username=username,
            target_type="user",
            target_id=username,
            ip=ip,
            detail={"reason": reason},
        )
        if user and valid:
            return SignIn(None, "This account is deactivated. Ask an administrator.")
        return SignIn(None, "Wrong username or password.")
    user.last_login_at = utcnow()
    record_event(db, "login", user=user, target_type="user", target_id=username, ip=ip)
    return SignIn(user)


def bootstrap_admin(db: Session, password: str | None) -> tuple[User, str | None] | None:
    """Create the first account, ``admin``, when there are no users; None if users exist."""
    if db.scalar(sa.select(sa.func.count()).select_from(User)):
        return None
    return create_user(db, "admin", "admin", password, display_name="Administrator")


def _recent_failures(db: Session, username: str, user: User | None, minutes: int) -> int:
    """Count failed sign-ins for this username in the window, since its last success."""
    since = utcnow() - timedelta(minutes=minutes)
    if user is not None and user.last_login_at is not None:
        since = max(since, user.last_login_at)
    return db.scalar(
        sa.select(sa.func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == "login.failed",
            AuditEvent.target_id == username,
            AuditEvent.at > since,
        )
    )


def _role(db: Session, name: str) -> Role:
    role = db.scalar(sa.select(Role).where(Role.name == name))
    if role is None:
        known = ", ".join(role_names(db))
        raise UserError("role", f"Unknown role {name!r}; known roles: {known}.")
    return role


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError("password", f"Use at least {MIN_PASSWORD_LENGTH} characters.")


def lock_admin_changes(db: Session) -> None:
    """Queue this transaction behind every other change that may take away an administrator.

    Each such change updates one settings row first: PostgreSQL and MariaDB make the second
    change wait there until the first commits (SQLite has one writer anyway), and its check
    (an_active_admin_exists) then reads what the first committed.
    """
    stamp = {"at": utcnow().isoformat()}
    lock = sa.update(Setting).where(Setting.key == ADMINS_LOCK_KEY).values(value=stamp)
    if db.execute(lock).rowcount:
        return
    try:  # the first such change ever: make the row (a concurrent first one may win)
        with db.begin_nested():
            db.add(Setting(key=ADMINS_LOCK_KEY, value=stamp))
            db.flush()
    except sa.exc.IntegrityError:
        pass
    db.execute(lock)


def an_active_admin_exists(db: Session) -> bool:
    """Is there an active user who can administer users, in the latest committed rows and
    this transaction's own flushed changes? Call after lock_admin_changes."""
    db.flush()
    admins = (
        sa.select(Role.permissions)
        .join(User, User.role_id == Role.id)
        .where(User.active.is_(True))
        .with_for_update()  # a locking read sees the latest rows on REPEATABLE READ too
    )
    return any(USER_ADMIN in (permissions or ()) for permissions in db.scalars(admins))
