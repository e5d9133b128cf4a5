"""Parsing and formatting of times and durations given on the command line. Pure: the clock is passed in.

* :func:`parse_time` -- ``--time``, ``--at``: ISO-8601, ``N UNIT ago``, ``now``, and a day and/or a time of day
  (``yesterday``, ``last tuesday 10:00``, ``14:30``, ``fri 9am``).
* :func:`format_time` -- the one text form of a snapshot time (``2026-11-20T10:00:00.000000Z``).
* :func:`parse_duration` -- ``--keep-within``: ``1y6m``, ``30d``, ``2w``, ``12h`` (calendar years and months).
* :func:`parse_wait` -- ``--lock-wait``: ``30s``, ``5m``, ``1h30m`` or bare seconds.

Local time (an ISO-8601 time without offset, ``today``, ``10:00``) is the system timezone, as ``datetime.astimezone()``
sees it; that reads the process's TZ setting, but nothing here touches the environment itself.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from vault.errors import UsageError

__all__ = ["Duration", "format_time", "parse_duration", "parse_time", "parse_wait"]

_ISO = re.compile(  # extended form (2026-11-20T10:00:00Z; minutes and seconds may be left out)
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    (?:[Tt\ ]
        (?P<hour>\d{2})(?::(?P<minute>\d{2})
        (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        (?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?
    )?
    """,
    re.VERBOSE | re.ASCII,
)
_ISO_BASIC = re.compile(  # basic form (20261120T100000Z)
    r"""
    (?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})
    (?:[Tt]
        (?P<hour>\d{2})(?:(?P<minute>\d{2})
        (?:(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        (?P<tz>[Zz]|[+-]\d{2}(?:\d{2})?)?
    )?
    """,
    re.VERBOSE | re.ASCII,
)

_UNIT_SECONDS: dict[str, int] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "wk", "wks", "week", "weeks"), 7 * 86400),
):
    _UNIT_SECONDS.update(dict.fromkeys(_names, _seconds))
_UNIT_MONTHS = {"month": 1, "months": 1, "y": 12, "yr": 12, "yrs": 12, "year": 12, "years": 12}  # on the calendar

_AGO = re.compile(r"(?P<n>\d+)\s*(?P<unit>[a-z]+)\s+ago", re.ASCII)

_WEEKDAYS: dict[str, int] = {}
for _day, _names in enumerate((("monday", "mon"), ("tuesday", "tue", "tues"), ("wednesday", "wed"),
                               ("thursday", "thu", "thur", "thurs"), ("friday", "fri"), ("saturday", "sat"),
                               ("sunday", "sun"))):
    _WEEKDAYS.update(dict.fromkeys(_names, _day))
_CLOCK = re.compile(  # a time of day: 10:00, 10:00:30, 10:00:30.5, 10am, 3:30 p.m., noon, midnight
    r"""
    (?P<hour>\d{1,2})
    (?: :(?P<minute>\d{2}) (?: :(?P<second>\d{2}) (?:[.,](?P<fraction>\d+))? )? )?
    (?: \s*(?P<half>a|p)\.?m\.? )?
    | (?P<word>noon|midnight)
    """,
    re.VERBOSE | re.ASCII,
)


def _quote(text: str) -> str:
    """``'text'`` for a message, or its repr when it holds newlines or other unprintables (one-line errors)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _local_midnight_utc(day: datetime) -> datetime:
    """Local midnight of ``day``'s calendar date, as UTC: on a day whose midnight never showed on the clocks
    (summer time starting at 00:00: Santiago, Havana) the instant of the jump, as for a date alone (``to_utc``);
    the OS's own resolution put it an hour early, at 23:00 of the day before."""
    return to_utc(datetime(day.year, day.month, day.day))


def to_utc(dt: datetime) -> datetime:
    """Convert to aware UTC; a naive ``dt`` is taken as local time. A local time that never showed on the
    clocks (in the hour skipped when summer time starts) is the instant of the jump: 02:30 on a night that
    goes from 02:00 to 03:00 comes after 01:59 and is the same instant as 03:00, so times keep their order."""
    utc = dt.astimezone(timezone.utc)
    if dt.tzinfo is None and utc.astimezone().replace(tzinfo=None) != dt:
        a, b = sorted((utc, dt.replace(fold=1).astimezone(timezone.utc)))
        lo, hi = math.floor(a.timestamp()), math.ceil(b.timestamp())
        before = datetime.fromtimestamp(lo, timezone.utc).astimezone().utcoffset()
        while hi - lo > 1:  # the first second with the new offset lies between the two readings
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, timezone.utc).astimezone().utcoffset() == before:
                lo = mid
            else:
                hi = mid
        utc = datetime.fromtimestamp(hi, timezone.utc)
    return utc


def parse_time(text: str, now: datetime, whole: bool = False) -> datetime:
    """Parse a user-given time into an aware UTC datetime.

    Accepts ISO-8601 with ``Z`` or an offset (``2026-11-20T10:00:00Z``, ``2026-11-20T10:00:00.123456+02:00``);
    without an offset the time is local; a date alone (``2026-11-20``) is local midnight; ``T`` may be a space
    and seconds, or minutes and seconds, may be left out; the basic form (``20261120T100000Z``) too. Fractional seconds beyond microseconds are truncated. Also ``N UNIT ago`` (units
    s/sec/second, min/minute, h/hour, d/day, w/week, month, y/year (months and years on the calendar, the day
    clamped to the month's end), plural ok, ``N`` a whole number), ``now``, and a local day and/or a time of
    day (``today``, ``yesterday``, ``tuesday``, ``last tue``, alone their midnight; ``10:00``, ``at 9:30pm``,
    ``noon`` on it, alone today's: :func:`_day_and_clock`). ``now`` is the clock; naive means local.

    ``whole`` (for ``--at``, "at or before"): an ISO time given to the second or the minute stands for all of
    that second or minute -- its last microsecond -- so a time copied from text output, which shows whole
    seconds, selects the snapshot taken in that second (a time of day too: ``yesterday 10:00`` is up to
    10:00:59.999999). A date alone stays its midnight, an hour alone its first instant ("as it was at 9" is
    09:00:00, not a snapshot taken at 09:45; ``9am`` too).
    """
    raw = text.strip()
    lowered = raw.lower()
    try:
        if lowered == "now":
            return to_utc(now)
        match = _AGO.fullmatch(lowered)
        if match and match["unit"] in _UNIT_SECONDS:
            return to_utc(now) - timedelta(seconds=int(match["n"]) * _UNIT_SECONDS[match["unit"]])
        if match and match["unit"] in _UNIT_MONTHS:  # on the local calendar (as a date alone, and --keep-within):
            # on the UTC one, "1 month ago" just after midnight on 1 March in Berlin was 29 January
            wall = to_utc(now).astimezone().replace(tzinfo=None)
            when = Duration(months=int(match["n"]) * _UNIT_MONTHS[match["unit"]]).subtract_from(wall)
            if when.year < 2:
                raise ValueError("before year 1")
            return to_utc(when)
        match = _ISO.fullmatch(raw) or _ISO_BASIC.fullmatch(raw)
        if match:
            when = _from_iso(match)
            return _widened(when, match) if whole else when
        day = _day_and_clock(lowered, now, whole)
        if day is not None:
            return day
    except (ValueError, OverflowError):
        pass
    raise UsageError(
        f"cannot parse time {_quote(text)}: use ISO-8601 (2026-11-20T10:00:00Z), 'N days ago' or "
        "'last tuesday 10:00'"
    )


def _day_and_clock(lowered: str, now: datetime, whole: bool) -> datetime | None:
    """A local day (``today``, ``yesterday``, ``tuesday``: the latest Tuesday up to today, ``last tuesday``:
    before today) and/or a time of day on it (``10:00``, ``at 10:00``, ``9:30pm``, ``noon``; either order):
    the day alone is its local midnight, a time alone is today's. None when ``lowered`` is not such a
    phrase; ValueError for an impossible time. ``whole`` as in :func:`parse_time`: a time given to the minute
    or second stands for all of it; an hour (``10am``, ``noon``) is its first instant."""
    words = lowered.split()
    if not words:
        return None
    day, rest = _day(words, now)
    if day is None:
        day, rest = _day(words[::-1], now, backwards=True)
        rest = rest[::-1]
    if rest[:1] == ["at"]:
        rest = rest[1:] or ["at"]  # ("tuesday at": no time of day)
    clock = _CLOCK.fullmatch(" ".join(rest)) if rest else None
    if rest and (clock is None or (clock["minute"] is None and clock["half"] is None and clock["word"] is None)):
        return None  # (a bare "10" is no time of day)
    if day is None and clock is None:
        return None
    if day is None:
        day = now.astimezone().date()
    if clock is None:
        return _local_midnight_utc(datetime(day.year, day.month, day.day))
    if clock["word"]:
        hour, minute, second, micro = (12 if clock["word"] == "noon" else 0), 0, 0, 0
    else:
        hour, minute, second = int(clock["hour"]), int(clock["minute"] or 0), int(clock["second"] or 0)
        micro = _micro(clock["fraction"])
        if clock["half"]:
            if not 1 <= hour <= 12:
                raise ValueError("hour out of range for am/pm")
            hour = hour % 12 + (12 if clock["half"] == "p" else 0)
    when = to_utc(datetime(day.year, day.month, day.day, hour, minute, second, micro))
    return _widened(when, clock) if whole else when


def _widened(when: datetime, match: re.Match[str]) -> datetime:
    """For ``--at``: a time given to the second or the minute (no fraction) stands for all of it -- its last
    microsecond; an hour alone stays its first instant."""
    if match["minute"] is None or match["fraction"] is not None:
        return when
    span = timedelta(seconds=1) if match["second"] is not None else timedelta(minutes=1)
    return when + span - timedelta(microseconds=1)


def _micro(fraction: str | None) -> int:
    """Fractional seconds as microseconds (digits beyond six truncated)."""
    return int((fraction or "")[:6].ljust(6, "0"))


def _day(words: list[str], now: datetime, backwards: bool = False) -> tuple[date | None, list[str]]:
    """The local date the first words of ``words`` name (the last ones, reversed, with ``backwards``), and
    the words left; (None, ``words``) when they name no day."""
    today = now.astimezone().date()
    if words[:1] == ["today"]:
        return today, words[1:]
    if words[:1] == ["yesterday"]:
        return today - timedelta(days=1), words[1:]
    last = words[1:2] == ["last"] if backwards else words[:1] == ["last"]
    name = words[0] if backwards or not last else (words[1] if len(words) > 1 else "")
    if name not in _WEEKDAYS:
        return None, words
    back = (today.weekday() - _WEEKDAYS[name]) % 7 or (7 if last else 0)
    return today - timedelta(days=back), words[2:] if last else words[1:]


def _from_iso(match: re.Match[str]) -> datetime:
    """Build the UTC datetime of an ``_ISO`` match; ValueError for out-of-range fields."""
    micro = _micro(match["fraction"])
    naive = datetime(
        int(match["year"]),
        int(match["month"]),
        int(match["day"]),
        int(match["hour"] or 0),
        int(match["minute"] or 0),
        int(match["second"] or 0),
        micro,
    )
    tz = match["tz"]
    if tz is None:
        return to_utc(naive)
    if tz in "Zz":
        return naive.replace(tzinfo=timezone.utc)
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return naive.replace(tzinfo=timezone(-offset if tz[0] == "-" else offset)).astimezone(timezone.utc)


def format_time(dt: datetime) -> str:
    """ISO-8601 UTC with exactly six fractional digits and ``Z``: ``2026-11-20T10:00:00.000000Z``.

    ``dt`` must be aware. ``parse_time(format_time(t), now) == t`` for every aware ``t``.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_time needs an aware datetime")
    u = dt.astimezone(timezone.utc)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


@dataclass(frozen=True)
class Duration:
    """A retention span: calendar years and months plus fixed days and hours (weeks are stored as days)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        parts = [f"{n}{u}" for n, u in zip((self.years, self.months, self.days, self.hours), "ymdh") if n]
        return "".join(parts) or "0h"

    def subtract_from(self, dt: datetime) -> datetime:
        """``dt`` minus this span: years and months on the calendar (the day is clamped to the month's end,
        so 2026-03-31 minus 1m is 2026-02-28), then days and hours as fixed lengths. Keeps ``dt``'s tzinfo;
        a result before year 1 is clamped to ``datetime.min`` (in ``dt``'s tzinfo)."""
        floor = datetime.min.replace(tzinfo=dt.tzinfo)
        total = dt.year * 12 + (dt.month - 1) - (self.years * 12 + self.months)
        year, month0 = divmod(total, 12)
        if year < 1:
            return floor
        month = month0 + 1
        day = min(dt.day, calendar.monthrange(year, month)[1])
        try:
            return dt.replace(year=year, month=month, day=day) - timedelta(days=self.days, hours=self.hours)
        except OverflowError:
            return floor

    def approx_timedelta(self) -> timedelta:
        """A fixed-length approximation: y = 365 days, m = 30 days."""
        return timedelta(days=self.years * 365 + self.months * 30 + self.days, hours=self.hours)


_DURATION_PART = re.compile(r"\s*(\d+)\s*([ymwdh])", re.ASCII)
_DURATION = re.compile(r"(?:\s*\d+\s*[ymwdh])+\s*", re.ASCII)


def parse_duration(text: str) -> Duration:
    """Parse a ``--keep-within`` span: one or more ``N UNIT`` with unit y (years), m (months), w (weeks = 7 days),
    d (days), h (hours), e.g. ``30d``, ``2w``, ``1y6m``, ``12h``. A repeated unit adds up. No bare numbers."""
    if not _DURATION.fullmatch(text):
        raise UsageError(
            f"cannot parse duration {_quote(text)}: use e.g. 30d, 2w, 1y6m, 12h "
            "(y=years, m=months, w=weeks, d=days, h=hours)"
        )
    totals = dict.fromkeys("ymwdh", 0)
    for number, unit in _DURATION_PART.findall(text):
        totals[unit] += int(number)
    return Duration(totals["y"], totals["m"], totals["d"] + 7 * totals["w"], totals["h"])


_WAIT_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_WAIT_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])", re.ASCII)
_WAIT = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+", re.ASCII)


def parse_wait(text: str) -> float:
    """Parse a ``--lock-wait`` value into seconds: a bare number of seconds (``0``, ``30``, ``2.5``) or parts
    with units d, h, m (minutes), s, e.g. ``30s``, ``5m``, ``2h``, ``1h30m``."""
    raw = text.strip().lower()
    seconds = math.nan
    if re.fullmatch(r"\d+(?:\.\d+)?", raw, re.ASCII):
        seconds = float(raw)
    elif _WAIT.fullmatch(raw):
        seconds = sum(float(n) * _WAIT_UNITS[u] for n, u in _WAIT_PART.findall(raw))
    if math.isfinite(seconds):
        return seconds
    raise UsageError(f"cannot parse wait time {_quote(text)}: use seconds (30) or e.g. 30s, 5m, 1h30m")
