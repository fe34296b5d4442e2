"""A job's trigger URL: ``POST /hooks/<job_id>`` with the job's own secret token (rotatable).

Only the token's sha256 (``jobs.hook_token_hash``) and a short prefix are stored: the full token
is shown once when the hook is enabled or rotated. Disabling clears both, so the URL answers 404.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.orm import Session

from app.audit import record_event
from app.models import Job, User

HOOK_TOKEN_PREFIX = "nfh_"
PREFIX_LENGTH = 12  # "nfh_" + 8 characters


def hook_enabled(job: Job) -> bool:
    return bool(job.hook_token_hash)


def issue_hook_token(db: Session, job: Job, user: User | None, ip: str = "") -> str:
    """Enable the job's trigger URL with a new token (the old one stops working); return it.

    The caller commits and shows the token once.
    """
    rotated = hook_enabled(job)
    secret = HOOK_TOKEN_PREFIX + secrets.token_urlsafe(32)
    job.hook_token_hash = _digest(secret)
    job.hook_token_prefix = secret[:PREFIX_LENGTH]
    record_event(
        db,
        "hook.rotate" if rotated else "hook.enable",
        user=user,
        target_type="job",
        target_id=job.id,
        ip=ip,
        detail={"prefix": job.hook_token_prefix},
    )
    return secret


def disable_hook(db: Session, job: Job, user: User | None, ip: str = "") -> bool:
    """Turn the trigger URL off; False when it was already off. The caller commits."""
    if not hook_enabled(job):
        return False
    prefix = job.hook_token_prefix
    job.hook_token_hash = None
    job.hook_token_prefix = None
    record_event(
        db,
        "hook.disable",
        user=user,
        target_type="job",
        target_id=job.id,
        ip=ip,
        detail={"prefix": prefix},
    )
    return True


def hook_job(db: Session, job_id: str) -> Job | None:
    """The live job behind a trigger URL, or None when there is none or its hook is off."""
    job = db.get(Job, job_id)
    if job is None or job.deleted_at is not None or not hook_enabled(job):
        return None
    return job


def verify_hook_token(job: Job, secret: str | None) -> bool:
    """Does ``secret`` open this job's trigger URL? (Constant time.)"""
    if not secret or not hook_enabled(job) or len(secret) > 200:
        return False
    return hmac.compare_digest(job.hook_token_hash, _digest(secret))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
