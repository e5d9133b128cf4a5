"""Index segments: block id -> (pack, offset, length, raw length, kind). Pure: no I/O.

A segment's plaintext is ``b"VIX1"``, ``u32le n_superseded``, that many 32-byte segment ids (segments this
one replaces, used by prune), ``u32le n_packs``, then per pack: ``pack id (32) || kind (1) ||
u32le count || u64le pack size`` and ``count`` entries of ``block id (32) || offset || length || raw length`` (u32le each).
Stored zstd-compressed and sealed (AES-GCM, aad ``b"vault index"``); the object name is the SHA-256 of the
stored bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from .compress import bounded_decompress
from .crypto import Cipher
from .errors import IntegrityError
from .pack import KINDS, PackEntry

MAGIC = b"VIX1"
AAD = b"vault index"
_PACK = struct.Struct("<32scIQ")
MAX_PACK_SIZE = 1 << 40  # far above any pack vault writes (pack_size <= 1 GiB), far below 2**63
_ENTRY = struct.Struct("<32sIII")
MAX_SEGMENT_PLAIN = 512 * 1024 * 1024


@dataclass
class IndexSegment:
    packs: dict[bytes, list[PackEntry]] = field(default_factory=dict)
    sizes: dict[bytes, int] = field(default_factory=dict)  # pack id -> pack size in bytes
    supersedes: list[bytes] = field(default_factory=list)

    def entries(self) -> Iterator[tuple[bytes, PackEntry]]:
        for pid, entries in self.packs.items():
            for e in entries:
                yield pid, e

    def __len__(self) -> int:
        return sum(len(v) for v in self.packs.values())


def encode(seg: IndexSegment, cipher: Cipher) -> bytes:
    parts = [MAGIC, struct.pack("<I", len(seg.supersedes)), *seg.supersedes, struct.pack("<I", len(seg.packs))]
    for pid, entries in seg.packs.items():
        kinds = {e.kind for e in entries}
        if len(kinds) != 1:
            raise ValueError("a pack holds blocks of one kind")
        parts.append(_PACK.pack(pid, kinds.pop().encode(), len(entries), seg.sizes[pid]))
        parts += [_ENTRY.pack(e.block_id, e.offset, e.length, e.raw_length) for e in entries]
    plain = b"".join(parts)
    return cipher.seal(zstandard.ZstdCompressor(level=3).compress(plain), AAD)


def segment_id(stored: bytes) -> bytes:
    return hashlib.sha256(stored).digest()


def decode(stored: bytes, cipher: Cipher) -> IndexSegment:
    plain = bounded_decompress(cipher.open(stored, AAD, "index segment"), MAX_SEGMENT_PLAIN)
    try:
        return _parse(plain)
    except struct.error:
        raise IntegrityError("index segment: truncated") from None


def _parse(plain: bytes) -> IndexSegment:
    if plain[:4] != MAGIC:
        raise IntegrityError("index segment: bad magic")
    pos = 4
    (ns,) = struct.unpack_from("<I", plain, pos)
    pos += 4
    if pos + 32 * ns > len(plain):
        raise IntegrityError("index segment: superseded list longer than the segment")
    seg = IndexSegment()
    for _ in range(ns):
        seg.supersedes.append(plain[pos : pos + 32])
        pos += 32
    (npacks,) = struct.unpack_from("<I", plain, pos)
    pos += 4
    if pos + npacks * _PACK.size > len(plain):
        raise IntegrityError("index segment: pack count longer than the segment")
    for _ in range(npacks):
        pid, kind, count, size = _PACK.unpack_from(plain, pos)
        pos += _PACK.size
        if pos + count * _ENTRY.size > len(plain):
            raise IntegrityError("index segment: entry count longer than the segment")
        k = kind.decode("latin-1")
        if k not in KINDS:
            raise IntegrityError("index segment: unknown block kind")
        if size > MAX_PACK_SIZE:  # (a pack is at most 1 GiB plus its header; SQLite stores signed 64 bits)
            raise IntegrityError(f"index segment: impossible pack size {size}")
        entries = []
        for _ in range(count):
            bid, off, length, raw = _ENTRY.unpack_from(plain, pos)
            pos += _ENTRY.size
            entries.append(PackEntry(k, bid, off, length, raw))
            if off + length > size:
                raise IntegrityError("index segment: entry lies past the end of its pack")
        seg.packs[pid] = entries
        seg.sizes[pid] = size
    if pos != len(plain):
        raise IntegrityError("index segment: trailing bytes")
    return seg


def from_packs(packs: Iterable[tuple[bytes, int, list[PackEntry]]], supersedes: Iterable[bytes] = ()) -> IndexSegment:
    """Build a segment from (pack id, pack size, entries) triples."""
    seg = IndexSegment(supersedes=list(supersedes))
    for pid, size, entries in packs:
        seg.packs[pid] = list(entries)
        seg.sizes[pid] = size
    return seg
