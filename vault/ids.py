"""Typed ids: 32-byte binary ids, their hex form, and unique-prefix lookup."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SnapshotNotFound

ID_LEN = 32


def to_hex(raw: bytes) -> str:
    return raw.hex()


def from_hex(text: str) -> bytes:
    """Parse a full 64-hex-digit id; raise ValueError otherwise."""
    raw = bytes.fromhex(text)
    if len(raw) != ID_LEN:
        raise ValueError(f"not a 32-byte id: {text!r}")
    return raw


def is_hex_id(text: str) -> bool:
    try:
        from_hex(text)
    except ValueError:
        return False
    return text == text.lower()


def short(hex_id: str) -> str:
    """The 8-digit short form shown to users; always a prefix of the full id."""
    return hex_id[:8]


def resolve_prefix(prefix: str, candidates: Iterable[str], what: str = "snapshot") -> str:
    """Return the one candidate starting with ``prefix``; UsageError when none or several do."""
    p = prefix.strip().lower()
    if not p or any(c not in "0123456789abcdef" for c in p):
        raise SnapshotNotFound(f"invalid {what} id {prefix!r}")
    matches = [c for c in candidates if c.startswith(p)]
    if not matches:
        raise SnapshotNotFound(f"no {what} with id {prefix!r}")
    if len(matches) > 1:
        raise SnapshotNotFound(f"{what} id prefix {prefix!r} is ambiguous ({len(matches)} matches)")
    return matches[0]
