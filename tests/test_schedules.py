"""Schedules read like crontab and fire when crontab would, DST changes included."""

from datetime import UTC, datetime, timedelta

import pytest

from app.schedules import (
    ScheduleError,
    build_trigger,
    describe_schedule,
    next_fire_times,
    parse_interval,
)


def fires(schedule, after, count=4, timezone="UTC", interval=None):
    trigger = build_trigger(schedule, interval, timezone)
    return next_fire_times(trigger, count, after=after)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_a_sixth_field_is_seconds_and_comes_last():
    times = fires("0 * * * * */20", after=utc(2025, 1, 6, 10, 59, 30))
    assert times == [
        utc(2025, 1, 6, 11, 0, 0),
        utc(2025, 1, 6, 11, 0, 20),
        utc(2025, 1, 6, 11, 0, 40),
        utc(2025, 1, 6, 12, 0, 0),
    ]


def test_next_fire_times_are_strictly_after_the_given_time_and_aware():
    times = fires("*/15 * * * *", after=utc(2025, 1, 6, 10, 15), count=2)
    assert times == [utc(2025, 1, 6, 10, 30), utc(2025, 1, 6, 10, 45)]
    assert all(time.tzinfo is not None for time in times)


def test_weekdays_one_to_five_skip_the_weekend_as_in_cron():
    friday_night = utc(2025, 1, 3, 3, 0)
    times = fires("0 2 * * 1-5", after=friday_night, count=5)
    assert [time.strftime("%a %d") for time in times] == [
        "Mon 06",
        "Tue 07",
        "Wed 08",
        "Thu 09",
        "Fri 10",
    ]


@pytest.mark.parametrize(
    ("day_of_week", "expected"),
    [
        ("0", ["Sun"]),
        ("7", ["Sun"]),
        ("6,0", ["Sat", "Sun"]),
        ("5-7", ["Fri", "Sat", "Sun"]),
        ("*/2", ["Sun", "Tue", "Thu", "Sat"]),
        ("mon-wed", ["Mon", "Tue", "Wed"]),
    ],
)
def test_day_of_week_counts_sunday_as_zero_or_seven(day_of_week, expected):
    times = fires(f"0 12 * * {day_of_week}", after=utc(2025, 1, 4, 13), count=14)
    assert sorted({time.strftime("%a") for time in times}, key=expected.index) == expected


def test_with_both_day_fields_restricted_either_one_fires_as_in_cron():
    times = fires("0 0 1 * 1", after=utc(2025, 1, 26), count=3)
    assert times == [utc(2025, 1, 27), utc(2025, 2, 1), utc(2025, 2, 3)]  # Monday, 1st, Monday


def test_daily_at_0230_in_paris_fires_once_on_the_spring_forward_day():
    times = fires("30 2 * * *", after=utc(2025, 3, 28, 12), count=3, timezone="Europe/Paris")
    # 02:30 does not exist on 30 March (02:00 -> 03:00): it fires once, an hour later in wall time
    assert [time.isoformat() for time in times] == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:30:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]
    assert times[1].astimezone(UTC) == utc(2025, 3, 30, 1, 30)


def test_daily_at_0230_in_paris_fires_once_when_the_clock_goes_back():
    times = fires("30 2 * * *", after=utc(2025, 10, 25, 12), count=2, timezone="Europe/Paris")
    assert [time.isoformat() for time in times] == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]


def test_wildcard_hours_keep_firing_through_the_repeated_hour():
    times = fires("0 * * * *", after=utc(2025, 10, 25, 23, 30), count=4, timezone="Europe/Paris")
    assert [time.astimezone(UTC).hour for time in times] == [0, 1, 2, 3]  # one per real hour


def test_fires_never_go_backwards_when_a_caller_adds_to_an_aware_time():
    trigger = build_trigger("*/20 * * * *", None, "Europe/Paris")
    fire = trigger.get_next_fire_time(None, utc(2025, 10, 26, 0, 30))  # 02:40 summer time
    seen = []
    for _ in range(6):
        # fire + 1µs loses the fold in the repeated hour: 02:20 winter time becomes summer time
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        seen.append(fire.astimezone(UTC))
    assert seen == [utc(2025, 10, 26, 1, minute) for minute in (0, 20, 40)] + [
        utc(2025, 10, 26, 2, minute) for minute in (0, 20, 40)
    ]


def test_a_monthly_fire_after_a_dst_change_is_not_skipped():
    # APScheduler 3.11 alone jumps to 1 May here: its day arithmetic lands an hour off
    times = fires("0 0 1 * *", after=utc(2025, 3, 28, 12), count=2, timezone="Europe/Paris")
    assert [time.isoformat() for time in times] == [
        "2025-04-01T00:00:00+02:00",
        "2025-05-01T00:00:00+02:00",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1d2h", 93600)],
)
def test_intervals_are_read_in_days_hours_minutes_and_seconds(text, seconds):
    assert parse_interval(text) == timedelta(seconds=seconds)


def test_an_interval_trigger_fires_every_interval():
    start = utc(2025, 1, 6, 10)
    times = fires(None, after=start, interval="15m", count=3)
    assert times[1] - times[0] == times[2] - times[1] == timedelta(minutes=15)


@pytest.mark.parametrize("text", ["0m", "0s", "abc", "15", "m15", "1.5h", "-5m", "", "400d"])
def test_zero_or_garbage_intervals_are_refused(text):
    with pytest.raises(ScheduleError) as error:
        parse_interval(text)
    assert error.value.field == "interval"


def test_an_unknown_timezone_is_named():
    with pytest.raises(ScheduleError) as error:
        build_trigger("0 2 * * *", None, "Mars/Base")
    assert (error.value.field, error.value.message) == ("timezone", "unknown timezone 'Mars/Base'")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("61 * * * *", "minute field '61': the last value (61) is higher than the maximum value"),
        ("0 24 * * *", "hour field '24':"),
        ("0 0 32 * *", "day-of-month field '32':"),
        ("0 0 * 13 *", "month field '13':"),
        ("0 0 * * 8", "day-of-week field '8': '8' is not a day"),
        ("0 0 * * 5-1", "day-of-week field '5-1': range '5-1' runs backwards"),
        ("0 0 * * * 60", "second field '60':"),
        ("x * * * *", "minute field 'x': not a valid value"),
        ("* * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6"),
        ("@reboot", "unknown shorthand '@reboot'"),
    ],
)
def test_an_invalid_cron_names_the_bad_field(schedule, message):
    with pytest.raises(ScheduleError) as error:
        build_trigger(schedule, None, "UTC")
    assert error.value.field == "schedule"
    assert error.value.message.startswith(message), error.value.message


def test_schedule_and_interval_together_are_refused_and_neither_is_manual():
    with pytest.raises(ScheduleError) as error:
        build_trigger("0 2 * * *", "15m", "UTC")
    assert error.value.field == "interval"
    assert build_trigger(None, None, "Europe/Paris") is None


@pytest.mark.parametrize("shorthand", ["@hourly", "@daily", "@midnight", "@weekly", "@yearly"])
def test_shorthands_mean_what_crontab_says(shorthand):
    equivalent = {
        "@hourly": "0 * * * *",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@weekly": "0 0 * * 0",
        "@yearly": "0 0 1 1 *",
    }[shorthand]
    after = utc(2025, 1, 6, 10, 5)
    assert fires(shorthand, after) == fires(equivalent, after)


@pytest.mark.parametrize(
    ("schedule", "interval", "words"),
    [
        (None, None, "manual only"),
        (None, "15m", "every 15 minutes"),
        (None, "1h", "every hour"),
        (None, "1h30m", "every 1 hour 30 minutes"),
        ("* * * * *", None, "every minute"),
        ("*/5 * * * *", None, "every 5 minutes"),
        ("15 * * * *", None, "every hour at :15"),
        ("0 */4 * * *", None, "every 4 hours at :00"),
        ("0 2 * * *", None, "at 02:00 every day"),
        ("@daily", None, "at 00:00 every day"),
        ("0 2 * * 1-5", None, "at 02:00 on weekdays"),
        ("30 6 * * 1,3", None, "at 06:30 on Mon, Wed"),
        ("0 3 1 * *", None, "at 03:00 on day 1 of every month"),
        ("* * * * * */10", None, "every 10 seconds"),
        ("0 0 1 1-6 *", None, "0 0 1 1-6 *"),
    ],
)
def test_describe_schedule_says_it_in_short_words(schedule, interval, words):
    assert describe_schedule(schedule, interval) == words
