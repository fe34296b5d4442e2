"""A job's trigger URL: ``POST /hooks/<job_id>`` with the job's own secret token (rotatable).

Only the token's sha256 (``jobs.hook_token_hash``) and a short prefix are stored: the full token
is shown once when the hook is enabled or rotated. Disabling clears both. Every refusal of a
call (unknown or deleted job, no hook, wrong token) is the same 401, so ids cannot be probed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.orm import Session

from app.audit import record_event
from app.models import Job, User
from app.visibility import live_job

HOOK_TOKEN_PREFIX = "nfh_"
PREFIX_LENGTH = 12  # "nfh_" + 8 characters
MAX_SECRET_LENGTH = 200


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


def hook_job(db: Session, job_id: str, secret: str | None) -> Job | None:
    """The live job behind a trigger URL when ``secret`` opens it, else None.

    An unknown or deleted job, a job without a hook and a wrong token all give None, after the
    same work (a digest and one constant-time compare), so a caller learns nothing from which.
    The id must match exactly (MariaDB compares ids without case).
    """
    job = live_job(db, job_id)
    expected = job.hook_token_hash if job is not None and hook_enabled(job) else None
    given = _digest(secret) if secret and len(secret) <= MAX_SECRET_LENGTH else ""
    opened = hmac.compare_digest(expected or _NO_HOOK, given or _NO_TOKEN)
    return job if opened and expected is not None else None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_NO_HOOK, _NO_TOKEN = "0" * 64, "1" * 64  # never equal: compared when there is nothing to compare
