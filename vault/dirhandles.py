"""Open directories below a root, by descriptor: what restore writes through, so that nothing is written
outside the target even when a directory in it is swapped for a symlink while the restore runs.

Every directory is opened from its parent's descriptor with O_DIRECTORY|O_NOFOLLOW, starting at the root:
a symlink anywhere below the root is refused (ELOOP/ENOTDIR), never followed. Entries are then created,
renamed and removed by name relative to such a descriptor (``dir_fd``), so the kernel never resolves a path
through a directory that could have changed since it was checked. Descriptors are cached (least recently used
first out, never one in use), so memory and open files stay bounded however many directories there are.
Thread-safe.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# O_PATH: a descriptor to name entries by, needing no read permission on the directory (a 0300 drop box)
_BASE = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_FLAGS = _BASE | os.O_NOFOLLOW


def split(path: bytes) -> tuple[bytes, bytes]:
    """(directory, name) of a snapshot path: ``/etc/ssl/x`` -> (``/etc/ssl``, ``x``); the root is ``b""``."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


class DirHandles:
    def __init__(self, root: bytes, limit: int = 128):
        self._lock = threading.Lock()
        self._limit = max(2, limit)
        root_fd = os.open(root, _BASE)  # (a symlink given as the target itself is the user's own choice)
        self._cache: collections.OrderedDict[bytes, list[int]] = collections.OrderedDict({b"": [root_fd, 1]})

    @contextmanager
    def at(self, path: bytes) -> Iterator[int]:
        """The descriptor of the directory at snapshot path ``path`` (``b""``: the root), held while in use.
        OSError when it cannot be opened: missing, not a directory, or a symlink."""
        fd = self._acquire(path)
        try:
            yield fd
        finally:
            with self._lock:
                self._cache[path][1] -= 1

    def _acquire(self, path: bytes) -> int:
        with self._lock:  # held throughout: nothing is evicted while a chain of directories is opened
            entry = self._cache.get(path)
            if entry is None:
                missing = []
                cur = path
                while cur not in self._cache:  # up to the nearest open ancestor (the root always is)
                    missing.append(cur)
                    cur = split(cur)[0]
                parent = self._cache[cur]
                parent[1] += 1  # in use while its child is opened from it
                try:
                    for p in reversed(missing):  # older ones are evicted on the way: a 1,000-level chain
                        entry = self._cache[p] = [os.open(split(p)[1], _FLAGS, dir_fd=parent[0]), 1]
                        parent[1] -= 1
                        parent = entry
                        self._evict()
                finally:
                    parent[1] -= 1
            entry[1] += 1
            self._cache.move_to_end(path)
            self._evict()
            return entry[0]

    def _evict(self) -> None:
        if len(self._cache) <= self._limit:
            return
        for p in [p for p, e in self._cache.items() if e[1] == 0][: len(self._cache) - self._limit]:
            os.close(self._cache.pop(p)[0])

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._cache.values():
                os.close(fd)
            self._cache.clear()
