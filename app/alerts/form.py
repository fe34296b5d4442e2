"""The job editor's Alerts fieldset, translated to ``[jobs.alerts]`` and back (no Flask).

Fields: ``alerts_channel.<name>`` (one checkbox per channel), ``alerts_<key>`` for the flags,
numbers and templates, and ``alerts_form`` saying the fieldset was on the page (without it the
alerts travel untouched).
"""

from __future__ import annotations

from typing import Any

FLAGS = ("on_failure", "on_recovery", "on_missed", "on_success")
NUMBERS = ("after_failures", "long_run_minutes", "min_duration_seconds")
TEXTS = ("subject", "message")
CHANNEL_PREFIX = "alerts_channel."
CHECKED = ("true", "on", "1", "yes")


def alerts_from_form(values) -> tuple[bool, dict[str, Any] | None]:
    """Return (the fieldset was posted, the alerts table or None when nothing is set)."""
    if not values.has("alerts_form"):
        return False, None
    alerts: dict[str, Any] = {}
    channels = [
        key[len(CHANNEL_PREFIX) :]
        for key in values
        if key.startswith(CHANNEL_PREFIX) and values.get(key).lower() in CHECKED
    ]
    if channels:
        alerts["channels"] = channels
    for key in FLAGS:
        if values.get("alerts_" + key).lower() in CHECKED:
            alerts[key] = True
    for key in NUMBERS:
        number = _number(values.get("alerts_" + key))
        if number is not None:
            alerts[key] = number
    for key in TEXTS:
        text = values.get("alerts_" + key).strip()
        if text:
            alerts[key] = text
    return True, alerts or None


def _number(text: str) -> int | float | str | None:
    """An int or float when the text is one, None when empty, else the text (to be named)."""
    text = text.strip()
    if not text:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def alerts_to_form(alerts: dict[str, Any] | None) -> dict[str, str]:
    """The fields a browser posts for these alerts."""
    alerts = alerts or {}
    form = {"alerts_form": "1"}
    for name in alerts.get("channels") or []:
        form[CHANNEL_PREFIX + name] = "true"
    for key in FLAGS:
        if alerts.get(key):
            form["alerts_" + key] = "true"
    for key in (*NUMBERS, *TEXTS):
        if alerts.get(key) is not None:
            form["alerts_" + key] = str(alerts[key])
    return form


def checked_channels(values) -> list[str]:
    """The channel names ticked in ``values`` (to show channels that no longer exist)."""
    return [
        key[len(CHANNEL_PREFIX) :]
        for key, value in dict(values).items()
        if key.startswith(CHANNEL_PREFIX) and str(value).lower() in CHECKED
    ]


def alerts_error_field(parts: list[str]) -> str:
    """The form field of a SpecError path under ``alerts`` (``alerts › after_failures``)."""
    key = parts[1] if len(parts) > 1 else "channels"
    return "alerts_channels" if key == "channels" else f"alerts_{key}"
