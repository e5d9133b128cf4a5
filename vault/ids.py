"""Ids: their length (32 bytes, 64 hex digits) and unique-prefix lookup."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SnapshotNotFound

ID_LEN = 32


def resolve_prefix(prefix: str, candidates: Iterable[str], what: str = "snapshot") -> str:
    """Return the one candidate starting with ``prefix``; SnapshotNotFound (exit 1, a message naming ``what``:
    a snapshot, a key) when none or several do."""
    p = prefix.strip().lower()
    if not p or any(c not in "0123456789abcdef" for c in p):
        raise SnapshotNotFound(f"invalid {what} id {prefix!r}")
    matches = [c for c in candidates if c.startswith(p)]
    if not matches:
        raise SnapshotNotFound(f"no {what} with id {prefix!r}")
    if len(matches) > 1:
        raise SnapshotNotFound(f"{what} id prefix {prefix!r} is ambiguous ({len(matches)} matches)")
    return matches[0]
