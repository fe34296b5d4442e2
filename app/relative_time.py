"""Times as people read them: "3 min ago" in the page, the exact time on hover."""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

UNITS = ((86400, "d"), (3600, "h"), (60, "min"))


def relative(moment: datetime | None, now: datetime) -> str:
    """Say coarsely how far ``moment`` is from ``now``: "3 min ago", "in 2 h", "just now"."""
    if moment is None:
        return ""
    seconds = int((now - moment).total_seconds())
    if abs(seconds) < 10:
        return "just now"
    amount = abs(seconds)
    for size, unit in UNITS:
        if amount >= size:
            text = f"{amount // size} {unit}"
            break
    else:
        text = f"{amount}s"
    return f"{text} ago" if seconds > 0 else f"in {text}"


def time_tag(moment: datetime | None, now: datetime | None = None, css: str = "") -> Markup:
    """Render ``<time>`` with the relative text, the exact UTC time in its title.

    static/js/times.js rewrites the title in the viewer's own zone and refreshes the text.
    """
    if moment is None:
        return Markup("")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    exact = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    css_attr = f' class="{escape(css)}"' if css else ""
    return Markup(
        f'<time datetime="{moment.isoformat()}" title="{exact}" data-relative{css_attr}>'
        f"{escape(relative(moment, now or datetime.now(UTC)))}</time>"
    )
