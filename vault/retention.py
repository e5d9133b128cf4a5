"""Retention policies: which snapshots ``vault forget`` keeps, and why. Pure: no I/O, no clock.

Semantics are restic's, so its users need not relearn them:

* Snapshots are grouped (by default per host and set of paths) and each group is decided on its own.
* Within a group, snapshots are walked newest first. ``--keep-last N`` keeps the N newest. Each bucket rule
  (hourly, daily, weekly = ISO week, monthly, yearly) keeps the newest snapshot of each of the N most recent
  periods that hold a snapshot: a snapshot counts for a rule when its period differs from the period of the
  last snapshot that rule kept.
* ``--keep-within D`` keeps every snapshot newer than (newest snapshot's time - D), D's years, months and days
  taken on the local calendar (``_within_cutoff``), so a host that stopped backing up keeps its history;
  ``--keep-tag T`` keeps every snapshot carrying T (``a,b``: both; ``''``: every snapshot).
* The newest snapshot of every group is always kept. A policy with no rule at all is refused by the caller.

Periods are taken in the time zone given to ``plan`` (UTC unless told otherwise; None: this machine's local
time, with the offset in force at each snapshot's own time -- a summer snapshot judged in winter keeps its
summer day). restic's rule since 0.17 of keeping the group's oldest snapshot too when a bucket rule is not
filled is not applied (docs/usage.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

from .model import Snapshot
from .timespec import Duration, parse_duration  # noqa: F401  (parse_duration: re-exported for the CLI)

BUCKET_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")
GROUP_FIELDS = ("host", "paths", "tags")


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[str, ...] = ()  # each "a,b" = all of a and b; items are alternatives

    def is_empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within is not None or self.tags)

    def describe(self) -> str:
        parts = [f"keep-{name} {getattr(self, name)}" for name in ("last", *BUCKET_RULES) if getattr(self, name)]
        if self.within is not None:
            parts.append(f"keep-within {self.within}")
        parts += [f"keep-tag {t}" for t in self.tags]
        return ", ".join(parts) or "(none)"


@dataclass
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Group:
    key: dict  # the grouping fields and their values, e.g. {"host": "web1", "paths": ["/etc"]}
    decisions: list[Decision]  # newest first

    @property
    def keep(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def forget(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if not d.keep]


def _bucket(rule: str, t: datetime) -> tuple:
    if rule == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return (t.year, t.month, t.day)
    if rule == "weekly":
        iso = t.isocalendar()
        return (iso[0], iso[1])
    if rule == "monthly":
        return (t.year, t.month)
    return (t.year,)


def _local(t: datetime, tz: tzinfo | None) -> datetime:
    """``t`` in ``tz`` (None: local time with its own summer-time rule); at the edges of datetime's range
    (years 1 and 9999, where the shift would leave it) ``t`` as it is."""
    try:
        return t.astimezone(tz)
    except (OverflowError, OSError, ValueError):
        return t


def _has_keep_tags(snap: Snapshot, spec: str) -> bool:
    """Whether ``snap`` carries every tag of ``spec`` ("a,b"); an empty spec (``--keep-tag ''``) names no tag,
    so every snapshot has all of them: kept, as restic keeps them."""
    want = {t for t in spec.split(",") if t}
    return want <= set(snap.tags) or spec in snap.tags  # (or the one tag "a,b" an older vault stored)


def _within_cutoff(newest: datetime, span: Duration, tz: tzinfo | None) -> datetime:
    """``newest`` minus ``span`` as restic takes it: years, months and days on the wall clock of ``tz`` (None:
    this machine's local time), so a day across a summer-time change is 23 or 25 hours and a month is the
    local calendar's, then hours as fixed lengths. A month end is clamped (31 March - 1m = 28/29 February,
    where restic's Go arithmetic gives 3 March: vault keeps more). Out of datetime's range: the start of time."""
    wall = _local(newest, tz).replace(tzinfo=None)
    cal = Duration(span.years, span.months, span.days).subtract_from(wall)
    try:
        back = cal.astimezone(timezone.utc) if tz is None else cal.replace(tzinfo=tz)  # (naive = local time)
        return back - timedelta(hours=span.hours)
    except (OverflowError, OSError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)


def decide(snaps: list[Snapshot], policy: Policy, tz: tzinfo | None = timezone.utc,
           now: datetime | None = None) -> list[Decision]:
    """Keep/forget with reasons for one group of snapshots; returned newest first. ``now`` (default: the clock)
    bounds the snapshot ``--keep-within`` counts back from: the newest one not in the future."""
    # at equal times a replacement written by 'vault repair' ranks above the original it replaces
    ordered = sorted(snaps, key=lambda s: (s.time, s.repaired_from is not None, s.id), reverse=True)
    if not ordered:
        return []
    counts = {"last": policy.last, **{r: getattr(policy, r) for r in BUCKET_RULES}}
    used = dict.fromkeys(counts, 0)
    last_bucket: dict[str, tuple | None] = dict.fromkeys(counts)
    cutoff = None
    if policy.within is not None:
        # a snapshot dated in the future (a host whose clock was wrong, an import) is not the reference: counted
        # from it, 30d forgot every real snapshot. With none in the past, all are within (as restic)
        now = now or datetime.now(timezone.utc)
        ref = next((s.time for s in ordered if s.time <= now), None)
        cutoff = _within_cutoff(ref, policy.within, tz) if ref is not None else datetime.min.replace(tzinfo=timezone.utc)
    out = []
    for i, snap in enumerate(ordered):
        local = _local(snap.time, tz)
        reasons = []
        if i == 0:
            reasons.append("newest")
        for rule, limit in counts.items():
            if used[rule] >= limit:
                continue
            bucket = (i,) if rule == "last" else _bucket(rule, local)
            if bucket != last_bucket[rule]:
                last_bucket[rule] = bucket
                used[rule] += 1
                reasons.append(f"{rule} #{used[rule]}")
        if cutoff is not None and snap.time > cutoff:
            reasons.append(f"within {policy.within}")
        for spec in policy.tags:
            if _has_keep_tags(snap, spec):
                reasons.append(f"tag: {spec}")
        out.append(Decision(snap, bool(reasons), reasons))
    return out


def group_key(snap: Snapshot, group_by: tuple[str, ...]) -> tuple:
    parts = []
    for f in group_by:
        if f == "host":
            parts.append(snap.host)
        elif f == "paths":
            parts.append(tuple(sorted(snap.paths)))
        elif f == "tags":  # (the one tag "a,b" an older vault stored for --tag a,b is the tags a and b)
            parts.append(tuple(sorted({p for t in snap.tags for p in t.split(",") if p})))
    return tuple(parts)


def parse_group_by(text: str) -> tuple[str, ...]:
    """``host,paths`` (default), any subset of host/paths/tags, or empty for one group."""
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"invalid --group-by field {bad[0]!r} (use host, paths, tags)")
    return fields


def plan(snaps: list[Snapshot], policy: Policy, group_by: tuple[str, ...] = ("host", "paths"),
         tz: tzinfo | None = timezone.utc, now: datetime | None = None) -> list[Group]:
    """Decide every snapshot, group by group (groups ordered by key)."""
    groups: dict[tuple, list[Snapshot]] = {}
    for s in snaps:
        groups.setdefault(group_key(s, group_by), []).append(s)
    out = []
    for key in sorted(groups):
        members = groups[key]
        desc = {}
        for f, v in zip(group_by, key):
            desc[f] = list(v) if isinstance(v, tuple) else v
        out.append(Group(desc, decide(members, policy, tz, now)))
    return out
