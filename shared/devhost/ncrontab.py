"""Timer schedules as the Azure Functions timer trigger reads them.

An NCRONTAB expression has six fields, ``{second} {minute} {hour} {day} {month}
{day-of-week}``, each ``*``, a value, a range ``a-b``, a step ``*/n`` / ``a-b/n`` / ``a/n``
(``a`` to the field's maximum), or a comma list of those. Months and days of the week may be
named (``jan``, ``Monday``; any prefix of the English name, first match wins, as NCrontab
does). Day of week runs 0-6 from Sunday. A five-field expression (no seconds) fires at second
0, as the host accepts it too.

Two rules differ from Vixie cron and follow NCrontab instead: a restricted day **and** a
restricted day of week must both match (``0 0 0 13 * 5`` is Friday the 13th only), and ``7``
is not Sunday. Schedules run in UTC.

The App Service "TimeSpan" form ``hh:mm:ss`` (or ``d.hh:mm:ss``) is an interval between
runs: the next run is that long after the given moment.

Bad input raises ``ValueError`` naming the field and the reason.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import re

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")

# (name, lowest, highest, value names) in expression order.
_FIELDS = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _WEEKDAYS),
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # at most; Feb 29 exists
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?")
# Far enough for any satisfiable day/weekday/Feb-29 combination (the Gregorian cycle).
_SEARCH_YEARS = 400


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either the six allowed-value sets of a cron expression, or an
    interval (TimeSpan form)."""

    expression: str
    seconds: tuple[int, ...] = ()
    minutes: tuple[int, ...] = ()
    hours: tuple[int, ...] = ()
    days: tuple[int, ...] = ()
    months: tuple[int, ...] = ()
    weekdays: tuple[int, ...] = ()
    interval: dt.timedelta | None = None

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after ``moment``, as an aware UTC datetime.

        A naive ``moment`` is taken to be UTC. Raises ``ValueError`` if the schedule can
        never fire (say Feb 30)."""
        moment = _as_utc(moment)
        if self.interval is not None:
            return moment + self.interval
        t = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
        last_year = t.year + _SEARCH_YEARS
        while t.year <= last_year:
            if t.month not in self.months:
                t = _first_of_next_month(t)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.weekdays:
                t = _start_of_day(t) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = _advance(t, self.hours, t.hour, "hour", _start_of_day(t), dt.timedelta(days=1))
            elif t.minute not in self.minutes:
                top = t.replace(minute=0, second=0)
                t = _advance(t, self.minutes, t.minute, "minute", top, dt.timedelta(hours=1))
            elif t.second not in self.seconds:
                top = t.replace(second=0)
                t = _advance(t, self.seconds, t.second, "second", top, dt.timedelta(minutes=1))
            else:
                return t
        raise ValueError(f"schedule {self.expression!r} never fires")


@functools.lru_cache(maxsize=256)
def parse(expression: str) -> Schedule:
    """Parse an NCRONTAB expression (or a TimeSpan) into a ``Schedule``."""
    text = expression.strip()
    if " " not in text and ":" in text:
        return _parse_timespan(expression, text)
    parts = text.split()
    if len(parts) == 5:
        parts.insert(0, "0")
    if len(parts) != 6:
        raise ValueError(
            f"invalid NCRONTAB expression {expression!r}: expected 6 fields "
            f"'{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}', "
            f"got {len(parts)}")
    sets = [_parse_field(expression, part, *field) for part, field in zip(parts, _FIELDS)]
    days, months = sets[3], sets[4]
    if not any(day <= _DAYS_IN_MONTH[month - 1] for month in months for day in days):
        raise ValueError(f"invalid NCRONTAB expression {expression!r}: day field "
                         f"{parts[3]!r} never occurs in month field {parts[4]!r}")
    return Schedule(expression, *sets)


def next_after(expression: str, moment: dt.datetime) -> dt.datetime:
    """The first occurrence of ``expression`` strictly after ``moment`` (UTC)."""
    return parse(expression).next_after(moment)


def _parse_field(expression: str, text: str, name: str, low: int, high: int,
                 names: tuple[str, ...] | None) -> tuple[int, ...]:
    def fail(reason: str) -> ValueError:
        return ValueError(f"invalid NCRONTAB expression {expression!r}: "
                          f"{name} field {text!r}: {reason}")

    def value(token: str) -> int:
        if token.isascii() and token.isdigit():
            number = int(token)
        elif names and token.isalpha():
            matches = [i for i, full in enumerate(names) if full.lower().startswith(token.lower())]
            if not matches:
                raise fail(f"{token!r} is not a {name} name")
            number = matches[0] + low
        else:
            raise fail(f"{token!r} is not a number" + (" or a name" if names else ""))
        if not low <= number <= high:
            raise fail(f"{number} is out of range {low}-{high}")
        return number

    allowed: set[int] = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise fail(f"step {step_text!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, end = value(first), value(last)
            if start > end:
                raise fail(f"range {body!r} runs backwards")
        else:
            start = value(body)
            end = high if slash else start
        allowed.update(range(start, end + 1, step))
    return tuple(sorted(allowed))


def _parse_timespan(expression: str, text: str) -> Schedule:
    match = _TIMESPAN.fullmatch(text)
    if not match:
        raise ValueError(f"invalid TimeSpan schedule {expression!r}: expected hh:mm:ss")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"invalid TimeSpan schedule {expression!r}: hours must be 0-23, "
                         f"minutes and seconds 0-59")
    interval = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not interval:
        raise ValueError(f"invalid TimeSpan schedule {expression!r}: interval must be positive")
    return Schedule(expression, interval=interval)


def _as_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _start_of_day(t: dt.datetime) -> dt.datetime:
    return t.replace(hour=0, minute=0, second=0)


def _first_of_next_month(t: dt.datetime) -> dt.datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return _start_of_day(t).replace(year=year, month=month, day=1)


def _advance(t: dt.datetime, allowed: tuple[int, ...], current: int, unit: str,
             top: dt.datetime, carry: dt.timedelta) -> dt.datetime:
    """Move ``t`` to the next allowed value of ``unit`` after ``current`` (lower units reset),
    or to the start of the next larger unit (``top + carry``) when there is none."""
    i = bisect.bisect_right(allowed, current)
    if i == len(allowed):
        return top + carry
    lower = {"hour": {"minute": 0, "second": 0}, "minute": {"second": 0}, "second": {}}[unit]
    return t.replace(**{unit: allowed[i]}, **lower)
