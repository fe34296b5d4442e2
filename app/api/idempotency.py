"""``Idempotency-Key`` on run creation: a retried request gets the run it made, not a new one.

The key is claimed (row without a run) before dispatching, in its own transaction, so two
concurrent requests with one key cannot both queue a run: the second finds the claim and gets
409 until the first has its run. Keys are kept 24 hours, pruned by the requests that use keys.

A key is stored as its sha256 (hex): MariaDB compares strings without case, and ``ABC`` must
not find the run made with ``abc``; a digest compares exactly on every database.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from app.db import Database, utcnow
from app.models import IdempotencyKey

from .errors import ApiError

KEEP_KEYS = timedelta(hours=24)
MAX_KEY_LENGTH = 200  # what a client may send (the column holds the 64-character digest)


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    """The sha256 of what makes two requests the same (JSON compared as data, not bytes)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        problem = f"use 1-{MAX_KEY_LENGTH} characters"
        raise ApiError(422, f"Idempotency-Key: {problem}", {"Idempotency-Key": problem})
    return key


def stored_key(key: str) -> str:
    """The key as its row holds it: sha256 hex, compared exactly by every database."""
    return hashlib.sha256(key.encode()).hexdigest()


def claim_key(database: Database, user_id: int, key: str, request_hash: str) -> int | None:
    """Claim ``key`` for this request and return None, or return the run an earlier identical
    request made. 409 when the key was used for another request, or is still being used."""
    key = stored_key(key)
    try:
        with database.session_scope() as db:
            db.execute(
                sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - KEEP_KEYS)
            )
            earlier = db.get(IdempotencyKey, (user_id, key))
            if earlier is None:
                db.add(IdempotencyKey(user_id=user_id, key=key, request_hash=request_hash))
                return None  # claimed (committed on leaving the block)
    except sa.exc.IntegrityError:  # a concurrent request claimed it first: read its claim
        with database.session_scope() as db:
            earlier = db.get(IdempotencyKey, (user_id, key))
    return _answer_for(earlier, request_hash)


def remember_run(database: Database, user_id: int, key: str, run_id: int) -> None:
    with database.session_scope() as db:
        db.execute(
            sa.update(IdempotencyKey)
            .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == stored_key(key))
            .values(run_id=run_id)
        )


def release_key(database: Database, user_id: int, key: str) -> None:
    """Nothing was queued (bad input): the key may be used again."""
    with database.session_scope() as db:
        db.execute(
            sa.delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id,
                IdempotencyKey.key == stored_key(key),
                IdempotencyKey.run_id.is_(None),
            )
        )


def _answer_for(earlier: IdempotencyKey | None, request_hash: str) -> int:
    if earlier is None:  # claimed and released in between: rare; let the client retry
        raise ApiError(409, "This Idempotency-Key is in use; retry.", {"Idempotency-Key": "busy"})
    if earlier.request_hash != request_hash:
        message = "This Idempotency-Key was used with a different request."
        raise ApiError(409, message, {"Idempotency-Key": "reused with another body"})
    if earlier.run_id is None:
        message = "A request with this Idempotency-Key is still being handled; retry."
        raise ApiError(409, message, {"Idempotency-Key": "in progress"})
    return earlier.run_id
