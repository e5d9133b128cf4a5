"""The blocks one backup has claimed (is storing or has stored), shared by its worker threads or processes.

Deduplication inside a run: whoever cuts a block first stores it; everyone else only names it. The table
is an open-addressing hash of 32-byte block ids (uniformly random: they are HMACs) in one anonymous shared
mapping, so forked worker processes see and update the same table, guarded by one lock. Across processes it
is a POSIX record lock (``lockf``) on an anonymous file: the kernel releases it when its holder dies (a
worker killed while holding it must not hang everyone else; a semaphore would stay taken forever).

Memory is bounded whatever the size of the backup: the table has a fixed number of slots. When it is 3/4
full it is emptied and ``generation`` goes up. From then on the claimer also asks the index (the catalog),
which holds every block of the packs already named by an index checkpoint; a block claimed before the
emptying and cut again before its pack is checkpointed may then be stored twice, in another pack -- a wasted
copy that the index names once and prune reclaims, never a block missing. (Twice in the same open pack is
refused by the pack writer: the pack's header and its index entries would disagree.)
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import threading

ID_LEN = 32
SLOTS = 1 << 17  # 4 MiB: 98,304 blocks (about 100 GB of new data at 1 MiB chunks) before an emptying
_ZERO = bytes(ID_LEN)
_META = struct.Struct("<QQ")  # entries, generation


class Claims:
    def __init__(self, slots: int | None = None, processes: bool = False):
        slots = slots or SLOTS
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._mask = slots - 1
        self._limit = slots * 3 // 4
        self._table = mmap.mmap(-1, slots * ID_LEN)  # MAP_SHARED | MAP_ANONYMOUS: one copy after a fork
        self._meta = mmap.mmap(-1, _META.size)
        self._lock = _FileLock() if processes else threading.Lock()

    @property
    def generation(self) -> int:
        """How many times the table was emptied (0: every block claimed in this run is in it)."""
        return _META.unpack_from(self._meta)[1]

    def contains(self, bid: bytes) -> bool:
        """Whether ``bid`` is claimed. Read without the lock: a slot being written reads as something else,
        so the answer may be a false "no" (the caller then asks ``add``, which decides), never a false "yes"."""
        table, mask = self._table, self._mask
        i = int.from_bytes(bid[:8], "little") & mask
        while True:
            cur = table[i * ID_LEN : i * ID_LEN + ID_LEN]
            if cur == bid:
                return True
            if cur == _ZERO:
                return False
            i = (i + 1) & mask

    def add(self, bid: bytes) -> bool:
        """Claim ``bid``: True for the first caller (who must store it), False for every later one."""
        if len(bid) != ID_LEN:
            raise ValueError("block ids are 32 bytes")
        table, mask = self._table, self._mask
        with self._lock:
            entries, generation = _META.unpack_from(self._meta)
            i = int.from_bytes(bid[:8], "little") & mask
            while True:
                off = i * ID_LEN
                cur = table[off : off + ID_LEN]
                if cur == bid:
                    return False
                if cur == _ZERO:
                    break
                i = (i + 1) & mask
            if entries >= self._limit:  # full: emptied, and this id goes where it belongs in the empty table
                self._empty()
                entries, generation = 0, generation + 1
                off = (int.from_bytes(bid[:8], "little") & mask) * ID_LEN
            table[off : off + ID_LEN] = bid
            _META.pack_into(self._meta, 0, entries + 1, generation)
            return True

    def _empty(self) -> None:
        try:
            self._table.madvise(mmap.MADV_REMOVE)  # shared anonymous pages: freed, read back as zeros
        except (AttributeError, OSError):
            step = 1 << 20
            for off in range(0, len(self._table), step):
                self._table[off : off + step] = bytes(min(step, len(self._table) - off))

    def close(self) -> None:
        self._table.close()
        self._meta.close()
        if isinstance(self._lock, _FileLock):
            self._lock.close()


class _FileLock:
    """Mutual exclusion between processes (one thread each): ``lockf`` on an anonymous file. Record locks
    belong to a process, are not inherited by a fork, and go away with their holder."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("vault-claims", getattr(os, "MFD_CLOEXEC", 0))
        else:
            with tempfile.TemporaryFile() as f:
                self._fd = os.dup(f.fileno())
        os.ftruncate(self._fd, 1)

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
