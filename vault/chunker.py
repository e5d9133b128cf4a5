"""Content-defined chunking: FastCDC 2020 with normalized chunking (pyfastcdc, Cython, releases the GIL).

The gear table is XORed with a per-repository secret 64-bit seed (``MasterKeys.chunker_seed``), so chunk
boundaries differ from an unseeded FastCDC's and between repositories. It is no keyed PRF: chunk lengths of known
data, which packs of one block give away to read access, narrow the seed down (docs/format.md section 13).
Pure apart from reading the stream it is given.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyfastcdc


_SLACK = 1 << 20  # a buffer holds this much beyond the longest chunk it is for: refills read >= 1 MiB


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 2

    def validate(self) -> None:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= 16 * 1024 * 1024 and self.max_size >= 1024):
            raise ValueError("chunker sizes must satisfy 64 <= min <= avg <= max <= 16 MiB, max >= 1 KiB")
        if self.min_size > 1024 * 1024 or not 256 <= self.avg_size <= 4 * 1024 * 1024:
            raise ValueError("chunker min must be <= 1 MiB and avg within 256 B .. 4 MiB")
        if self.normalization not in (0, 1, 2, 3):
            raise ValueError("chunker normalization must be 0..3")

    def to_json(self) -> dict:
        return {"algorithm": "fastcdc2020", "min_size": self.min_size, "avg_size": self.avg_size,
                "max_size": self.max_size, "normalization": self.normalization}

    @classmethod
    def from_json(cls, d: dict) -> "ChunkerParams":
        p = cls(int(d["min_size"]), int(d["avg_size"]), int(d["max_size"]), int(d["normalization"]))
        p.validate()
        return p


class Chunker:
    """Cuts streams into chunks. One instance may be shared by threads (each gets its own FastCDC)."""

    def __init__(self, params: ChunkerParams, seed: int):
        params.validate()
        self.params = params
        self._seed = seed & ((1 << 63) - 1) or 1
        self._local = threading.local()

    def _cdc(self) -> pyfastcdc.FastCDC:
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            p = self.params
            cdc = self._local.cdc = pyfastcdc.FastCDC(
                p.avg_size, min_size=p.min_size, max_size=p.max_size,
                normalized_chunking=p.normalization, seed=self._seed)
        return cdc

    def _buffer(self) -> bytearray:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(min(self.params.max_size, 4 * self.params.avg_size) + _SLACK)
        return buf

    def zero_chunk(self) -> memoryview:
        """The chunk a run of zeros is cut into from a cut point on: FastCDC's cut depends only on the bytes
        since the last cut (and, for a cut the hash makes, on the one byte after it), so every such chunk
        followed by a zero is this one (read-only, the same object each time)."""
        zero = getattr(self, "_zero", None)
        if zero is None:
            zeros = bytes(self.params.max_size)
            first = next(iter(self._cdc().cut_buf(zeros))).length
            zero = self._zero = memoryview(zeros)[:first]
        return zero

    def _zero_chunks(self, fd: int, offset: int, most: int) -> int:
        """How many ``zero_chunk`` fit in the hole of the file at ``offset`` (at most ``most`` bytes): asked with
        SEEK_DATA, so a file system without holes, or one that does not say, gives 0. Moves the file offset."""
        zero = len(self.zero_chunk())
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
            if zero < self.params.max_size:
                # a cut the hash makes (not max_size's) is decided on the byte after the chunk: it must be a
                # zero too, so the last zero chunk ends before the data (over data, the dense cut may not be there)
                data -= 1
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # (no data after ``offset``: a hole up to the end of the file)
                return 0
            data = os.fstat(fd).st_size
        return max(0, min(data - offset, most)) // zero

    def cut_fd(self, fd: int, limit: int | None = None, sparse: bool = False) -> Iterator[memoryview]:
        """Chunk a file descriptor from its current position (at most ``limit`` bytes: a file another process
        keeps extending must not be read for ever). Each view is valid only until the next one is requested.

        Reads go through one reusable per-thread buffer of 4 x avg_size + 1 MiB (5 MiB by default), not of
        max_size: a cut is final as soon as the chunk ends before the data read so far (the cut point
        depends only on the bytes up to it), so the buffer need only hold a typical chunk. A rare longer
        one (no cut point for > 4 MiB, e.g. a run of zeros) moves to a temporary mapping of max_size +
        1 MiB, unmapped once it is no longer used. The cuts are the same as over the whole file at once.

        ``sparse`` (the file has holes): at each cut point in a hole, the zero chunks that fit in it are not
        read, chunked or hashed again: ``zero_chunk`` stands for each (the same cuts: see there)."""
        small = memoryview(self._buffer())
        mv, big = small, None
        max_size = self.params.max_size
        cdc = self._cdc()
        start = end = 0
        eof = False
        left = -1 if limit is None else limit  # (-1: no limit)
        pos = os.lseek(fd, 0, os.SEEK_CUR) if sparse else 0  # (the file offset of mv[end])
        while True:
            if sparse:  # (``start`` is a cut point here)
                at = pos - (end - start)
                n = self._zero_chunks(fd, at, max_size << 40 if left < 0 else left + end - start)
                if n:
                    zero = self.zero_chunk()
                    for _ in range(n):
                        yield zero
                    skipped = at + n * len(zero)
                    if left >= 0:
                        left -= skipped - pos
                    mv, big, start, end, eof = small, None, 0, 0, False
                    pos = skipped
                os.lseek(fd, pos, os.SEEK_SET)
            while not eof and end < len(mv):
                want = len(mv) - end if left < 0 else min(len(mv) - end, left)
                n = os.readv(fd, [mv[end:end + want]]) if want else 0
                if n == 0:
                    eof = True
                end += n
                pos += n
                if left > 0:
                    left -= n
            if start == end:
                return
            chunk = None
            for chunk in cdc.cut_buf(mv[start:end]):
                if not eof and start + chunk.length == end:
                    break  # it may have been cut short by the end of what was read: read more first
                yield chunk.data
                start += chunk.length
            del chunk
            if start == end and eof:
                return
            rest = end - start
            if start == 0 and big is None and len(mv) <= max_size:  # one chunk longer than the buffer
                big = mmap.mmap(-1, max_size + _SLACK)
                target = memoryview(big)
            elif big is not None and rest <= len(small):  # back to the reusable buffer
                target, big = small, None  # the mapping is unmapped when its last view is gone
            else:
                target = mv
            target[:rest] = mv[start:end]
            mv, start, end = target, 0, rest

    def cut_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield chunk views; each view is valid only until the next one is requested."""
        for chunk in self._cdc().cut_stream(stream):
            yield chunk.data

    def cut_bytes(self, data: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc().cut_buf(data):
            yield chunk.data
