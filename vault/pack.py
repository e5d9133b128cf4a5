"""Pack files: many encrypted blocks followed by an encrypted header that lists them. Pure: no I/O.

Layout (see docs/format.md)::

    block_0 || block_1 || ... || block_n-1 || sealed_header || u32le(len(sealed_header))

Each block is ``flag (1) || nonce (12) || AES-256-GCM(payload) || tag (16)`` with associated data
``block id || flag``; flag 0 = payload stored raw, 1 = zstd frame. The header plaintext is ``b"VPH1"``, ``u32le count``,
then ``count`` entries of 41 bytes: ``kind (1) || block id (32) || stored length (u32le) ||
raw length (u32le)``; a block's offset is the sum of the stored lengths before it. A pack's name is the
SHA-256 of its bytes, so anyone can check a pack's integrity without the key.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from dataclasses import dataclass

from .crypto import NONCE_LEN, OVERHEAD, Cipher
from .errors import IntegrityError

DATA, TREE = "D", "T"
KINDS = (DATA, TREE)
_KIND_NAMES = {k.encode(): k for k in KINDS}
HEADER_MAGIC = b"VPH1"
_ENTRY = struct.Struct("<c32sII")
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"vault pack header"
MAX_HEADER = 64 * 1024 * 1024
BLOCK_OVERHEAD = 1 + OVERHEAD  # flag + nonce + tag


@dataclass(frozen=True, slots=True)
class PackEntry:
    kind: str
    block_id: bytes
    offset: int
    length: int  # stored (encrypted) length
    raw_length: int  # plaintext length of the chunk/tree


def pack_id(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def pack_name(pid: bytes) -> str:
    """The store's name of pack ``pid`` (``data/`` and its first two hex digits: no directory too big)."""
    h = pid.hex()
    return f"data/{h[:2]}/{h}"


def encode_header(entries: list[PackEntry], cipher: Cipher) -> bytes:
    parts = [HEADER_MAGIC, struct.pack("<I", len(entries))]
    parts += [_ENTRY.pack(e.kind.encode(), e.block_id, e.length, e.raw_length) for e in entries]
    sealed = cipher.seal(b"".join(parts), HEADER_AAD)
    return sealed + _TRAILER.pack(len(sealed))


def header_size(n_entries: int) -> int:
    """Bytes the sealed header (with its trailer) of a pack of ``n_entries`` blocks takes."""
    return len(HEADER_MAGIC) + 4 + n_entries * _ENTRY.size + OVERHEAD + _TRAILER.size


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
    return [PackEntry(*row) for row in header_rows(sealed, pack_size, cipher)]


def header_rows(sealed: bytes, pack_size: int, cipher: Cipher) -> list[tuple[str, bytes, int, int, int]]:
    """``decode_header`` as plain (kind, block id, offset, length, raw length) tuples (verify compares every
    block with its header entry: building a frozen dataclass for each cost more than the comparison)."""
    plain = cipher.open(sealed, HEADER_AAD, "pack header")
    if plain[:4] != HEADER_MAGIC or len(plain) < 8:
        raise IntegrityError("pack header: bad magic")
    (count,) = struct.unpack_from("<I", plain, 4)
    if len(plain) != 8 + count * _ENTRY.size:
        raise IntegrityError("pack header: entry count does not match its length")
    body_end = pack_size - len(sealed) - _TRAILER.size
    entries, offset = [], 0
    for kind, bid, length, raw in _ENTRY.iter_unpack(memoryview(plain)[8:]):
        k = _KIND_NAMES.get(kind)
        if k is None or length < BLOCK_OVERHEAD:
            raise IntegrityError("pack header: malformed entry")
        entries.append((k, bid, offset, length, raw))
        offset += length
    if offset != body_end:
        raise IntegrityError(f"pack header lists {offset} bytes of blocks, pack holds {body_end}")
    return entries


def sealed_header(data: bytes | memoryview) -> bytes | memoryview:
    """The sealed header of a whole pack held in memory (its length validated)."""
    n = header_length(data[-_TRAILER.size:], len(data))
    return data[len(data) - _TRAILER.size - n : len(data) - _TRAILER.size]


def parse_pack(data: bytes, cipher: Cipher) -> list[PackEntry]:
    """Header entries of a whole pack held in memory."""
    return decode_header(sealed_header(data), len(data), cipher)


def sealed_size(payload_len: int) -> int:
    return BLOCK_OVERHEAD + payload_len


_nonces = threading.local()


def _forget_nonces() -> None:
    """In a forked child: drop the pools inherited from the parent, which the parent goes on drawing from (the
    same nonce twice under one key would break AES-GCM)."""
    global _nonces
    _nonces = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_nonces)


def _nonce() -> bytes:
    """A fresh random 96-bit nonce; drawn from the OS CSPRNG 4096 at a time (one syscall, not one a block)."""
    pool = getattr(_nonces, "pool", None)
    if not pool:
        raw = os.urandom(NONCE_LEN * 4096)
        pool = _nonces.pool = [raw[i : i + NONCE_LEN] for i in range(0, len(raw), NONCE_LEN)]
    return pool.pop()


def seal_block_into(cipher: Cipher, block_id: bytes, flag: int, payload: bytes | memoryview,
                    out: memoryview) -> None:
    """Write the sealed block into ``out`` (exactly ``sealed_size(len(payload))`` bytes), no extra copy."""
    out[0] = flag
    out[1 : 1 + NONCE_LEN] = _nonce()
    cipher.encrypt_into(out[1 : 1 + NONCE_LEN], payload, block_id + bytes((flag,)), out[1 + NONCE_LEN :])


def seal_block(cipher: Cipher, block_id: bytes, flag: int, payload: bytes | memoryview) -> bytes:
    out = bytearray(sealed_size(len(payload)))
    seal_block_into(cipher, block_id, flag, payload, memoryview(out))
    return bytes(out)


def open_block_into(cipher: Cipher, block_id: bytes, blob: bytes | memoryview, out: bytearray) -> tuple[int, memoryview]:
    """``open_block`` decrypting into the reusable ``out``; the payload view is valid until ``out`` is reused."""
    if len(blob) < BLOCK_OVERHEAD:
        raise IntegrityError(f"block {block_id.hex()[:16]}: too short")
    mv = memoryview(blob)
    flag = mv[0]
    try:
        return flag, cipher.open_into(mv[1:], block_id + bytes((flag,)), out)
    except IntegrityError as exc:  # (the block's name formatted only when it is needed: this runs per block)
        raise IntegrityError(f"block {block_id.hex()[:16]}: {exc.args[0].partition(': ')[2]}") from None


def open_block(cipher: Cipher, block_id: bytes, blob: bytes | memoryview) -> tuple[int, bytes]:
    """(flag, payload) of a sealed block; IntegrityError when it does not authenticate."""
    if len(blob) < BLOCK_OVERHEAD:
        raise IntegrityError(f"block {block_id.hex()[:16]}: too short")
    mv = memoryview(blob)
    flag = mv[0]
    return flag, cipher.open(mv[1:], block_id + bytes((flag,)), f"block {block_id.hex()[:16]}")
