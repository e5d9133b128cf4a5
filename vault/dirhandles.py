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

# O_PATH: a descriptor to name entries by, needing no read permission on the directory (a 0300 drop box)
_BASE = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_FLAGS = _BASE | os.O_NOFOLLOW


def split(path: bytes) -> tuple[bytes, bytes]:
    """(directory, name) of a snapshot path: ``/etc/ssl/x`` -> (``/etc/ssl``, ``x``); the root is ``b""``."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


def _default_limit() -> int:
    """Descriptors to keep open: 512, or a quarter of the process's limit when that is lower (at least 4:
    under a tiny ``ulimit -n`` the restore's files and worker pipes need the rest)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 128
    return 512 if soft == resource.RLIM_INFINITY else max(4, min(512, soft // 4))


class _Held:
    """``with handles.at(path) as fd``: a class, not a generator context manager (it runs for every file)."""
    __slots__ = ("_handles", "_path", "_entry")

    def __init__(self, handles: "DirHandles", path: bytes):
        self._handles, self._path = handles, path

    def __enter__(self) -> int:
        self._entry = self._handles._acquire(self._path)
        return self._entry[0]

    def __exit__(self, *exc: object) -> None:
        with self._handles._lock:
            self._entry[1] -= 1


class DirHandles:
    def __init__(self, root: bytes, limit: int | None = None):
        self._lock = threading.Lock()
        self._limit = max(2, limit or _default_limit())
        root_fd = os.open(root, _BASE)  # (a symlink given as the target itself is the user's own choice)
        self._cache: collections.OrderedDict[bytes, list[int]] = collections.OrderedDict({b"": [root_fd, 1]})

    def at(self, path: bytes) -> _Held:
        """``with handles.at(path) as fd``: the descriptor of the directory at snapshot path ``path`` (``b""``:
        the root), held while in use. OSError when it cannot be opened: missing, not a directory, or a
        symlink."""
        return _Held(self, path)

    def _acquire(self, path: bytes) -> list[int]:
        with self._lock:  # held throughout (a chain's descriptors are opened in turn under it)
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
                self._evict()
            else:
                entry[1] += 1
                self._cache.move_to_end(path)
            return entry

    def _evict(self) -> None:
        """Close the least recently used descriptors not in use, down to the limit (a walk from the old end:
        usually the first one or two will do)."""
        excess = len(self._cache) - self._limit
        if excess <= 0:
            return
        idle = []
        for p, e in self._cache.items():
            if e[1] == 0:
                idle.append(p)
                if len(idle) == excess:
                    break
        for p in idle:
            os.close(self._cache.pop(p)[0])

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._cache.values():
                os.close(fd)
            self._cache.clear()
