"""Job schedules: crontab expressions and intervals parsed into APScheduler 3 triggers.

A schedule reads like crontab (DESIGN §8): 5 fields, or 6 with seconds last; day-of-week counts
0 or 7 = Sunday; when both day-of-month and day-of-week are restricted a day matching either
fires; no day is skipped across a DST change and a fixed-hour fire inside the repeated autumn
hour runs once. APScheduler's CronTrigger does none of that by itself, so this module translates.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

SHORTHANDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
CRON_FIELDS = (  # (crontab label, CronTrigger argument), in crontab order; seconds come last
    ("minute", "minute"),
    ("hour", "hour"),
    ("day-of-month", "day"),
    ("month", "month"),
    ("day-of-week", "day_of_week"),
    ("second", "second"),
)
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday
INTERVAL_PATTERN = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
INTERVAL_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
MAX_INTERVAL_SECONDS = 366 * 86400


class ScheduleError(ValueError):
    """A schedule, interval or timezone that cannot be used; ``field`` names which."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CrontabTrigger(CronTrigger):
    """A CronTrigger that steps through DST changes the way crontab does."""

    def get_next_fire_time(self, previous_fire_time, now):
        if previous_fire_time is not None:
            # never answer before the previous fire: adding a timedelta to an aware datetime in
            # the repeated autumn hour drops its fold, so a caller's `now` can be an hour early
            now = max(now.astimezone(UTC), previous_fire_time.astimezone(UTC))
        fire = super().get_next_fire_time(previous_fire_time, now)
        # crontab runs "30 2 * * *" once on the night clocks go back; APScheduler would fire
        # at 02:30 summer time and again at 02:30 winter time. Wildcard hours fire in both.
        while fire is not None and _is_repeated_wall_time(fire) and self._has_fixed_hour():
            later = fire.astimezone(UTC) + timedelta(microseconds=1)
            fire = super().get_next_fire_time(fire, later)
        return fire

    def _increment_field_value(self, dateval, fieldnum):
        moved, fieldnum = super()._increment_field_value(dateval, fieldnum)
        # APScheduler 3.11 adds the wall-clock difference in UTC, so a jump to another day across
        # a DST change lands an hour off and skips that day (agronholm/apscheduler#529). Across
        # days, build the intended wall time in the zone instead.
        wall = dateval.replace(tzinfo=None) + (moved.astimezone(UTC) - dateval.astimezone(UTC))
        if wall.date() != dateval.date():
            return wall.replace(tzinfo=self.timezone), fieldnum
        return moved, fieldnum

    def _has_fixed_hour(self) -> bool:
        hour = self.fields[CronTrigger.FIELD_NAMES.index("hour")]
        return str(hour) != "*"


def _is_repeated_wall_time(moment: datetime) -> bool:
    return moment.fold == 1 and moment.replace(fold=0).utcoffset() != moment.utcoffset()


def parse_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone called ``name`` or raise ScheduleError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError("timezone", f"unknown timezone {name!r}") from None


def parse_interval(text: str) -> timedelta:
    """Return the duration of ``30s``, ``15m``, ``2h``, ``1d`` or a combination like ``1h30m``."""
    match = INTERVAL_PATTERN.match(text.replace(" ", "").lower()) if text.strip() else None
    if not match:
        raise ScheduleError(
            "interval", f"{text!r} is not a duration like 30s, 15m, 2h, 1d or 1h30m"
        )
    amounts = zip(match.groups(), INTERVAL_UNITS, strict=True)
    seconds = sum(int(n or 0) * size for n, (_, size) in amounts)
    if seconds == 0:
        raise ScheduleError("interval", f"{text!r} is zero; give a duration longer than that")
    if seconds > MAX_INTERVAL_SECONDS:  # also keeps timedelta and APScheduler from overflowing
        raise ScheduleError("interval", f"{text!r} is longer than a year; use a cron schedule")
    return timedelta(seconds=seconds)


def build_trigger(schedule: str | None, interval: str | None, timezone: str) -> BaseTrigger | None:
    """Return the trigger for a job's schedule or interval; None means manual only."""
    zone = parse_timezone(timezone)
    if schedule and interval:
        raise ScheduleError("interval", "give a schedule or an interval, not both")
    if interval:
        return IntervalTrigger(seconds=int(parse_interval(interval).total_seconds()), timezone=zone)
    if schedule:
        return _cron_trigger(schedule, zone)
    return None


def _cron_trigger(schedule: str, zone: ZoneInfo) -> BaseTrigger:
    fields, either_day = _crontab_fields(schedule)
    if not either_day:
        return CrontabTrigger(**fields, timezone=zone)
    # crontab: with both restricted, a day matching EITHER field fires; CronTrigger wants both
    return OrTrigger(
        [
            CrontabTrigger(**{**fields, "day_of_week": "*"}, timezone=zone),
            CrontabTrigger(**{**fields, "day": "*"}, timezone=zone),
        ]
    )


def _crontab_fields(schedule: str) -> tuple[dict[str, str], bool]:
    """Return CronTrigger arguments for a crontab expression, each field checked on its own.

    The flag says whether a day fires when it matches either day field: crontab's rule when
    neither day-of-month nor day-of-week starts with ``*``.
    """
    text = schedule.strip()
    if text.startswith("@"):
        if text.lower() not in SHORTHANDS:
            known = ", ".join(SHORTHANDS)
            raise ScheduleError("schedule", f"unknown shorthand {text!r} (known: {known})")
        text = SHORTHANDS[text.lower()]
    values = text.split()
    if len(values) not in (5, 6):
        raise ScheduleError(
            "schedule",
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds "
            f"last, got {len(values)} in {schedule!r}",
        )
    fields = {"second": "0"}
    for (label, argument), value in zip(CRON_FIELDS, values, strict=False):  # seconds may be absent
        if argument == "day_of_week":
            value = _translate_day_of_week(value)
        try:
            CronTrigger(**{argument: value}, timezone=UTC)
        except ValueError as error:
            raise ScheduleError("schedule", f"{label} field {value!r}: {_reason(error)}") from None
        fields[argument] = value
    either_day = not values[2].startswith("*") and not values[4].startswith("*")
    return fields, either_day


def _reason(error: ValueError) -> str:
    message = str(error)
    if message.startswith("Unrecognized expression"):
        return "not a valid value"
    message = re.sub(r"^Error validating expression '[^']*': ", "", message)
    return message[:1].lower() + message[1:]


def _translate_day_of_week(value: str) -> str:
    """Turn crontab day-of-week (0 or 7 = Sunday, names, ranges, steps) into CronTrigger names.

    CronTrigger counts 0 = Monday and does not translate crontab numbers, so "1-5" would mean
    Tuesday to Saturday there; an explicit list of names means the same thing to both.
    """
    days: set[int] = set()
    for item in value.lower().split(","):
        days.update(_day_of_week_item(value, item))
    if len(days) == 7:
        return "*"
    return ",".join(DAY_NAMES[day] for day in sorted(days))


def _day_of_week_item(value: str, item: str) -> set[int]:
    def fail(reason: str) -> ScheduleError:
        return ScheduleError("schedule", f"day-of-week field {value!r}: {reason}")

    span, _, step_text = item.partition("/")
    if step_text and (not step_text.isdigit() or int(step_text) == 0):
        raise fail(f"step {step_text!r} must be a whole number above 0")
    step = int(step_text or 1)
    if span == "*":
        first, last = 0, 6
    else:
        first_text, dash, last_text = span.partition("-")
        first = _day_number(first_text, fail)
        last = _day_number(last_text, fail) if dash else (7 if step_text else first)
        if first > last:
            raise fail(f"range {span!r} runs backwards")
    return {day % 7 for day in range(first, last + 1, step)}


def _day_number(text: str, fail) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text in DAY_NAMES:
        return DAY_NAMES.index(text)
    raise fail(f"{text!r} is not a day (0-7 with 0 and 7 = Sunday, or sun..sat)")


def next_fire_times(
    trigger: BaseTrigger, count: int = 5, after: datetime | None = None
) -> list[datetime]:
    """Return the next ``count`` fire times strictly after ``after`` (default: now), aware."""
    moment = (after or datetime.now(UTC)).astimezone(UTC) + timedelta(microseconds=1)
    fires: list[datetime] = []
    previous = None
    while len(fires) < count:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None or (previous is not None and fire.timestamp() <= previous.timestamp()):
            break  # finished, or a trigger that stopped advancing: never spin in a preview
        # a wall time skipped by spring DST (02:30 in Paris) comes back as-is: show the instant
        fires.append(datetime.fromtimestamp(fire.timestamp(), fire.tzinfo))
        previous, moment = fire, fire.astimezone(UTC) + timedelta(microseconds=1)
    return fires


def describe_schedule(schedule: str | None, interval: str | None) -> str:
    """Say a schedule in short plain words, or give the expression when no wording fits."""
    if interval:
        try:
            return "every " + _duration_words(parse_interval(interval))
        except ScheduleError:
            return interval
    if not schedule:
        return "manual only"
    text = " ".join(schedule.split())
    expression = SHORTHANDS.get(text.lower(), text)
    values = expression.split()
    if len(values) == 6:
        if values[:5] == ["*"] * 5 and re.fullmatch(r"\*/\d+", values[5]):
            return f"every {values[5][2:]} seconds"
        if values[5] != "0":
            return text
        values = values[:5]
    return _cron_words(values) if len(values) == 5 else text


def _duration_words(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    parts = []
    for name, size in INTERVAL_UNITS:
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount} {name}{'s' if amount > 1 else ''}")
    return parts[0].removeprefix("1 ") if len(parts) == 1 else " ".join(parts)


def _cron_words(values: list[str]) -> str:
    minute, hour, day, month, weekday = values
    expression = " ".join(values)
    if (day, month, weekday) != ("*", "*", "*"):
        if not (minute.isdigit() and hour.isdigit() and month == "*"):
            return expression
        at = f"at {int(hour):02d}:{int(minute):02d}"
        if day == "*" and weekday in ("1-5", "mon-fri"):
            return f"{at} on weekdays"
        if day == "*" and re.fullmatch(r"[0-7](,[0-7])*", weekday):
            names = [DAY_NAMES[int(n) % 7].capitalize() for n in weekday.split(",")]
            return f"{at} on {', '.join(names)}"
        if weekday == "*" and day.isdigit():
            return f"{at} on day {int(day)} of every month"
        return expression
    if minute == "*" and hour == "*":
        return "every minute"
    if re.fullmatch(r"\*/\d+", minute) and hour == "*":
        return f"every {minute[2:]} minutes"
    if minute.isdigit() and hour == "*":
        return f"every hour at :{int(minute):02d}"
    if minute.isdigit() and re.fullmatch(r"\*/\d+", hour):
        return f"every {hour[2:]} hours at :{int(minute):02d}"
    if minute.isdigit() and hour.isdigit():
        return f"at {int(hour):02d}:{int(minute):02d} every day"
    return expression
