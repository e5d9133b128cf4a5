"""Packs blocks into pack files of about ``pack_size`` bytes and stores them; thread-safe.

Data and tree blocks go to separate packs. A full pack is sealed (header appended), named by the SHA-256
of its bytes, stored atomically and checked after write; then ``on_pack`` is told (pack id, size, entries)
so the caller can put it in the next index segment. Nothing here decides what is stored: callers dedup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .pack import DATA, KINDS, PackEntry, encode_header
from .repository import Repository

OnPack = Callable[[bytes, int, list[PackEntry]], None]


class _Open:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.entries: list[PackEntry] = []


class PackWriter:
    def __init__(self, repo: Repository, on_pack: OnPack):
        self.repo = repo
        self.on_pack = on_pack
        self._lock = threading.Lock()
        self._open = {k: _Open() for k in KINDS}
        self._target = repo.config.pack_size
        self.bytes_written = 0
        self.packs_written = 0

    def add(self, kind: str, block_id: bytes, sealed: bytes, raw_length: int) -> None:
        """Append one sealed block; stores the pack (in the calling thread) when it is full."""
        full = None
        with self._lock:
            op = self._open[kind]
            op.entries.append(PackEntry(kind, block_id, len(op.buf), len(sealed), raw_length))
            op.buf += sealed
            if len(op.buf) >= self._target:
                full, self._open[kind] = op, _Open()
        if full is not None:
            self._store(full)

    def flush(self) -> None:
        """Store every partly filled pack (data first, then trees)."""
        with self._lock:
            todo = [self._open[k] for k in (DATA, *[k for k in KINDS if k != DATA]) if self._open[k].entries]
            self._open = {k: _Open() for k in KINDS}
        for op in todo:
            self._store(op)

    def _store(self, op: _Open) -> None:
        op.buf += encode_header(op.entries, self.repo.cipher)
        data = bytes(op.buf)
        op.buf = bytearray()
        pid = self.repo.put_pack(data)
        with self._lock:
            self.bytes_written += len(data)
            self.packs_written += 1
        self.on_pack(pid, len(data), op.entries)
