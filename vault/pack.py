"""Pack files: many encrypted blocks followed by an encrypted header that lists them. Pure: no I/O.

Layout (see docs/format.md)::

    block_0 || block_1 || ... || block_n-1 || sealed_header || u32le(len(sealed_header))

Each block is ``seal(flag || payload, aad=block_id)``. The header plaintext is ``b"VPH1"``, ``u32le count``,
then ``count`` entries of 41 bytes: ``kind (1) || block id (32) || stored length (u32le) ||
raw length (u32le)``; a block's offset is the sum of the stored lengths before it. A pack's name is the
SHA-256 of its bytes, so anyone can check a pack's integrity without the key.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .crypto import OVERHEAD, Cipher
from .errors import IntegrityError

DATA, TREE = "D", "T"
KINDS = (DATA, TREE)
HEADER_MAGIC = b"VPH1"
_ENTRY = struct.Struct("<c32sII")
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"vault pack header"
MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class PackEntry:
    kind: str
    block_id: bytes
    offset: int
    length: int  # stored (encrypted) length
    raw_length: int  # plaintext length of the chunk/tree


def pack_id(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def encode_header(entries: list[PackEntry], cipher: Cipher) -> bytes:
    parts = [HEADER_MAGIC, struct.pack("<I", len(entries))]
    parts += [_ENTRY.pack(e.kind.encode(), e.block_id, e.length, e.raw_length) for e in entries]
    sealed = cipher.seal(b"".join(parts), HEADER_AAD)
    return sealed + _TRAILER.pack(len(sealed))


def header_length(tail: bytes, pack_size: int) -> int:
    """From the last 4 bytes of a pack, the length of its sealed header (validated against the size)."""
    if pack_size < _TRAILER.size + OVERHEAD or len(tail) < _TRAILER.size:
        raise IntegrityError("pack too short")
    (n,) = _TRAILER.unpack(tail[-_TRAILER.size:])
    if n < OVERHEAD or n > min(MAX_HEADER, pack_size - _TRAILER.size):
        raise IntegrityError(f"pack header length {n} impossible for a pack of {pack_size} bytes")
    return n


def decode_header(sealed: bytes, pack_size: int, cipher: Cipher) -> list[PackEntry]:
    """Decrypt and validate a header: every entry must lie inside the pack's block area."""
    plain = cipher.open(sealed, HEADER_AAD, "pack header")
    if plain[:4] != HEADER_MAGIC or len(plain) < 8:
        raise IntegrityError("pack header: bad magic")
    (count,) = struct.unpack_from("<I", plain, 4)
    if len(plain) != 8 + count * _ENTRY.size:
        raise IntegrityError("pack header: entry count does not match its length")
    body_end = pack_size - len(sealed) - _TRAILER.size
    entries, offset = [], 0
    for i in range(count):
        kind, bid, length, raw = _ENTRY.unpack_from(plain, 8 + i * _ENTRY.size)
        k = kind.decode("latin-1")
        if k not in KINDS or length < OVERHEAD + 1:
            raise IntegrityError("pack header: malformed entry")
        entries.append(PackEntry(k, bid, offset, length, raw))
        offset += length
    if offset != body_end:
        raise IntegrityError(f"pack header lists {offset} bytes of blocks, pack holds {body_end}")
    return entries


def parse_pack(data: bytes, cipher: Cipher) -> list[PackEntry]:
    """Header entries of a whole pack held in memory."""
    n = header_length(data[-_TRAILER.size:], len(data))
    return decode_header(data[len(data) - _TRAILER.size - n : len(data) - _TRAILER.size], len(data), cipher)


def seal_block(cipher: Cipher, block_id: bytes, payload: bytes) -> bytes:
    return cipher.seal(payload, block_id)


def open_block(cipher: Cipher, block_id: bytes, blob: bytes | memoryview) -> bytes:
    return cipher.open(blob, block_id, f"block {block_id.hex()[:16]}")
