"""The pack header and index segment parsers reject every malformed layout (docs/format.md), each with
IntegrityError -- never a struct.error, a negative read offset or a silently accepted extra. The hostile
tests craft whole repositories; these call the pure parsers directly, one rule per case, so that each bound
in pack.header_length / pack.header_rows / index._parse is pinned down by a test that fails without it."""

from __future__ import annotations

import os
import struct

import pytest
import zstandard

from vault import index as index_mod
from vault import pack as pack_mod
from vault.crypto import Cipher
from vault.errors import IntegrityError
from vault.pack import BLOCK_OVERHEAD, DATA, HEADER_AAD, PackEntry

CIPHER = Cipher(os.urandom(32))
BID = b"\x11" * 32


def _entry(kind: bytes, length: int, raw: int = 10, bid: bytes = BID) -> bytes:
    return struct.pack("<c32sII", kind, bid, length, raw)


def _header(plain: bytes) -> bytes:
    return CIPHER.seal(plain, HEADER_AAD)


# --- pack header ------------------------------------------------------------------------------------------
def test_a_well_formed_header_parses():
    body = 100
    sealed = _header(b"VPH1" + struct.pack("<I", 2) + _entry(b"D", 60) + _entry(b"D", 40))
    rows = pack_mod.header_rows(sealed, body + len(sealed) + 4, CIPHER)
    assert [(r[2], r[3]) for r in rows] == [(0, 60), (60, 40)]


@pytest.mark.parametrize("delta", [-3, -2, -1, 0], ids=lambda d: f"size{d:+d}")
def test_a_trailer_claiming_more_than_the_pack_minus_its_trailer_is_refused(delta):
    """The trailer is outside the AEAD (a bit flip there needs no key): a length in (size-4, size] would
    make the reader seek to a negative offset."""
    size = 1000
    n = size + delta
    with pytest.raises(IntegrityError):
        pack_mod.header_length(struct.pack("<I", n), size)
    assert pack_mod.header_length(struct.pack("<I", size - 4), size) == size - 4  # the bound itself is fine


def test_a_header_without_the_magic_is_refused():
    sealed = _header(b"XXXX" + struct.pack("<I", 1) + _entry(b"D", 50))
    with pytest.raises(IntegrityError, match="magic"):
        pack_mod.header_rows(sealed, 50 + len(sealed) + 4, CIPHER)


@pytest.mark.parametrize("extra", [1, 41], ids=["one-byte", "one-more-entry"])
def test_a_header_longer_than_its_count_is_refused(extra):
    """count says 1, the plaintext holds more: the rest must not be parsed (or crash struct.iter_unpack)."""
    plain = b"VPH1" + struct.pack("<I", 1) + _entry(b"D", 50) + (_entry(b"D", 50)[:extra] if extra < 41
                                                                   else _entry(b"D", 50))
    sealed = _header(plain)
    for body in (50, 100):
        with pytest.raises(IntegrityError, match="count"):
            pack_mod.header_rows(sealed, body + len(sealed) + 4, CIPHER)


def test_an_entry_shorter_than_a_sealed_block_is_refused():
    sealed = _header(b"VPH1" + struct.pack("<I", 2) + _entry(b"D", BLOCK_OVERHEAD - 1) + _entry(b"D", 100))
    with pytest.raises(IntegrityError, match="malformed entry"):
        pack_mod.header_rows(sealed, BLOCK_OVERHEAD - 1 + 100 + len(sealed) + 4, CIPHER)


def test_a_header_listing_fewer_bytes_than_the_pack_body_is_refused():
    """Unlisted bytes between the blocks and the header: the header must cover the body exactly."""
    sealed = _header(b"VPH1" + struct.pack("<I", 1) + _entry(b"D", 60))
    with pytest.raises(IntegrityError, match="lists 60 bytes"):
        pack_mod.header_rows(sealed, 61 + len(sealed) + 4, CIPHER)


# --- index segments ---------------------------------------------------------------------------------------
def _segment(plain: bytes) -> bytes:
    return CIPHER.seal(zstandard.ZstdCompressor().compress(plain), index_mod.AAD)


def _seg_plain(off: int, length: int, size: int, magic: bytes = b"VIX1", tail: bytes = b"") -> bytes:
    return (magic + struct.pack("<I", 0) + struct.pack("<I", 1) + struct.pack("<32scIQ", b"\x22" * 32, b"D", 1, size)
            + struct.pack("<32sIII", BID, off, length, 10) + tail)


def test_a_well_formed_segment_parses():
    seg = index_mod.decode(_segment(_seg_plain(0, 100, 100)), CIPHER)
    assert seg.packs[b"\x22" * 32] == [PackEntry(DATA, BID, 0, 100, 10)]


@pytest.mark.parametrize("off,length", [(1, 100), (0, 101), (50, 1000)], ids=["one-past", "one-longer", "far-past"])
def test_an_index_entry_past_the_end_of_its_pack_is_refused(off, length):
    with pytest.raises(IntegrityError, match="past the end"):
        index_mod.decode(_segment(_seg_plain(off, length, 100)), CIPHER)


def test_an_index_segment_with_trailing_bytes_is_refused():
    with pytest.raises(IntegrityError, match="trailing"):
        index_mod.decode(_segment(_seg_plain(0, 100, 100, tail=b"\0")), CIPHER)


def test_an_index_segment_without_the_magic_is_refused():
    with pytest.raises(IntegrityError, match="magic"):
        index_mod.decode(_segment(_seg_plain(0, 100, 100, magic=b"VIX0")), CIPHER)


def test_an_entry_count_longer_than_the_segment_is_refused_as_such():
    plain = _seg_plain(0, 100, 100).replace(struct.pack("<32scIQ", b"\x22" * 32, b"D", 1, 100),
                                           struct.pack("<32scIQ", b"\x22" * 32, b"D", 1000, 100))
    with pytest.raises(IntegrityError, match="entry count"):
        index_mod.decode(_segment(plain), CIPHER)
