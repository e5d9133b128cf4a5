"""Tests for vault.timespec: time, duration and wait parsing with a pinned clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import UsageError
from vault.timespec import Duration, format_time, parse_duration, parse_time, parse_wait

UTC = timezone.utc
NOW = datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a DST-observing local timezone (POSIX TZ rule: no tz database needed)."""
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- parse_time: ISO-8601 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-20T10:00:00Z", utc(2026, 11, 20, 10)),
        ("2026-11-20T10:00:00z", utc(2026, 11, 20, 10)),
        ("2026-11-20 10:00:00Z", utc(2026, 11, 20, 10)),
        ("2026-11-20T10:00Z", utc(2026, 11, 20, 10)),
        ("2026-11-20T10:00:00.123456+02:00", utc(2026, 11, 20, 8, 0, 0, 123456)),
        ("2026-11-20T10:00:00.5-05:30", utc(2026, 11, 20, 15, 30, 0, 500000)),
        ("2026-11-20T10:00:00+0200", utc(2026, 11, 20, 8)),
        ("2026-11-20T10:00:00+02", utc(2026, 11, 20, 8)),
        ("2026-11-20T10:00:00,25Z", utc(2026, 11, 20, 10, 0, 0, 250000)),
        ("2026-11-20T10:00:00.123456789Z", utc(2026, 11, 20, 10, 0, 0, 123456)),  # truncated, not rounded
        ("2026-11-20T10:00:00.9999999Z", utc(2026, 11, 20, 10, 0, 0, 999999)),
        ("  2026-11-20T10:00:00Z\n", utc(2026, 11, 20, 10)),
        ("2026-11-20T10:00:00.000000Z", utc(2026, 11, 20, 10)),
    ],
)
def test_iso_with_offset(text: str, expected: datetime) -> None:
    result = parse_time(text, NOW)
    assert result == expected
    assert result.tzinfo is UTC


def test_iso_without_offset_is_local() -> None:
    expected = datetime(2026, 11, 20, 10, 0, 0, 250000).astimezone(UTC)
    assert parse_time("2026-11-20T10:00:00.25", NOW) == expected
    assert parse_time("2026-11-20 10:00:00.25", NOW) == expected
    assert parse_time("2026-11-20", NOW) == datetime(2026, 11, 20).astimezone(UTC)


def test_local_time_uses_system_zone(new_york: None) -> None:
    assert parse_time("2026-11-20T10:00:00", NOW) == utc(2026, 11, 20, 15)  # EST
    assert parse_time("2026-07-01T10:00:00", NOW) == utc(2026, 7, 1, 14)  # EDT
    assert parse_time("2026-07-01", NOW) == utc(2026, 7, 1, 4)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "tomorrow",
        "2026-13-01",
        "2026-02-30",
        "2026-11-20T25:00:00Z",
        "2026-11-20T10:00:60Z",
        "2026-11-20T10:00:00+24:00",
        "2026-11-20Z",
        "2026-11-20+02:00",
        "2026112",
        "2026-11-20T1",
        "20261120T10:00",
        "2026-11-20T10:00:00.Z",
        "2026-11-20T10:00:00 Z",
        "３ days ago",
        "3 fortnights ago",
        "3 m ago",
        "-3 days ago",
        "3 days",
        "days ago",
        "1.5 hours ago",
        "99999999999999999999 days ago",
        "2026-11-20\nT10:00Z",
    ],
)
def test_bad_times(text: str) -> None:
    with pytest.raises(UsageError, match=r"^cannot parse time .*: use ISO-8601 \(2026-11-20T10:00:00Z\), 'N days ago' or 'last tuesday 10:00'$"):
        parse_time(text, NOW)


def test_bad_time_message_quotes_text_on_one_line() -> None:
    with pytest.raises(UsageError) as info:
        parse_time("next week", NOW)
    assert str(info.value).startswith("cannot parse time 'next week': ")
    with pytest.raises(UsageError) as info:
        parse_time("a\nb", NOW)
    assert "\n" not in str(info.value)


# --- parse_time: relative ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, delta",
    [
        ("0 seconds ago", timedelta()),
        ("1 second ago", timedelta(seconds=1)),
        ("30 s ago", timedelta(seconds=30)),
        ("30sec ago", timedelta(seconds=30)),
        ("5 minutes ago", timedelta(minutes=5)),
        ("5 min ago", timedelta(minutes=5)),
        ("1 minute ago", timedelta(minutes=1)),
        ("2 hours ago", timedelta(hours=2)),
        ("2h ago", timedelta(hours=2)),
        ("1 hour ago", timedelta(hours=1)),
        ("2 days ago", timedelta(days=2)),
        ("2d ago", timedelta(days=2)),
        ("1 day ago", timedelta(days=1)),
        ("3 weeks ago", timedelta(weeks=3)),
        ("3 w ago", timedelta(weeks=3)),
        ("1 week ago", timedelta(weeks=1)),
        ("2 months ago", timedelta(days=61)),
        ("1 month ago", timedelta(days=31)),
        ("1 year ago", timedelta(days=365)),
        ("2 years ago", timedelta(days=730)),
        ("  2  Days   AGO ", timedelta(days=2)),
    ],
)
def test_relative(text: str, delta: timedelta) -> None:
    result = parse_time(text, NOW)
    assert result == NOW - delta
    assert result.tzinfo is UTC


def test_relative_with_non_utc_clock() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    result = parse_time("1 hour ago", now)
    assert result == utc(2026, 11, 20, 9)
    assert result.tzinfo is UTC


def test_now_today_yesterday() -> None:
    assert parse_time("now", NOW) == NOW
    assert parse_time("NOW", NOW).tzinfo is UTC
    local_date = NOW.astimezone().date()
    assert parse_time("today", NOW) == datetime(local_date.year, local_date.month, local_date.day).astimezone(UTC)
    yesterday = local_date - timedelta(days=1)
    assert parse_time("yesterday", NOW) == datetime(yesterday.year, yesterday.month, yesterday.day).astimezone(UTC)


def test_today_across_dst_change(new_york: None) -> None:
    # 2026-11-01 is the fall-back day in New York: midnight is EDT, the day before is also EDT,
    # and the day after is EST.
    now = utc(2026, 11, 2, 15)  # 10:00 EST on Nov 2
    assert parse_time("today", now) == utc(2026, 11, 2, 5)
    assert parse_time("yesterday", now) == utc(2026, 11, 1, 4)
    # Late evening local time is already the next day in UTC: "today" follows the local calendar.
    late = utc(2026, 11, 3, 3)  # 22:00 EST on Nov 2
    assert parse_time("today", late) == utc(2026, 11, 2, 5)


# --- format_time and the round trip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dt, text",
    [
        (utc(2026, 11, 20, 10), "2026-11-20T10:00:00.000000Z"),
        (utc(2026, 11, 20, 10, 0, 0, 5), "2026-11-20T10:00:00.000005Z"),
        (datetime(2026, 11, 20, 12, tzinfo=timezone(timedelta(hours=2))), "2026-11-20T10:00:00.000000Z"),
        (utc(999, 1, 2, 3, 4, 5, 6), "0999-01-02T03:04:05.000006Z"),
    ],
)
def test_format_time(dt: datetime, text: str) -> None:
    assert format_time(dt) == text


def test_format_time_rejects_naive() -> None:
    with pytest.raises(ValueError):
        format_time(datetime(2026, 11, 20))


OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@settings(max_examples=300, deadline=None)
@given(
    t=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS),
)
def test_format_parse_round_trip(t: datetime) -> None:
    text = format_time(t)
    parsed = parse_time(text, NOW)
    assert parsed == t
    assert parsed.tzinfo is UTC
    assert format_time(parsed) == text
    assert len(text) == 27 and text.endswith("Z")


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=0, max_value=10_000), unit=st.sampled_from(["second", "minute", "hour", "day", "week"]))
def test_relative_plural_and_singular_agree(n: int, unit: str) -> None:
    seconds = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}[unit]
    expected = NOW - timedelta(seconds=n * seconds)
    assert parse_time(f"{n} {unit} ago", NOW) == expected
    assert parse_time(f"{n} {unit}s ago", NOW) == expected


# --- durations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30d", Duration(days=30)),
        ("2w", Duration(days=14)),
        ("1y6m", Duration(years=1, months=6)),
        ("12h", Duration(hours=12)),
        ("1y2m3w4d5h", Duration(1, 2, 25, 5)),
        ("5h1y", Duration(years=1, hours=5)),
        ("1d1d", Duration(days=2)),
        (" 1y 6m ", Duration(years=1, months=6)),
        ("0d", Duration()),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "1.5d", "-1d", "30D", "1y6", "30s", "y1", "1 year"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(UsageError, match=r"^cannot parse duration .*: use e\.g\. 30d"):
        parse_duration(text)


def test_duration_str() -> None:
    assert str(Duration(1, 6, 3, 4)) == "1y6m3d4h"
    assert str(Duration(days=14)) == "14d"
    assert str(Duration()) == "0h"
    assert parse_duration(str(Duration(2, 0, 9, 1))) == Duration(2, 0, 9, 1)


def test_duration_approx_timedelta() -> None:
    assert parse_duration("1y1m1d1h").approx_timedelta() == timedelta(days=365 + 30 + 1, hours=1)


@pytest.mark.parametrize(
    "start, duration, expected",
    [
        (utc(2026, 11, 20, 10), "1m", utc(2026, 10, 20, 10)),
        (utc(2026, 3, 31, 10), "1m", utc(2026, 2, 28, 10)),  # clamp to month end
        (utc(2028, 3, 31, 10), "1m", utc(2028, 2, 29, 10)),  # leap year
        (utc(2028, 2, 29), "1y", utc(2027, 2, 28)),
        (utc(2026, 1, 15), "1m", utc(2025, 12, 15)),
        (utc(2026, 1, 15), "13m", utc(2024, 12, 15)),
        (utc(2026, 5, 31), "1y3m", utc(2025, 2, 28)),
        (utc(2026, 3, 1, 5), "1d6h", utc(2026, 2, 27, 23)),
        (utc(2026, 3, 31), "1m1d", utc(2026, 2, 27)),  # months first, then days
        (utc(2026, 11, 20), "2w", utc(2026, 11, 6)),
        (utc(2026, 11, 20), "0d", utc(2026, 11, 20)),
    ],
)
def test_subtract_from(start: datetime, duration: str, expected: datetime) -> None:
    assert parse_duration(duration).subtract_from(start) == expected


def test_subtract_from_keeps_tzinfo_and_clamps_at_year_one() -> None:
    tz = timezone(timedelta(hours=2))
    assert parse_duration("1m").subtract_from(datetime(2026, 3, 31, tzinfo=tz)).tzinfo is tz
    assert parse_duration("3000y").subtract_from(NOW) == datetime.min.replace(tzinfo=UTC)
    assert parse_duration("2025y10m19d").subtract_from(NOW) == datetime(1, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_duration("2025y10m20d").subtract_from(NOW) == datetime.min.replace(tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(
    t=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)),
    years=st.integers(0, 100),
    months=st.integers(0, 100),
    days=st.integers(0, 1000),
    hours=st.integers(0, 1000),
)
def test_subtract_from_properties(t: datetime, years: int, months: int, days: int, hours: int) -> None:
    d = Duration(years, months, days, hours)
    result = d.subtract_from(t)
    assert result <= t
    # calendar months move back exactly; the day only ever clamps down; days and hours are fixed lengths
    calendar_only = Duration(years, months).subtract_from(t)
    assert calendar_only.day <= t.day
    assert (calendar_only.year * 12 + calendar_only.month) == (t.year * 12 + t.month) - (years * 12 + months)
    assert result == calendar_only - timedelta(days=days, hours=hours)


# --- lock wait -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1.5m", 90.0),
        (" 5M ", 300.0),
        ("0s", 0.0),
        ("1d", 86400.0),
        ("1d2h", 93600.0),
    ],
)
def test_parse_wait(text: str, seconds: float) -> None:
    assert parse_wait(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "5 m", "5w", "m", "1h-30m", "inf", "nan", "1e3", "9" * 400, "5x"])
def test_bad_wait(text: str) -> None:
    with pytest.raises(UsageError, match=r"^cannot parse wait time .*: use seconds \(30\)"):
        parse_wait(text)


def test_months_and_years_ago_are_on_the_calendar() -> None:
    now = datetime(2026, 11, 27, 13, 2, tzinfo=timezone.utc)
    assert parse_time("1 month ago", now) == datetime(2026, 10, 27, 13, 2, tzinfo=timezone.utc)
    assert parse_time("9 months ago", now) == datetime(2026, 2, 27, 13, 2, tzinfo=timezone.utc)
    assert parse_time("4 years ago", now) == datetime(2022, 11, 27, 13, 2, tzinfo=timezone.utc)
    end_of_march = datetime(2026, 3, 31, tzinfo=timezone.utc)
    assert parse_time("1 month ago", end_of_march) == datetime(2026, 2, 28, tzinfo=timezone.utc)


def test_whole_second_or_minute_stands_for_all_of_it_with_whole() -> None:
    base = datetime(2026, 11, 27, 12, 55, 3, tzinfo=timezone.utc)
    assert parse_time("2026-11-27T12:55:03Z", NOW, whole=True) == base.replace(microsecond=999999)
    assert parse_time("2026-11-27T12:55:03Z", NOW) == base
    assert parse_time("2026-11-27T12:55Z", NOW, whole=True) == base.replace(second=59, microsecond=999999)
    assert parse_time("2026-11-27T12:55:03.5Z", NOW, whole=True) == base.replace(microsecond=500000)
    assert parse_time("2026-11-27", NOW, whole=True) == parse_time("2026-11-27", NOW), "a date stays midnight"


@pytest.mark.parametrize("zone,day,jump_utc", [("America/New_York", (2026, 3, 8), (7, 0)),
                                               ("Europe/Berlin", (2026, 3, 29), (1, 0))])
def test_a_local_time_in_the_spring_forward_gap_is_the_instant_of_the_jump(monkeypatch, zone, day, jump_utc) -> None:
    import time as time_mod

    monkeypatch.setenv("TZ", zone)
    time_mod.tzset()
    try:
        y, m, d = day
        jump = datetime(y, m, d, *jump_utc, tzinfo=timezone.utc)
        at = {t: parse_time(f"{y}-{m:02d}-{d:02d} {t}", NOW) for t in ("01:59", "02:00", "02:30", "03:00", "03:01")}
        assert at["02:00"] == at["02:30"] == at["03:00"] == jump
        assert at["01:59"] < jump < at["03:01"], "times keep their order"
    finally:
        monkeypatch.undo()
        time_mod.tzset()


@pytest.mark.parametrize(("text", "expected", "whole"), [
    ("20261120T100000Z", datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 20, 10, 0, 0, 999999, tzinfo=UTC)),
    ("20261120T1000+0200", datetime(2026, 11, 20, 8, tzinfo=UTC), datetime(2026, 11, 20, 8, 0, 59, 999999, tzinfo=UTC)),
    ("2026-11-20T10Z", datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ("20261120T10z", datetime(2026, 11, 20, 10, tzinfo=UTC), datetime(2026, 11, 20, 10, tzinfo=UTC)),
])
def test_iso_basic_form_and_hour_only_are_iso_too(text: str, expected: datetime, whole: datetime) -> None:
    """ISO-8601 also has the basic form and a time to the hour; with --at an hour is its first instant (a
    snapshot taken at 09:45 is not "as it was at 9")."""
    assert parse_time(text, NOW) == expected
    assert parse_time(text, NOW, whole=True) == whole


def test_a_time_copied_from_the_text_output_selects_that_snapshot_even_in_the_repeated_hour(new_york) -> None:
    """Text output shows local time; in the hour repeated when summer time ends each wall time occurs twice
    and --at reads the first, so the second one is shown with its offset: copying any shown time back gives
    that very second."""
    from vault.cli.common import local_time

    start = utc(2026, 11, 1, 4, 0, 0)
    shown = []
    for minutes in range(0, 4 * 60, 7):
        t = start + timedelta(minutes=minutes, seconds=13, microseconds=456789)
        text = local_time(t)
        shown.append(text)
        back = parse_time(text, NOW, whole=True)
        assert t.replace(microsecond=0) <= back < t.replace(microsecond=0) + timedelta(seconds=1), (t, text, back)
    assert sum(text.endswith("-05:00") for text in shown) >= 5  # the second 01:xx (EST) carry the offset
    assert not any(text.endswith("-04:00") for text in shown)


def test_months_and_years_ago_are_on_the_local_calendar(local_tz) -> None:
    """Worked out on the UTC calendar, "1 month ago" just after midnight on 1 March in Berlin was 29 January,
    and in New York in November an hour off (EDT a month before, EST now)."""
    local_tz("Europe/Berlin")
    berlin = lambda s: datetime.fromisoformat(s)  # noqa: E731
    assert parse_time("1 month ago", berlin("2026-03-01T00:30:00+01:00")) == berlin("2026-02-01T00:30:00+01:00")
    assert parse_time("1 year ago", berlin("2029-03-01T00:30:00+01:00")) == berlin("2028-03-01T00:30:00+01:00")
    assert parse_time("1 month ago", berlin("2026-05-01T01:00:00+02:00")) == berlin("2026-04-01T01:00:00+02:00")
    local_tz("EST5EDT,M3.2.0,M11.1.0")
    assert parse_time("1 month ago", datetime.fromisoformat("2026-11-28T18:22:59-05:00")) == \
        datetime.fromisoformat("2026-10-28T18:22:59-04:00")


def test_today_on_a_day_whose_midnight_never_showed_is_the_jump(local_tz) -> None:
    """Summer time starting at 00:00 (Santiago, Havana): local midnight of that day does not exist; `today`
    was 23:00 of the day before, where a date alone is (as documented) the instant of the jump."""
    local_tz("XST4XDT,M9.1.0/0,M4.1.0/0")  # (2026-09-06, a Sunday: 00:00 -04 jumps to 01:00 -03)
    jump = datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert parse_time("2026-09-06", NOW) == jump
    assert parse_time("today", datetime.fromisoformat("2026-09-06T12:00:00-03:00")) == jump
    assert parse_time("yesterday", datetime.fromisoformat("2026-09-07T12:00:00-03:00")) == jump


def test_a_year_one_time_west_of_utc_is_shown_so_that_at_reads_it_back(local_tz) -> None:
    """Year 1 in New York is shown in local mean time (-4:56), which --at could not read back (before year 1
    in UTC): "cannot parse time", exit 2, where the docs promise a copied time selects its snapshot."""
    from vault.cli.common import local_time

    local_tz("America/New_York")
    t = datetime(1, 1, 2, tzinfo=UTC)
    shown = local_time(t)
    assert shown == "0001-01-02 00:00:00Z" and parse_time(shown, NOW, whole=True) == t.replace(microsecond=999999)


# --- parse_time: a day and/or a time of day ("give me /etc as it was last Tuesday at 10:00") -----------------

THURSDAY = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # (a Thursday)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("last tuesday 10:00", utc(2026, 11, 24, 10)),
        ("Last Tuesday at 10:00", utc(2026, 11, 24, 10)),
        ("10:00 last tue", utc(2026, 11, 24, 10)),
        ("at 10:00 last tuesday", utc(2026, 11, 24, 10)),
        ("tuesday", utc(2026, 11, 24)),
        ("thursday", utc(2026, 11, 26)),  # the latest Thursday up to today: today
        ("last thursday", utc(2026, 11, 19)),  # before today: a week ago
        ("last thurs 23:59:59", utc(2026, 11, 19, 23, 59, 59)),
        ("friday 9am", utc(2026, 11, 20, 9)),
        ("sun 12am", utc(2026, 11, 22)),
        ("mon 12pm", utc(2026, 11, 23, 12)),
        ("yesterday 3:30 p.m.", utc(2026, 11, 25, 15, 30)),
        ("yesterday at 18:00", utc(2026, 11, 25, 18)),
        ("18:00 yesterday", utc(2026, 11, 25, 18)),
        ("today 08:15", utc(2026, 11, 26, 8, 15)),
        ("14:30", utc(2026, 11, 26, 14, 30)),  # a time alone is today's
        ("at 7:05:09.5", utc(2026, 11, 26, 7, 5, 9, 500000)),
        ("noon", utc(2026, 11, 26, 12)),
        ("yesterday midnight", utc(2026, 11, 25)),
        ("  Yesterday   10:00 ", utc(2026, 11, 25, 10)),
    ],
)
def test_day_and_time_of_day(text: str, expected: datetime) -> None:
    assert parse_time(text, THURSDAY) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("last tuesday 10:00", utc(2026, 11, 24, 10, 0, 59, 999999)),  # to the minute: all of that minute
        ("10:00:30", utc(2026, 11, 26, 10, 0, 30, 999999)),
        ("10:00:30.25", utc(2026, 11, 26, 10, 0, 30, 250000)),  # a fraction given: exactly that
        ("10am", utc(2026, 11, 26, 10)),  # an hour alone: its first instant, as 2026-11-26T10Z
        ("noon", utc(2026, 11, 26, 12)),
        ("last tuesday", utc(2026, 11, 24)),  # a day alone: its midnight, as a date alone
    ],
)
def test_day_and_time_of_day_for_at(text: str, expected: datetime) -> None:
    assert parse_time(text, THURSDAY, whole=True) == expected


@pytest.mark.parametrize("text", ["10", "last", "last today", "next tuesday", "tuesday tuesday", "13pm", "0am",
                                  "25:00", "10:61", "10:00 10:00", "yesterday 10", "at", "tuesday at", "10:0",
                                  "１０:00", "lastt tuesday", "tuesday last 10:00", "", "  "])
def test_bad_day_and_time_of_day(text: str) -> None:
    with pytest.raises(UsageError, match=r"^cannot parse time .*'last tuesday 10:00'$"):
        parse_time(text, THURSDAY)


def test_day_and_time_of_day_are_local(new_york: None) -> None:
    """The day is the local calendar's (late evening in New York is already the next day in UTC) and the time
    of day local time, across a DST change (1 November 2026: EDT -> EST)."""
    now = datetime.fromisoformat("2026-11-03T22:30:00-05:00")  # Tuesday evening; 03:30Z on Wednesday
    assert parse_time("yesterday 10:00", now) == utc(2026, 11, 2, 15)
    assert parse_time("last sunday 10:00", now) == utc(2026, 11, 1, 15)  # EST that day
    assert parse_time("last saturday 10:00", now) == utc(2026, 10, 31, 14)  # EDT that day
    assert parse_time("tuesday", now) == utc(2026, 11, 3, 5)
    assert parse_time("21:00", now) == utc(2026, 11, 4, 2)
    assert parse_time("1:30 sunday", now) == utc(2026, 11, 1, 5, 30)  # the repeated hour: its first instant (EDT)
    assert parse_time("2:30 sunday", now) == utc(2026, 11, 1, 7, 30)
