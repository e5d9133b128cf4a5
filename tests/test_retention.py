"""Retention policies (vault.retention) against an independent, deliberately plain reference."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from vault import retention
from vault.model import Snapshot
from vault.errors import UsageError
from vault.retention import Duration, Policy, parse_duration

UTC = timezone.utc


def snap(i: int, t: datetime, tags=()) -> Snapshot:
    return Snapshot(time=t, host="h", paths=["/p"], tree=bytes(32), tags=list(tags), id=f"{i:064x}")


# --- the reference: each rule on its own, as a person would compute it by hand ---------------------------
def reference_keep(snaps: list[Snapshot], p: Policy) -> set[str]:
    newest_first = sorted(snaps, key=lambda s: (s.time, s.id), reverse=True)
    keep = {newest_first[0].id}
    keep |= {s.id for s in newest_first[: p.last]}
    periods = {
        "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
        "daily": lambda t: t.strftime("%Y-%m-%d"),
        "weekly": lambda t: "%d-W%02d" % t.isocalendar()[:2],
        "monthly": lambda t: t.strftime("%Y-%m"),
        "yearly": lambda t: t.strftime("%Y"),
    }
    for rule, period in periods.items():
        n = getattr(p, rule)
        seen: list[str] = []
        for s in newest_first:  # newest in each period, for the n most recent periods that have one
            key = period(s.time)
            if key not in seen and len(seen) < n:
                seen.append(key)
                keep.add(s.id)
    if p.within is not None:
        w = p.within
        cutoff = newest_first[0].time - relativedelta(years=w.years, months=w.months) - timedelta(days=w.days,
                                                                                                  hours=w.hours)
        keep |= {s.id for s in snaps if s.time > cutoff}
    for spec in p.tags:
        want = set(spec.split(","))
        keep |= {s.id for s in snaps if want <= set(s.tags)}
    return keep


times = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2026, 12, 31),
                     timezones=st.just(UTC))
small = st.integers(min_value=0, max_value=6)
durations = st.none() | st.builds(Duration, years=st.integers(0, 2), months=st.integers(0, 14),
                                  days=st.integers(0, 40), hours=st.integers(0, 50))
policies = st.builds(Policy, last=small, hourly=small, daily=small, weekly=small, monthly=small, yearly=small,
                     within=durations, tags=st.lists(st.sampled_from(["a", "b", "a,b"]), max_size=2).map(tuple))


@settings(max_examples=400, deadline=None)
@given(data=st.lists(st.tuples(times, st.sets(st.sampled_from(["a", "b", "c"]))), min_size=1, max_size=40),
       policy=policies)
def test_policy_matches_reference(data, policy):
    snaps = [snap(i, t, sorted(tags)) for i, (t, tags) in enumerate(data)]
    decisions = retention.decide(snaps, policy, tz=UTC, now=datetime(2027, 1, 1, tzinfo=UTC))
    kept = {d.snapshot.id for d in decisions if d.keep}
    assert kept == reference_keep(snaps, policy)
    # the newest is always kept; a decision has reasons exactly when it keeps; every snapshot is decided once
    newest = max(snaps, key=lambda s: (s.time, s.id))
    assert newest.id in kept
    assert all(bool(d.reasons) == d.keep for d in decisions)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snaps)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(times, min_size=1, max_size=30, unique=True), n=st.integers(1, 10))
def test_keep_last_and_daily_counts(data, n):
    snaps = [snap(i, t) for i, t in enumerate(data)]
    kept = [d for d in retention.decide(snaps, Policy(last=n), tz=UTC) if d.keep]
    assert len(kept) == min(n, len(snaps))
    days = {s.time.date() for s in snaps}
    kept_daily = [d for d in retention.decide(snaps, Policy(daily=n), tz=UTC) if d.keep]
    assert len(kept_daily) == min(n, len(days))
    assert len({d.snapshot.time.date() for d in kept_daily}) == len(kept_daily)  # one per day


def test_reasons_name_the_rule_and_rank():
    base = datetime(2026, 11, 20, 10, tzinfo=UTC)
    snaps = [snap(i, base - timedelta(days=i)) for i in range(10)] + [snap(99, base - timedelta(days=40), ["release"])]
    d = {x.snapshot.id: x for x in retention.decide(snaps, Policy(daily=3, tags=("release",)), tz=UTC)}
    assert d[snaps[0].id].reasons == ["newest", "daily #1"]
    assert d[snaps[2].id].reasons == ["daily #3"]
    assert d[snaps[3].id].keep is False
    assert d[snaps[-1].id].reasons == ["tag: release"]


def test_keep_within_is_relative_to_the_newest_snapshot_not_the_clock():
    """A host that stopped backing up a year ago keeps its last month of history."""
    newest = datetime(2025, 3, 31, 12, tzinfo=UTC)
    snaps = [snap(i, newest - timedelta(days=i)) for i in range(60)]
    kept = [d.snapshot for d in retention.decide(snaps, Policy(within=parse_duration("1m")), tz=UTC) if d.keep]
    # one calendar month before 31 March is 28 February (clamped): 31 days of snapshots, strictly newer
    assert min(s.time for s in kept) == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert len(kept) == 31


def test_weekly_uses_iso_weeks_and_yearly_years():
    # Sunday 2026-01-04 and Monday 2025-12-29 are both ISO week 2026-W01
    snaps = [snap(0, datetime(2026, 1, 4, tzinfo=UTC)), snap(1, datetime(2025, 12, 29, tzinfo=UTC)),
             snap(2, datetime(2025, 12, 28, tzinfo=UTC))]
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(weekly=2), tz=UTC) if d.keep}
    assert kept == {snaps[0].id, snaps[2].id}
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(yearly=5), tz=UTC) if d.keep}
    assert kept == {snaps[0].id, snaps[1].id}


def test_groups_are_decided_separately():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    a = [Snapshot(time=t + timedelta(hours=i), host="a", paths=["/x"], tree=bytes(32), id=f"a{i:063x}")
         for i in range(5)]
    b = [Snapshot(time=t + timedelta(hours=i), host="b", paths=["/x"], tree=bytes(32), id=f"b{i:063x}")
         for i in range(3)]
    groups = retention.plan(a + b, Policy(last=2), ("host", "paths"), tz=UTC)
    assert [(g.key["host"], len(g.keep), len(g.forget)) for g in groups] == [("a", 2, 3), ("b", 2, 1)]
    one = retention.plan(a + b, Policy(last=2), (), tz=UTC)
    assert len(one) == 1 and len(one[0].keep) == 2


@pytest.mark.parametrize("text,want", [("30d", Duration(days=30)), ("2w", Duration(days=14)),
                                       ("1y6m", Duration(years=1, months=6)), ("12h", Duration(hours=12)),
                                       ("1y2m3w4d5h", Duration(1, 2, 25, 5))])
def test_parse_duration(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize("bad", ["", "30", "d", "3x", "1.5d", "-2d", "3 days"])
def test_parse_duration_rejects(bad):
    with pytest.raises(UsageError):
        parse_duration(bad)


@pytest.fixture
def berlin(monkeypatch):
    """This process's local time zone set to Europe/Berlin (CET +01:00 in winter, CEST +02:00 in summer)."""
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_local_periods_use_each_snapshots_own_summer_time(berlin, repo, tmp_path):
    """forget took the local zone as today's fixed offset: run in winter (+01:00), a snapshot at 00:30 on 1 July
    (CEST, +02:00) fell into 30 June, so --keep-monthly kept one of two snapshots of two different months (and
    --prune deleted the other's data); run in summer, the same for 1 January. Each snapshot is now placed with
    its own date's offset, whatever the season forget runs in."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    times = ["2026-06-15T10:00:00Z", "2026-06-30T22:30:00Z",  # June / 1 July 00:30 CEST (30 June at +01:00)
             "2026-12-15T10:00:00Z", "2026-12-31T22:30:00Z"]  # December / 31 Dec 23:30 CET (1 January at +02:00)
    for t in times:
        repo("backup", src, "--time", t)
    res = repo("--json", "forget", "--keep-monthly", "4", "--dry-run").json
    # June, July, December (the newest of two): 3 -- a fixed winter offset gave 2, a fixed summer one 4
    assert sum(len(g["keep"]) for g in res["groups"]) == 3


def test_keep_within_counts_from_the_newest_snapshot_not_in_the_future():
    """A snapshot dated ten years ahead (a host whose clock was wrong, an import) was the reference of
    --keep-within: `30d` forgot every real snapshot. restic takes the newest snapshot not after the clock; with
    every snapshot in the future, all are within."""
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    snaps = [snap(1, datetime(2026, 11, 1, tzinfo=UTC)), snap(2, datetime(2026, 11, 20, tzinfo=UTC)),
             snap(3, datetime(2026, 11, 27, tzinfo=UTC)), snap(4, datetime(2036, 11, 27, tzinfo=UTC))]
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(within=parse_duration("30d")), tz=UTC, now=now)
            if d.keep}
    assert kept == {s.id for s in snaps}
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(within=parse_duration("10d")), tz=UTC, now=now)
            if d.keep}
    assert kept == {snaps[1].id, snaps[2].id, snaps[3].id}
    ahead = [snap(5, datetime(2030, 1, 1, tzinfo=UTC)), snap(6, datetime(2029, 1, 1, tzinfo=UTC))]
    assert all(d.keep for d in retention.decide(ahead, Policy(within=parse_duration("1d")), tz=UTC, now=now))


def test_forget_latest_with_a_host_forgets_that_hosts_latest_only(repo, tmp_path):
    """`forget latest --host h1` forgot the newest snapshot of any host (h2's): the filters were ignored for
    named snapshots. `latest` and prefixes are now taken among the snapshots the filters select, as restore
    takes them; a full id the filters leave out is refused, nothing forgotten."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo("backup", src, "--host", "h1", "--time", "2026-11-01T10:00:00Z")
    repo("backup", src, "--host", "h2", "--time", "2026-11-02T10:00:00Z")
    ids = {s["host"]: s["id"] for s in repo("--json", "snapshots").json}
    out = repo("--json", "forget", "latest", "--host", "h1").json
    assert out["removed"] == [ids["h1"]]
    assert [s["host"] for s in repo("--json", "snapshots").json] == ["h2"]
    res = repo("forget", ids["h2"][:8], "--host", "h1", ok=1)  # (restore and copy refuse it the same way)
    assert "does not match" in repo("restore", ids["h2"][:8], "--host", "h1", "--target", tmp_path / "r", ok=1).err
    assert "does not match the --host/--tag/--path given" in res.err
    assert [s["host"] for s in repo("--json", "snapshots").json] == ["h2"]


def test_times_at_the_edge_of_the_calendar_do_not_break_forget(berlin):
    """A snapshot at 9999-12-31T23:59:59Z (accepted by backup --time) made every policy fail east of UTC with
    "internal error: OverflowError", --keep-last included."""
    edge = [snap(1, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)), snap(2, datetime(1, 1, 1, tzinfo=UTC)),
            snap(3, datetime(2026, 1, 1, tzinfo=UTC))]
    for p in (Policy(last=1), Policy(daily=2), Policy(yearly=5)):
        assert retention.decide(edge, p, tz=None)[0].snapshot.id == edge[0].id


def _local(text: str) -> datetime:
    """A local wall-clock time (this process's TZ) as the aware UTC time backup records."""
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize("zone, times, within, kept", [
    # 28 Feb 20:00 EST is 1 March in UTC: one month back on the UTC calendar (1 Feb 01:00Z) dropped 30 January,
    # 29 local days older; restic counts on the local calendar and keeps it
    ("America/New_York", ["2025-01-30 12:00", "2025-02-28 20:00"], "1m", 2),
    # 28 local days before 20 Nov 12:00 CET is 23 Oct 12:00 CEST: 28 x 24 h in UTC (one hour later) dropped 12:30
    ("Europe/Berlin", ["2025-10-20 12:30", "2025-10-23 12:30", "2025-11-20 12:00"], "28d", 2),
    ("Europe/Berlin", ["2025-10-20 12:30", "2025-10-23 12:30", "2025-11-20 12:00"], "1m", 3),
    ("Europe/Berlin", ["2023-10-27 21:47", "2024-10-27 20:58"], "1y", 2),
    ("America/New_York", ["2024-10-18 05:53", "2024-12-16 05:46"], "59d", 2),
    ("Europe/Berlin", ["2025-10-23 11:59", "2025-11-20 12:00"], "28d", 1),  # (just outside: still forgotten)
    ("Europe/Berlin", ["2025-11-17 23:01", "2025-11-20 12:00"], "2d13h", 2),  # (hours: fixed lengths after the days)
])
def test_keep_within_counts_days_months_and_years_on_the_local_calendar_as_restic(local_tz, zone, times, within,
                                                                                  kept):
    local_tz(zone)
    snaps = [snap(i, _local(t)) for i, t in enumerate(times)]
    decisions = retention.decide(snaps, Policy(within=parse_duration(within)), tz=None)
    assert sum(d.keep for d in decisions) == kept, [(d.snapshot.time, d.reasons) for d in decisions]


def test_a_zero_keep_within_is_no_policy_and_an_empty_keep_tag_keeps_every_snapshot(repo, tmp_path):
    """restic: `--keep-within 0d` is no policy (vault refuses a run with none, as for --keep-last 0; it forgot
    all but the newest), `--keep-tag ''` keeps every snapshot (it kept none)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    for day in (1, 2, 3):
        repo("backup", src, "--time", f"2025-06-0{day}T12:00:00Z")
    for zero in ("0d", "0h", "0y0m"):
        repo("forget", "--keep-within", zero, "--dry-run", ok=2)
    res = repo("--json", "forget", "--keep-within", "0d", "--keep-last", "2", "--dry-run").json
    assert sum(len(g["keep"]) for g in res["groups"]) == 2
    res = repo("--json", "forget", "--keep-tag", "", "--dry-run").json
    assert sum(len(g["keep"]) for g in res["groups"]) == 3


def test_an_older_vaults_comma_tag_groups_with_the_two_tags_it_meant():
    """vault before session 15 stored `backup --tag a,b` as the one tag "a,b"; a newer one stores a and b. With
    --group-by ...,tags they made two groups, both shown as tags=a,b, and the older one's newest was kept for
    ever as 'last #1' of its own group."""
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    snaps = [snap(0, t0, tags=("a,b",)), snap(1, t0 + timedelta(days=1), tags=("a", "b")),
             snap(2, t0 + timedelta(days=2), tags=("b", "a"))]
    groups = retention.plan(snaps, Policy(last=1), ("host", "paths", "tags"), tz=timezone.utc)
    assert len(groups) == 1
    assert [d.keep for d in groups[0].decisions] == [True, False, False]
