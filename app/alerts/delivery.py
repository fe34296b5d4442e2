"""Deliver one alert payload to one channel: email, Slack, Teams, a generic webhook, or in-app.

Each function raises DeliveryFailed with a reason that never holds a secret (webhook URLs are
secrets: the reason names the host at most). What comes from a run (job data, errors, log
lines, rendered templates) is escaped for each receiver: Slack's ``& < >``, Teams' HTML and
Markdown (its sections also say ``"markdown": false``).
"""

from __future__ import annotations

import html
import re
import smtplib
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.alerts.channels import ChannelValues
from app.alerts.messages import email_html, subject_line
from app.connectors.smtp import open_smtp
from app.connectors.store import load_connector
from app.crypto import SecretsVault
from app.models import Job, Notification, Role, User
from app.permissions import JOB_VIEW
from app.visibility import may_see_tags

HTTP_TIMEOUT = (5, 10)  # connect, read
COLOURS = {"error": "C62828", "warning": "EF6C00", "info": "2E7D32"}
SLACK_TAIL = 2900  # characters of log lines in one block (Slack takes 3000)
MARKDOWN_INLINE = str.maketrans({c: "\\" + c for c in "\\`*_[]~"})
MARKDOWN_LINE_START = re.compile(r"^([ \t]*)([-+=#]|\d+[.)])", re.MULTILINE)


class DeliveryFailed(Exception):
    """The channel did not take the alert; the message says why (no secrets)."""


def deliver(db: Session, vault: SecretsVault, channel: ChannelValues, payload: dict) -> list[int]:
    """Send ``payload`` through ``channel``; return the users notified in-app (else [])."""
    if channel.kind == "email":
        send_email(db, vault, channel.values, payload)
    elif channel.kind == "in_app":
        return notify_users(db, channel.values, payload)
    else:
        body = {"slack": slack_body, "teams": teams_body, "webhook": webhook_body}[channel.kind]
        post_json(channel.values, body(payload))
    return []


def send_email(db: Session, vault: SecretsVault, values: dict, payload: dict) -> None:
    try:
        relay = load_connector(db, vault, values.get("connector") or "").values
    except (LookupError, ValueError) as error:
        raise DeliveryFailed(str(error)) from None
    message = EmailMessage()
    message["From"] = relay["sender"]
    message["To"] = ", ".join(values.get("to") or [])
    message["Subject"] = subject_line(payload)
    message.set_content(payload["text"])
    message.add_alternative(email_html(payload), subtype="html")
    try:
        with open_smtp(relay) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as error:
        where = f"{relay.get('host')}:{relay.get('port', 587)}"
        raise DeliveryFailed(f"email through {where}: {type(error).__name__}: {error}") from None


def post_json(values: dict, body: dict) -> None:
    url = values.get("url") or ""
    headers = {"Content-Type": "application/json", **(values.get("headers") or {})}
    host = urlsplit(url).netloc.rpartition("@")[2] or "the webhook"
    try:
        response = requests.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT)
    except requests.RequestException as error:
        raise DeliveryFailed(f"POST to {host}: {type(error).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"POST to {host}: HTTP {response.status_code}")


def _facts(payload: dict) -> list[tuple[str, str]]:
    facts = [("Job", payload["job"])]
    if payload.get("run_id"):
        facts.append(("Run", f"#{payload['run_id']}"))
    facts += [("State", payload["state"]), ("Why", payload["why"])]
    failing = payload.get("failing_step")
    if failing:
        facts.append(("Failing step", f"{failing['name']}: {failing['error']}"))
    if payload.get("grouped"):
        facts.append(("Grouped", f"+{payload['grouped']} similar since {payload['grouped_since']}"))
    return facts


def slack_text(text: Any) -> str:
    """Escape text for Slack mrkdwn, so ``<!channel>`` or ``<url|label>`` in it stay text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(payload: dict) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` for notifications, ``blocks`` to read."""
    title = slack_text(subject_line(payload))
    fields = [
        {"type": "mrkdwn", "text": f"*{k}*\n{slack_text(str(v)[:1900])}"[:2000]}
        for k, v in _facts(payload)
    ]
    link = f"*<{payload['url']}|{title}>*"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": link}},
        {"type": "section", "fields": fields[:10]},
    ]
    if payload.get("last_lines"):
        tail = slack_text("\n".join(payload["last_lines"]))
        if len(tail) > SLACK_TAIL:  # keep the last whole lines, or the end of one long line
            tail = tail[-SLACK_TAIL:]
            if "\n" in tail:
                tail = tail.partition("\n")[2]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{tail}```"}})
    return {"text": f"{title} {payload['url']}", "blocks": blocks}


def teams_text(text: Any) -> str:
    """Escape text for a Teams card: Markdown backslashed, then HTML, so it all stays text."""
    escaped = str(text).translate(MARKDOWN_INLINE)
    escaped = MARKDOWN_LINE_START.sub(_escape_line_start, escaped)
    return html.escape(escaped)


def _escape_line_start(match: re.Match) -> str:
    indent, marker = match.groups()  # "- item", "# title", "1. item": backslash the sign
    return f"{indent}{marker[:-1]}\\{marker[-1]}"


def teams_body(payload: dict) -> dict[str, Any]:
    """A Microsoft Teams MessageCard (incoming webhooks and workflow connectors read it)."""
    # Teams reads HTML everywhere and Markdown in the card title; the section has Markdown off,
    # so its values are only HTML-escaped (backslashes there would show), the title both.
    section: dict[str, Any] = {
        "markdown": False,
        "activityTitle": html.escape(str(payload["title"])),
        "facts": [{"name": k, "value": html.escape(str(v))} for k, v in _facts(payload)],
    }
    if payload.get("last_lines"):
        section["text"] = "<pre>" + html.escape("\n".join(payload["last_lines"])) + "</pre>"
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": subject_line(payload),
        "themeColor": COLOURS.get(payload.get("level", "info"), COLOURS["info"]),
        "title": teams_text(subject_line(payload)),
        "sections": [section],
        "potentialAction": [
            {
                "@type": "OpenUri",
                "name": "Open in Nomaflow",
                "targets": [{"os": "default", "uri": payload["url"]}],
            }
        ],
    }


def webhook_body(payload: dict) -> dict[str, Any]:
    """The generic JSON document: stable names a receiving script can rely on."""
    failing = payload.get("failing_step")
    return {
        "job": payload["job"],
        "run_id": payload["run_id"],
        "url": payload["url"],
        "state": payload["state"],
        "rule": payload["rule"],
        "reason": payload["why"],
        "run_reason": payload.get("reason") or None,
        "title": subject_line(payload),
        "message": payload["text"],
        "failing_step": failing["name"] if failing else None,
        "error": failing["error"] if failing else None,
        "last_lines": payload.get("last_lines") or [],
        "grouped": payload.get("grouped", 0),
    }


def notify_users(db: Session, values: dict, payload: dict) -> list[int]:
    """Add one Notification per active user of the channel's roles who may see the job (holds
    job:view; a role limited to tags hears only of its jobs); return their ids."""
    roles = values.get("roles") or []
    job = db.get(Job, payload["job"])
    tags = job.tags if job is not None else payload.get("tags")
    users = db.scalars(
        sa.select(User)
        .join(Role, Role.id == User.role_id)
        .where(Role.name.in_(roles), User.active.is_(True))
        .order_by(User.id)
    )
    test = payload.get("rule") == "test"  # a channel's test alert tells of no job
    user_ids = [
        user.id for user in users if user.can(JOB_VIEW) and (test or may_see_tags(user, tags))
    ]
    for user_id in user_ids:
        db.add(
            Notification(
                user_id=user_id,
                job_id=payload["job"],
                run_id=payload["run_id"],
                level=payload.get("level", "info"),
                title=subject_line(payload).removeprefix("[Nomaflow] ")[:255],
                body=payload["text"],
            )
        )
    return user_ids
