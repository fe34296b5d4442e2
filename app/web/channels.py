"""Settings › Channels: where alerts go. List, create, edit, delete, and Send test.

Webhook URLs and headers are secrets: a page says whether one is set, never what it is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app import db
from app.alerts.channels import (
    CHANNEL_KINDS,
    KIND_LABELS,
    ChannelError,
    channel_names,
    delete_channel,
    jobs_naming,
    public_view,
    save_channel,
)
from app.alerts.form import checked_channels
from app.alerts.sample import send_sample_alert
from app.auth import client_ip, requires
from app.crypto import vault
from app.models import Channel, Connector, Role
from app.permissions import SETTINGS_ADMIN

bp = Blueprint("channels", __name__)


@bp.app_template_global()
def alert_channel_names() -> list[str]:
    """The channel names the job editor offers as checkboxes."""
    return channel_names(db.session())


@bp.app_template_global()
def alert_channels_ticked(values) -> list[str]:
    return checked_channels(values)


@bp.get("/settings/channels")
@requires(SETTINGS_ADMIN)
def index():
    """List the channels: kind, where they send (secrets only as set or not), used by."""
    session = db.session()
    rows = []
    for channel in session.scalars(sa.select(Channel).order_by(Channel.name)):
        try:
            view, problem = public_view(vault(), channel), None
        except ValueError as error:  # sealed with keys this installation lacks: say so
            view = {"values": channel.config, "secrets": {}}
            problem = str(error)
        rows.append(
            {
                "id": channel.id,
                "name": channel.name,
                "kind": channel.kind,
                "label": KIND_LABELS.get(channel.kind, channel.kind),
                "values": view["values"],
                "secrets": view["secrets"],
                "problem": problem,
                "used_by": jobs_naming(session, channel.name),
            }
        )
    return render_template("channels/index.html", channels=rows, kinds=KIND_LABELS)


@bp.get("/settings/channels/new")
@requires(SETTINGS_ADMIN)
def new():
    """Show the form of a new channel of ``?kind=``."""
    kind = request.args.get("kind", "")
    if not kind:  # the kind is chosen on the list page
        return redirect(url_for("channels.index") + "#channel-new")
    if kind not in CHANNEL_KINDS:
        abort(404, description=f"There is no channel kind {kind!r}.")
    return _form_page(kind, None, {"name": ""})


@bp.post("/settings/channels/new")
@requires(SETTINGS_ADMIN)
def create():
    """Create a channel; 422 with the problems next to their fields."""
    kind = request.form.get("kind", "")
    if kind not in CHANNEL_KINDS:
        abort(400, description="Choose a channel kind.")
    return _save(kind, None)


@bp.get("/settings/channels/<name>/edit")
@requires(SETTINGS_ADMIN)
def edit(name: str):
    """Edit a channel: plain values shown, the URL and headers only as set or not."""
    channel = _stored(name)
    form = {"name": channel.name, **{k: _as_text(k, v) for k, v in channel.config.items()}}
    return _form_page(channel.kind, channel, form)


@bp.post("/settings/channels/<name>/edit")
@requires(SETTINGS_ADMIN)
def update(name: str):
    """Save a channel; a secret left empty keeps the stored one."""
    channel = _stored(name)
    return _save(channel.kind, channel)


@bp.get("/settings/channels/<name>/delete")
@requires(SETTINGS_ADMIN)
def confirm_delete(name: str):
    """Ask before deleting; name the jobs whose alerts still use the channel."""
    channel = _stored(name)
    used_by = jobs_naming(db.session(), name)
    return render_template("channels/delete.html", channel=channel, used_by=used_by)


@bp.post("/settings/channels/<name>/delete")
@requires(SETTINGS_ADMIN)
def delete(name: str):
    """Delete the channel (jobs naming it skip it and say so in their run logs)."""
    _stored(name)
    session = db.session()
    delete_channel(session, name, user=current_user, ip=client_ip())
    session.commit()
    flash(f"Channel {name} deleted.", "success")
    return redirect(url_for("channels.index"))


@bp.post("/settings/channels/<name>/test")
@requires(SETTINGS_ADMIN)
def test(name: str):
    """Send a real test alert through the channel; answer with the result in place."""
    channel = _stored(name)
    session = db.session()
    base_url = current_app.config["NOMAFLOW"].base_url
    ok, message = send_sample_alert(session, vault(), name, base_url, current_user, ip=client_ip())
    session.commit()
    return render_template("channels/_test_result.html", channel=channel, ok=ok, message=message)


def _save(kind: str, channel: Channel | None):
    session = db.session()
    name = channel.name if channel else request.form.get("name", "").strip()
    values, problems = _read_form(kind)
    cleared = tuple(f for f in request.form.getlist("clear") if f == "headers")
    if channel is None and session.scalar(sa.select(Channel.id).where(Channel.name == name)):
        problems["name"] = f"a channel named {name} already exists"
    message = "Fix the problems marked below."
    if not problems:
        try:
            _, outcome = save_channel(
                session,
                vault(),
                name,
                kind,
                values,
                clear_secrets=cleared,
                user=current_user,
                ip=client_ip(),
            )
        except ChannelError as error:
            session.rollback()
            problems, message = dict(error.fields), error.message
        else:
            session.commit()
            words = {"created": "created", "updated": "saved", "unchanged": "unchanged"}
            flash(f"Channel {name} {words[outcome]}.", "success")
            return redirect(url_for("channels.index"))
    form = {k: v for k, v in request.form.items() if k not in ("url", "headers")}
    form["roles"] = request.form.getlist("roles")
    return _form_page(kind, channel, form, problems, message), 422


def _read_form(kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    fields = CHANNEL_KINDS[kind]
    values: dict[str, Any] = {"tags": request.form.get("tags", "")}
    problems: dict[str, str] = {}
    for field in fields:
        if field == "roles":
            values["roles"] = request.form.getlist("roles")
        elif field == "headers":
            text = request.form.get("headers", "")
            try:
                values["headers"] = _header_lines(text)
            except ValueError as error:
                problems["headers"] = str(error)
        elif field == "url":
            values["url"] = request.form.get("url", "")  # never stripped, never shown again
        else:
            values[field] = request.form.get(field, "").strip()
    return values, problems


def _header_lines(text: str) -> dict[str, str] | None:
    headers = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"line {number}: expected Name: value")
        headers[name.strip()] = value.strip()
    return headers or None


def _as_text(key: str, value: Any) -> Any:
    """A stored value as its field shows it: lists as "a, b" (roles stay a list: checkboxes)."""
    if isinstance(value, list) and key != "roles":
        return ", ".join(value)
    return value


def _form_page(kind, channel, form, errors=None, message=None):
    secrets = {}
    if channel is not None:
        try:
            secrets = public_view(vault(), channel)["secrets"]
        except ValueError:
            secrets = {}
    session = db.session()
    return render_template(
        "channels/form.html",
        kind=kind,
        label=KIND_LABELS[kind],
        fields=CHANNEL_KINDS[kind],
        channel=channel,
        form=form,
        secrets=secrets,
        errors=errors or {},
        message=message,
        smtp_connectors=list(
            session.scalars(
                sa.select(Connector.name).where(Connector.kind == "smtp").order_by(Connector.name)
            )
        ),
        roles=list(session.scalars(sa.select(Role.name).order_by(Role.name))),
    )


def _stored(name: str) -> Channel:
    channel = db.session().scalar(sa.select(Channel).where(Channel.name == name))
    if channel is None:
        abort(404, description=f"There is no channel named {name!r}.")
    return channel
