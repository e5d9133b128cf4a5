"""zstd compression of block payloads: skip it when it does not help; bounded decompression.

A compressed payload is one flag byte (0 = stored raw, 1 = zstd) followed by the bytes. Pure: no I/O.
"""

from __future__ import annotations

import threading

import zstandard

from .errors import IntegrityError

RAW, ZSTD = 0, 1
_SAMPLE = 64 * 1024
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def looks_incompressible(data: bytes | memoryview, level: int) -> bool:
    """Cheap probe for large chunks: compress a 64 KiB sample at level 1 and look at the ratio."""
    if len(data) < 4 * _SAMPLE:
        return False
    mid = len(data) // 2
    sample = bytes(data[mid : mid + _SAMPLE])
    return len(_compressor(1).compress(sample)) > 0.97 * len(sample)


def compress(data: bytes | memoryview, level: int) -> bytes:
    """Return flag + payload: zstd when it saves at least 3 %, else the raw bytes."""
    if level > 0 and len(data) >= 64 and not looks_incompressible(data, level):
        packed = _compressor(level).compress(data)
        if len(packed) < 0.97 * len(data):
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + bytes(data)


def decompress(payload: bytes, raw_length: int) -> bytes:
    """Invert ``compress``; the output must be exactly ``raw_length`` bytes (bounds zstd bombs)."""
    if not payload:
        raise IntegrityError("empty block payload")
    flag, body = payload[0], memoryview(payload)[1:]
    if flag == RAW:
        out = bytes(body)
    elif flag == ZSTD:
        try:
            out = _decompressor().decompress(body, max_output_size=max(raw_length, 1))
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"corrupt compressed block: {exc}") from None
    else:
        raise IntegrityError(f"unknown compression flag {flag}")
    if len(out) != raw_length:
        raise IntegrityError(f"block decompressed to {len(out)} bytes, expected {raw_length}")
    return out
