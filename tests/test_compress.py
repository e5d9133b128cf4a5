"""Block (de)compression: lossless, and a frame that lies about its size (a zstd bomb, a short or long frame,
garbage) is an IntegrityError whichever path decompresses it -- into a fresh object or a reused buffer."""

import os

import pytest
import zstandard

from vault.compress import INTO_MIN, RAW, ZSTD, bounded_decompress, compress, decompress, decompress_into
from vault.errors import IntegrityError

BIG = (os.urandom(997) * 2000)[: 3 * INTO_MIN + 123]  # compressible, above the reuse threshold
SMALL = b"small block " * 100


@pytest.mark.parametrize("data", [BIG, SMALL, os.urandom(5000), b""])
def test_round_trip_through_both_paths(data):
    flag, payload = compress(data, 3)
    assert decompress(flag, payload, len(data)) == data
    out = bytearray()
    assert bytes(decompress_into(flag, payload, len(data), out)) == data
    assert bytes(decompress_into(flag, payload, len(data), out)) == data  # the buffer is reused


def test_buffer_is_reused_and_only_grows():
    out = bytearray()
    flag, payload = compress(BIG, 1)
    assert flag == ZSTD
    decompress_into(flag, payload, len(BIG), out)
    first = len(out)
    flag2, payload2 = compress(BIG[: INTO_MIN + 1], 1)
    assert bytes(decompress_into(flag2, payload2, INTO_MIN + 1, out)) == BIG[: INTO_MIN + 1]
    assert len(out) == first


@pytest.mark.parametrize("promised", [len(BIG) - 1, len(BIG) + 1, INTO_MIN])
def test_wrong_promised_length_is_rejected(promised):
    flag, payload = compress(BIG, 1)
    with pytest.raises(IntegrityError):
        decompress_into(flag, payload, promised, bytearray())
    with pytest.raises(IntegrityError):
        decompress(flag, payload, promised)


def test_frame_without_declared_size_longer_than_promised():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(BIG)
    with pytest.raises(IntegrityError):
        decompress_into(ZSTD, frame, len(BIG) - 10, bytearray())


def test_bomb_is_rejected_before_decompressing():
    frame = zstandard.ZstdCompressor().compress(bytes(200 * 1024 * 1024))
    with pytest.raises(IntegrityError):
        bounded_decompress(frame, 1024 * 1024)
    out = bytearray()
    with pytest.raises(IntegrityError):
        decompress_into(ZSTD, frame, 1024 * 1024, out)
    assert len(out) <= 1024 * 1024 + 1  # decompressed into the promised room only


@pytest.mark.parametrize("flag", [ZSTD, 7])
def test_garbage_is_rejected(flag):
    with pytest.raises(IntegrityError):
        decompress_into(flag, os.urandom(INTO_MIN * 2), INTO_MIN * 2, bytearray())


def test_raw_length_must_match():
    with pytest.raises(IntegrityError):
        decompress_into(RAW, b"x" * INTO_MIN, INTO_MIN + 1, bytearray())


def test_a_huge_block_does_not_grow_the_reused_buffer():
    from vault.compress import INTO_MAX

    data = b"tree entry " * (INTO_MAX // 11 + 10)
    flag, payload = compress(data, 1)
    out = bytearray()
    assert bytes(decompress_into(flag, payload, len(data), out)) == data
    assert len(out) == 0
