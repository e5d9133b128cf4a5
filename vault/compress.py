"""zstd compression of block payloads: skip it when it does not help; bounded decompression.

``compress`` returns a flag (0 = stored raw, 1 = zstd) and the payload; the flag travels with the sealed
block (see vault.pack). Raw payloads are the caller's buffer, not a copy. Pure: no I/O.
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
    sample = data[mid : mid + _SAMPLE]
    return len(_compressor(level).compress(sample)) > 0.97 * len(sample)


def compress(data: bytes | memoryview, level: int) -> tuple[int, bytes | memoryview]:
    """(ZSTD, frame) when zstd saves at least 3 %, else (RAW, data) -- the same buffer, uncopied."""
    if level > 0 and len(data) >= 64 and not looks_incompressible(data, level):
        packed = _compressor(level).compress(data)
        if len(packed) < 0.97 * len(data):
            return ZSTD, packed
    return RAW, data


def bounded_decompress(frame: bytes | memoryview, limit: int) -> bytes:
    """Decompress one zstd frame into at most ``limit`` bytes. zstd ignores ``max_output_size`` when the
    frame declares its size, so the declared size is checked first (a hostile frame cannot claim 10 GB)."""
    try:
        declared = zstandard.frame_content_size(frame)
        if declared > limit:
            raise IntegrityError(f"compressed data claims {declared} bytes, more than the {limit} allowed")
        if declared < 0:  # no size in the frame (vault always writes one): streamed, never ``limit`` allocated
            pieces, got = [], 0  # up front (a 19-byte frame claimed 4 GiB): read 1 MiB at a time
            with _decompressor().stream_reader(frame) as reader:
                while got <= limit:
                    piece = reader.read(min(1 << 20, limit + 1 - got))
                    if not piece:
                        break
                    pieces.append(piece)
                    got += len(piece)
            out = b"".join(pieces)
            if len(out) <= limit:  # the frame must also be whole (a cut one streams what it holds): decoded
                _decompressor().decompress(frame, max_output_size=max(len(out), 1))  # again, bounded by that
        else:
            out = _decompressor().decompress(frame, max_output_size=max(limit, 1))
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed data: {exc}") from None
    if len(out) > limit:
        raise IntegrityError(f"compressed data holds more than the {limit} bytes allowed")
    return out


def decompress(flag: int, body: bytes | memoryview, raw_length: int, copy: bool = True) -> bytes | memoryview:
    """Invert ``compress``; the output must be exactly ``raw_length`` bytes (bounds zstd bombs). With
    ``copy=False`` an uncompressed body is returned as is (a view the caller must not keep)."""
    if flag == RAW:
        out = body if isinstance(body, bytes) or not copy else bytes(body)
    elif flag == ZSTD:
        out = bounded_decompress(body, raw_length)
    else:
        raise IntegrityError(f"unknown compression flag {flag}")
    if len(out) != raw_length:
        raise IntegrityError(f"block decompressed to {len(out)} bytes, expected {raw_length}")
    return out


#: Below this a block is decompressed into a fresh bytes object (cheaper for small ones); from here on into the
#: caller's reused buffer: with the CLI's 1 MiB mmap threshold every fresh multi-megabyte output was a new
#: mapping, faulted in and zeroed page by page (measured: 816 vs 224 us for a 1.3 MB block).
INTO_MIN = 64 * 1024
#: ...and only up to here (data chunks are at most 8 MiB): a rare huge tree does not grow every thread's buffer.
INTO_MAX = 16 * 1024 * 1024


def decompress_into(flag: int, body: bytes | memoryview, raw_length: int, out: bytearray) -> bytes | memoryview:
    """``decompress`` without copies for large blocks: a zstd body is decompressed into ``out`` (grown as
    needed, reused by the caller) and a RAW body returned as is. The result may be a view into ``out`` or
    ``body``, valid until either is reused; its length is exactly ``raw_length`` or IntegrityError."""
    if flag != ZSTD or not INTO_MIN <= raw_length <= INTO_MAX:
        return decompress(flag, body, raw_length, copy=False)
    need = raw_length + 1  # room for one byte more than promised: a longer frame is caught, not truncated
    if len(out) < need:
        out.extend(bytes(need - len(out)))
    view = memoryview(out)[:need]
    got = 0
    try:
        with _decompressor().stream_reader(body) as reader:
            while got < need:
                n = reader.readinto(view[got:])
                if not n:
                    break
                got += n
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed data: {exc}") from None
    if got != raw_length:
        raise IntegrityError(f"block decompressed to {got}{'+' if got == need else ''} bytes, expected {raw_length}")
    return view[:raw_length]

