"""NCRONTAB schedules: the next run after a moment, and clear errors on bad expressions."""

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.devhost import ncrontab

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    # every fifth second: 03 → 05
    ("*/5 * * * * *", "2024-01-01T12:00:03", "2024-01-01T12:00:05"),
    # strictly after: on an occurrence, the next one
    ("*/5 * * * * *", "2024-01-01T12:00:05", "2024-01-01T12:00:10"),
    ("0 */5 * * * *", "2024-01-01T12:03:10", "2024-01-01T12:05:00"),
    ("0 0 * * * *", "2024-01-01T12:00:00", "2024-01-01T13:00:00"),
    # sub-second moments round up to the next whole second
    ("* * * * * *", "2024-01-01T12:00:00.500", "2024-01-01T12:00:01"),
    # the sweep's schedule: second 0 of every minute
    ("0 */1 * * * *", "2024-01-01T12:00:00", "2024-01-01T12:01:00"),
    # ranges with steps: 1, 4, 7, 10
    ("1-10/3 * * * * *", "2024-01-01T12:00:04", "2024-01-01T12:00:07"),
    # a/n runs from a to the field's end: 5, 25, 45
    ("5/20 * * * * *", "2024-01-01T12:00:26", "2024-01-01T12:00:45"),
    ("0 0 8,12,17 * * *", "2024-01-01T12:30:00", "2024-01-01T17:00:00"),
    # weekdays at 09:30; 2024-01-05 is a Friday, so Monday the 8th
    ("0 30 9 * * 1-5", "2024-01-05T10:00:00", "2024-01-08T09:30:00"),
    ("0 30 9 * * mon-fri", "2024-01-05T10:00:00", "2024-01-08T09:30:00"),
    ("0 0 12 * * Sunday", "2024-01-01T00:00:00", "2024-01-07T12:00:00"),
    ("0 0 0 1 jan *", "2024-03-01T00:00:00", "2025-01-01T00:00:00"),
    # rolls over the year
    ("0 0 0 * * *", "2024-12-31T23:59:59", "2025-01-01T00:00:00"),
    # Feb 29 waits for a leap year
    ("0 0 0 29 2 *", "2023-03-01T00:00:00", "2024-02-29T00:00:00"),
    # day AND day-of-week (NCrontab, not Vixie cron): Friday the 13th
    ("0 0 0 13 * fri", "2024-01-01T00:00:00", "2024-09-13T00:00:00"),
    # five fields: no seconds, fires at second 0
    ("*/10 * * * *", "2024-01-01T12:03:00", "2024-01-01T12:10:00"),
    # TimeSpan: an interval after the moment
    ("00:05:00", "2024-01-01T12:03:07", "2024-01-01T12:08:07"),
    ("1.00:00:00", "2024-01-01T12:00:00", "2024-01-02T12:00:00"),
])
def test_next_after(expression, after, expected):
    assert ncrontab.next_after(expression, at(after)) == at(expected)


def test_moments_are_read_in_utc():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2024, 1, 1, 14, 0, 30, tzinfo=plus_two)  # 12:00:30 UTC
    naive = dt.datetime(2024, 1, 1, 12, 0, 30)  # taken as UTC

    assert ncrontab.next_after("0 * * * * *", local) == at("2024-01-01T12:01:00")
    assert ncrontab.next_after("0 * * * * *", naive) == at("2024-01-01T12:01:00")
    assert ncrontab.next_after("0 * * * * *", naive).tzinfo == UTC


@pytest.mark.parametrize(("expression", "named"), [
    ("* * * * * * *", "6 fields"),
    ("* * * *", "6 fields"),
    ("60 * * * * *", "second field '60'"),
    ("* 60 * * * *", "minute field"),
    ("* * 24 * * *", "hour field"),
    ("* * * 0 * *", "day field"),
    ("* * * * 13 *", "month field"),
    ("* * * * foo *", "month field 'foo'"),
    ("* * * * * 7", "day-of-week field"),
    ("*/0 * * * * *", "second field"),
    ("* 5-1 * * * *", "minute field '5-1'"),
    ("* * 1,,2 * * *", "hour field"),
    ("* * * L * *", "day field"),
    ("0 0 0 30 2 *", "never occurs"),
    ("25:00:00", "TimeSpan"),
    ("00:00:00", "TimeSpan"),
])
def test_bad_expressions_name_the_field(expression, named):
    with pytest.raises(ValueError, match=named):
        ncrontab.parse(expression)


def brute_force_next(schedule: ncrontab.Schedule, after: dt.datetime) -> dt.datetime:
    t = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while not (t.minute in schedule.minutes and t.hour in schedule.hours
               and t.day in schedule.days and t.month in schedule.months
               and (t.weekday() + 1) % 7 in schedule.weekdays):
        t += dt.timedelta(minutes=1)
    return t


def field(low: int, high: int):
    values = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        values.map(str),
        st.tuples(values, values).map(lambda r: f"{min(r)}-{max(r)}"),
        st.integers(1, 12).map(lambda n: f"*/{n}"),
        st.lists(values, min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    )


@settings(max_examples=60, deadline=None)
@given(minute=field(0, 59), hour=field(0, 23), weekday=field(0, 6),
       after=st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2030, 1, 1)))
def test_next_after_matches_a_minute_by_minute_search(minute, hour, weekday, after):
    # Given any minute/hour/weekday schedule (the next run is at most a week away)
    schedule = ncrontab.parse(f"0 {minute} {hour} * * {weekday}")
    after = after.replace(tzinfo=UTC)
    # Then the computed next run is the first matching minute after the moment
    assert schedule.next_after(after) == brute_force_next(schedule, after)
