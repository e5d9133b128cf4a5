"""Packs blocks into pack files of about ``pack_size`` bytes and stores them; thread-safe.

Data and tree blocks go to separate packs. Each open pack is one anonymous memory mapping, so only the
pages actually filled cost memory and all of it goes back to the OS when the pack is stored: a block is
compressed by the calling thread, then encrypted straight into its place in the mapping (no intermediate
copies). Pages are faulted in ahead of the writer by reading /dev/zero into them: the fault handling and
zeroing then run in a system call without the GIL, instead of inside the encryption, which holds it. A full pack is sealed (header appended), named by the SHA-256 of its bytes, stored atomically and
checked after write; then ``on_pack`` is told (pack id, size, entries) so the caller can put it in the next
index segment. Callers decide what to store (dedup); this only packs.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable

from . import index as index_mod
from .errors import IntegrityError, LockLost, VaultError
from .pack import DATA, KINDS, PackEntry, encode_header, pack_name, seal_block_into, sealed_size
from .repository import Repository

OnPack = Callable[[bytes, int, list[PackEntry]], None]


PREFAULT = 2 << 20  # bytes of a pack's mapping faulted in at a time, ahead of the block being written


SPILL = 4 << 20  # staging: the filled part of a pack is written out (and its pages freed) this much at a time


class _Open:
    def __init__(self, capacity: int, stage: Callable[[], object] | None = None, spill: int = SPILL) -> None:
        self.buf = mmap.mmap(-1, capacity)
        self.used = 0
        self.faulted = 0  # bytes [0, faulted) are backed by pages already
        self.entries: list[PackEntry] = []
        self.ids: set[bytes] = set()  # (a block twice in one pack would make its header and index disagree)
        self._stage = stage  # makes the backend's staged object on the first spill (None: no staging)
        self.staged = None
        self.spilled = 0  # bytes [0, spilled) are written to ``staged`` and hashed; their pages are freed
        self.spill_size = spill
        self.spill_lock = threading.Lock()  # spills run one at a time, in order, outside the writer's lock
        self.closed = False  # stored (or dropped): a spill decided before that does nothing
        self.hash = hashlib.sha256()

    def spill(self, end: int, final: bool = False) -> None:
        """Write [spilled, end) out to the staged object and hash it; free those pages (whole pages only,
        unless ``final``). [0, end) must be sealed already. Serialised by ``spill_lock`` (so the hash sees the
        bytes in order; an ``end`` at or below what is spilled already does nothing), not by the writer's
        lock: other threads go on sealing blocks past ``end`` meanwhile."""
        with self.spill_lock:
            self.spill_held(end, final)

    def spill_held(self, end: int, final: bool) -> None:
        """``spill`` for a caller that holds ``spill_lock`` already (the pack's final store)."""
        if self.closed:
            return
        if not final:
            end -= end % mmap.PAGESIZE
            if end - self.spilled < self.spill_size:
                return
        if self.staged is None:
            self.staged = self._stage()
        with memoryview(self.buf) as mv, mv[self.spilled : end] as piece:
            self.staged.write_at(piece, self.spilled)
            self.hash.update(piece)
        if not final:
            self.buf.madvise(mmap.MADV_REMOVE, self.spilled, end - self.spilled)
        self.spilled = end

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None

    def prefault(self, end: int, zero_fd: int) -> None:
        """Make sure [0, end) is backed by pages, faulting them in a GIL-free read of /dev/zero."""
        target = min(len(self.buf), max(end, self.faulted + PREFAULT))
        with memoryview(self.buf) as mv:
            while self.faulted < target:
                got = os.preadv(zero_fd, [mv[self.faulted : target]], 0)
                if got <= 0:
                    return
                self.faulted += got


class PackWriter:
    def __init__(self, repo: Repository, on_pack: OnPack, uploaders: int = 2, prefault: bool = True,
                 spill: int = SPILL):
        """``prefault=False``: a single-threaded caller (a backup's worker process), for whom a fault taken in
        the encryption costs less than reading /dev/zero into the page first (which only helps threads: the
        fault then happens without the GIL). ``spill``: with a staging store, bytes written out at a time (what
        a pack holds in memory; a worker process uses less, as there is one per worker)."""
        self._spill = spill
        self.repo = repo
        self.on_pack = on_pack
        self._lock = threading.Lock()
        # full packs are stored by uploader threads (local: write + fsync; S3: PUT) while workers go on
        self._sync = uploaders == 0
        self._uploads = ThreadPoolExecutor(max_workers=max(1, uploaders), thread_name_prefix="vault-upload")
        self._in_flight = threading.BoundedSemaphore(max(1, uploaders))
        self._futures: list[Future] = []
        self._failure: BaseException | None = None
        self._target = repo.config.pack_size
        # virtual size: untouched pages cost nothing; room for the last block and a header of tiny blocks
        self._capacity = 2 * (self._target + sealed_size(repo.config.chunker.max_size))
        self._open: dict[str, _Open | None] = {k: None for k in KINDS}
        # a local store writes each pack as it fills (4 MiB at a time) instead of holding it whole in memory
        backend = repo.backend
        self._stage = (lambda: backend.stage("data")) if (
            self._sync and getattr(backend, "supports_staging", False) and hasattr(mmap, "MADV_REMOVE")) else None
        try:
            self._zero_fd: int | None = (os.open("/dev/zero", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                                         if prefault else None)
        except OSError:
            self._zero_fd = None
        self.bytes_written = 0
        self.packs_written = 0

    def add(self, kind: str, block_id: bytes, data: bytes | memoryview) -> int:
        """Compress, encrypt and append one block; store the pack (in this thread) when it is full.

        Returns the stored (sealed) size of the block: 0 if it is in the open pack already (the caller's
        record of what it stored can forget, e.g. a backup's claims table once emptied: ``claims``)."""
        if self._failure is not None:
            raise self._failure
        flag, payload = self.repo.compress(data)
        size = sealed_size(len(payload))
        full = spill = None
        with self._lock:
            op = self._open[kind]
            if op is not None and block_id in op.ids:
                return 0
            if op is None or op.used + size > len(op.buf):
                if op is not None and op.entries:
                    full = op
                op = self._open[kind] = _Open(max(self._capacity, size), self._stage, self._spill)
            if self._zero_fd is not None and op.used + size > op.faulted:
                op.prefault(op.used + size, self._zero_fd)
            seal_block_into(self.repo.cipher, block_id, flag, payload, memoryview(op.buf)[op.used : op.used + size])
            op.entries.append(PackEntry(kind, block_id, op.used, size, len(data)))
            op.ids.add(block_id)
            op.used += size
            if op.used >= self._target:
                full, self._open[kind] = op, None
            elif self._stage is not None and op.used - op.spilled >= self._spill + mmap.PAGESIZE:
                spill = (op, op.used)
        if spill is not None:  # pwrite and hash of 4 MiB: not under the lock every sealing thread needs
            spill[0].spill(spill[1])
        if full is not None:
            self._store(full)
        return size

    def flush(self) -> None:
        """Store every partly filled pack (data first, then trees) and wait until all are stored."""
        with self._lock:
            todo = [self._open[k] for k in (DATA, *[k for k in KINDS if k != DATA])]
            self._open = {k: None for k in KINDS}
        for op in todo:
            if op is not None and op.entries:
                self._store(op)
        for fut in self._futures:
            fut.result()
        self._futures = []
        if self._failure is not None:
            raise self._failure

    def settled(self) -> bool:
        """No upload under way and none failed (a run that was stopped: is the store answering?)."""
        with self._lock:
            return self._failure is None and all(f.done() and f.exception() is None for f in self._futures)

    def close(self, wait: bool = True) -> None:
        """Stop the uploaders; packs not flushed are dropped (a crash-equivalent: nothing references them).
        ``wait=False`` (the command was stopped): uploads under way are not waited for."""
        for op in self._open.values():
            if op is not None:
                with op.spill_lock:
                    op.closed = True
                    op.discard()
                    try:
                        op.buf.close()
                    except BufferError:  # Ctrl-C while a block was being sealed into it: the interrupted
                        pass             # frame (kept by the traceback) holds a view; GC unmaps it later
        self._uploads.shutdown(wait=wait, cancel_futures=True)
        if self._zero_fd is not None:
            os.close(self._zero_fd)
            self._zero_fd = None

    def _store(self, op: _Open) -> None:
        """Hand a full pack to an uploader (waits while ``uploaders`` packs are already in flight); with
        ``uploaders=0`` the calling thread stores it (no second pack buffer held: lowest memory)."""
        if self._sync:
            self._write(op)
            return
        self._in_flight.acquire()
        try:
            fut = self._uploads.submit(self._upload, op)
        except BaseException:
            self._in_flight.release()
            raise
        with self._lock:
            self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
            self._futures.append(fut)

    def _upload(self, op: _Open) -> None:
        try:
            self._write(op)
        except BaseException as exc:
            self._failure = self._failure or exc
            raise
        finally:
            self._in_flight.release()

    def _write(self, op: _Open) -> None:
        header = encode_header(op.entries, self.repo.cipher)
        end = op.used + len(header)
        with op.spill_lock:  # a spill another thread decided (maybe the first: the staged object) ends first
            try:
                pid = self._store_pack(op, header)
            finally:
                op.closed = True
                op.discard()
                try:
                    op.buf.close()
                except BufferError:  # a backend still holds a view (e.g. in a traceback): let GC unmap it
                    pass
        with self._lock:
            self.bytes_written += end
            self.packs_written += 1
        self.on_pack(pid, end, op.entries)

    def _store_pack(self, op: _Open, header: bytes) -> bytes:
        """Store a full pack (under its ``spill_lock``); its id."""
        end = op.used + len(header)
        if op.staged is not None:  # the rest and the header, then name it by the hash of it all
            op.spill_held(op.used, final=True)
            op.staged.write_at(header, op.used)
            op.hash.update(header)
            return self.repo.publish_pack(op.staged, op.hash.digest(), end)
        if end <= len(op.buf):
            op.buf[op.used : end] = header
            with memoryview(op.buf) as mv, mv[:end] as data:
                return self.repo.put_pack(data)
        return self.repo.put_pack(op.buf[: op.used] + header)  # pathological: a header of countless tiny blocks


def adopt_leftover_packs(repo: Repository, catalog, check_lock: Callable[[], None] | None = None) -> int:
    """Index the packs an interrupted run (backup, copy) stored after its last checkpoint: they are complete (a
    pack is written whole or not at all), so their blocks are reused instead of stored again. Only a pack whose
    bytes match its name is adopted: one that fails (bit rot, or the damaged pack ``repair`` left out of the
    index) is remembered in the catalog and never read again; prune deletes it. ``check_lock``: the run's lock,
    asked around the segment (``Repository.commit_index``). Returns how many."""
    adopted = []
    for pid, size in repo.list_packs():
        if catalog.has_pack(pid) or catalog.is_rejected(pid, size):
            continue
        try:
            entries = repo.read_pack_header(pid, size)
            repo.check_stored(pack_name(pid), pid.hex(), size)
            adopted.append((pid, size, entries))
        except IntegrityError:
            catalog.reject(pid, size)
        except VaultError:
            continue  # vanished or unreadable now: the next run looks again
    if not adopted:
        return 0
    try:
        seg = index_mod.from_packs(adopted)
        sid = repo.commit_index(seg, check_lock)
    except LockLost:
        raise
    except (ValueError, VaultError):
        return 0  # a malformed leftover (mixed kinds): leave it to prune
    catalog.add_segment(sid, seg)
    return len(adopted)
