"""Personal API tokens: made once, kept only as a sha256, checked on every API call (DESIGN §7).

A token is ``nf_`` + 43 random URL-safe characters. It is shown to its owner once; the database
keeps its sha256 (so a leaked table opens nothing) and a short prefix to tell tokens apart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.audit import record_event
from app.db import utcnow
from app.models import ApiToken, User

TOKEN_PREFIX = "nf_"
PREFIX_LENGTH = 11  # "nf_" + 8 characters: enough to tell a user's tokens apart
NAME_LENGTH = 128
# last_used_at is for people ("used 3 minutes ago"): one write a minute per token is plenty
LAST_USED_GRANULARITY = timedelta(minutes=1)


class TokenError(ValueError):
    """The token cannot be made or changed; ``fields`` maps each input to its problem."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  # the full token: shown once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    db: Session, user: User, name: str = "", by: User | None = None, ip: str = ""
) -> NewToken:
    """Make a token for ``user`` (named ``name``); the caller commits and shows it once."""
    name = (name or "").strip()
    if len(name) > NAME_LENGTH:
        raise TokenError("name too long", {"name": f"use at most {NAME_LENGTH} characters"})
    if not user.active:
        raise TokenError(f"{user.username} is disabled", {"user": "this account is disabled"})
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=secret[:PREFIX_LENGTH],
        token_hash=hash_secret(secret),
        created_at=utcnow(),
    )
    db.add(token)
    db.flush()
    record_event(
        db,
        "token.create",
        user=by,
        username=None if by else "cli",
        target_type="api_token",
        target_id=token.id,
        ip=ip,
        detail={"owner": user.username, "name": name, "prefix": token.prefix},
    )
    return NewToken(token, secret)


def list_tokens(db: Session, user: User | None = None) -> list[ApiToken]:
    """Return ``user``'s tokens (every user's when None), newest first."""
    query = sa.select(ApiToken).order_by(ApiToken.id.desc())
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return list(db.scalars(query))


def get_token(db: Session, token_id: int) -> ApiToken | None:
    return db.get(ApiToken, token_id)


def revoke_token(db: Session, token: ApiToken, by: User | None = None, ip: str = "") -> bool:
    """Revoke ``token`` at once; False when it was already revoked. The caller commits."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    record_event(
        db,
        "token.revoke",
        user=by,
        username=None if by else "cli",
        target_type="api_token",
        target_id=token.id,
        ip=ip,
        detail={"owner": token.user.username, "name": token.name, "prefix": token.prefix},
    )
    return True


def bearer_value(header: str | None) -> str | None:
    """Return the credentials of an ``Authorization: Bearer X`` header, else None."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(db: Session, secret: str | None) -> User | None:
    """Return the active owner of a valid token, or None (unknown, revoked, expired, disabled).

    The lookup is by the secret's sha256, so the time it takes says nothing about how close a
    guess was; the final compare_digest keeps that true whatever the database does.
    """
    if not secret or len(secret) > 200:
        return None
    digest = hash_secret(secret)
    token = db.scalar(sa.select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    now = utcnow()
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    user = token.user
    if user is None or not user.active:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_GRANULARITY:
        _touch(db, token, now)
    return user


def _touch(db: Session, token: ApiToken, now) -> None:
    # a conditional update: concurrent calls write once, and nothing else in the session commits
    db.execute(
        sa.update(ApiToken)
        .where(
            ApiToken.id == token.id,
            sa.or_(
                ApiToken.last_used_at.is_(None),
                ApiToken.last_used_at < now - LAST_USED_GRANULARITY,
            ),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    set_committed_value(token, "last_used_at", now)
