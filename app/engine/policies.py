"""Retry policy: how many attempts, and how long to wait between them."""

from __future__ import annotations

import random
from typing import Any

DEFAULT_RETRY = {
    "attempts": 1,
    "backoff": "fixed",
    "base_seconds": 60,
    "max_seconds": 3600,
    "jitter": False,
}


def retry_policy(step_retry: dict[str, Any] | None, job_retry: dict[str, Any] | None) -> dict:
    """The step's own policy wins over the job's; missing keys take the defaults."""
    return {**DEFAULT_RETRY, **(job_retry or {}), **(step_retry or {})}


def backoff_seconds(policy: dict[str, Any], failed_attempt: int, rng=random) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
    base = float(policy["base_seconds"])
    delay = base * 2 ** (failed_attempt - 1) if policy["backoff"] == "exponential" else base
    delay = min(delay, float(policy["max_seconds"]))
    if policy.get("jitter"):
        # equal jitter: at least half the delay, so backoff still backs off
        delay = delay / 2 + rng.uniform(0, delay / 2)
    return delay
