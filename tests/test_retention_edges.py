"""Retention edges test_retention's random reference rarely reaches: a month bucket is a (year, month), not a
month name; and at equal times 'vault repair''s replacement ranks above the original it replaces (retention.decide,
docs/usage.md "vault repair": the replacement is what verify counts as whole)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from vault import retention
from vault.model import Snapshot
from vault.retention import Policy

UTC = timezone.utc


def snap(sid: str, t: datetime, **summary) -> Snapshot:
    return Snapshot(time=t, host="h", paths=["/p"], tree=bytes(32), id=sid, summary=dict(summary))


def test_the_same_month_of_two_years_is_two_monthly_periods():
    # nothing between March 2025 and March 2024: restic keeps both with --keep-monthly 2 (periods 2025-03, 2024-03)
    snaps = [snap(f"{i:064x}", t) for i, t in enumerate([datetime(2025, 3, 15, tzinfo=UTC),
                                                         datetime(2024, 3, 15, tzinfo=UTC),
                                                         datetime(2023, 3, 15, tzinfo=UTC)])]
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(monthly=2), tz=UTC) if d.keep}
    assert kept == {snaps[0].id, snaps[1].id}
    kept = {d.snapshot.id for d in retention.decide(snaps, Policy(monthly=5), tz=UTC) if d.keep}
    assert kept == {s.id for s in snaps}


@pytest.mark.parametrize("orig_id, new_id", [("f" * 64, "0" * 64), ("0" * 64, "f" * 64)])
def test_at_equal_times_the_repaired_replacement_is_the_newest_and_keep_last_1_keeps_it(orig_id, new_id):
    t = datetime(2026, 5, 1, 12, tzinfo=UTC)
    older = snap("1" * 64, datetime(2026, 4, 30, 12, tzinfo=UTC))
    original = snap(orig_id, t)
    replacement = snap(new_id, t, repaired_from=orig_id)
    decisions = retention.decide([older, original, replacement], Policy(last=1), tz=UTC)
    assert decisions[0].snapshot.id == new_id and decisions[0].reasons == ["newest", "last #1"]
    assert {d.snapshot.id for d in decisions if d.keep} == {new_id}
    # a daily rule: one per day, and for that day the replacement
    decisions = retention.decide([older, original, replacement], Policy(daily=2), tz=UTC)
    assert {d.snapshot.id for d in decisions if d.keep} == {new_id, older.id}
