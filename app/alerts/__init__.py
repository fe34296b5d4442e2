"""Alerts (DESIGN §8 "Alerts, channels and chaining"): rules, channels, delivery, the bell.

A job's ``[jobs.alerts]`` rules decide *when* (app/alerts/rules.py); channels configured once
in Settings decide *where* (app/alerts/channels.py): the job's own ``channels`` plus, as a small
extension of DESIGN §8, every channel whose ``tags`` share a tag with the job. Each alert for
one run, rule and channel is an AlertEvent: SENT, GROUPED into a later one, or FAILED (retried
with backoff). Delivery never changes a run's state.
"""

RULES = ("failure", "recovery", "long_run", "too_fast", "missed", "success")
