"""Send test: a real sample alert through one channel, right now, outside any run."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.alerts.channels import load_channel
from app.alerts.delivery import DeliveryFailed, deliver
from app.alerts.messages import compose
from app.alerts.signals import notifications_created
from app.audit import record_event
from app.crypto import SecretsVault
from app.models import User


def sample_payload(base_url: str, channel: str) -> dict:
    facts = {
        "job": "(test)",
        "description": "",
        "tags": [],
        "run_id": None,
        "url": base_url,
        "state": "TEST",
        "reason": "",
        "trigger": "manual",
        "started_at": None,
        "finished_at": None,
        "duration": "",
        "failing_step": None,
        "last_lines": [],
    }
    payload = compose(facts, "test", f"a test of channel {channel}", None)
    payload["text"] = f"This is a test alert from Nomaflow through channel {channel}.\n{base_url}"
    return payload


def send_sample_alert(
    db: Session, vault: SecretsVault, name: str, base_url: str, user: User | None, ip: str = ""
) -> tuple[bool, str]:
    """Deliver a test alert through channel ``name``; return (it worked, what happened)."""
    record_event(db, "channel.test", user=user, target_type="channel", target_id=name, ip=ip)
    try:
        channel = load_channel(db, vault, name)
        notified = deliver(db, vault, channel, sample_payload(base_url, name))
    except (DeliveryFailed, LookupError, ValueError) as error:
        return False, str(error)
    db.commit()  # the notifications exist before the bell is pushed
    if notified:
        notifications_created.send(None, user_ids=notified)
        return True, f"notified {len(notified)} user(s)"
    return True, f"sent through {channel.kind}"
