"""System calls on paths longer than the kernel's PATH_MAX (4096 bytes).

Such a call fails with ENAMETOOLONG although every component is a legal name (a deep tree of long names).
``call`` retries it relative to a descriptor of a directory above the path, opened hop by hop with pieces
shorter than the limit: the lookup is the kernel's own, component by component, exactly as for the whole path
(symlinks on the way are followed or not just as they would be). Normal paths pay nothing: the fallback runs
only after ENAMETOOLONG. ``open_dir`` opens a directory and proves it is the one expected (its dev and inode),
so that calls relative to it cannot be led elsewhere. Pure system calls; knows nothing of vault.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PIECE = 3072  # bytes of path opened per hop: well under PATH_MAX
LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # to list a directory (and for the hops above a path)
SEARCH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # to reach what is in it: search permission is enough


def _open_above(path: bytes) -> tuple[int, bytes]:
    """A descriptor of a directory above absolute ``path`` and the rest of the path below it (< PIECE bytes)."""
    fd = os.open(b"/", LIST_FLAGS)
    rest = path.lstrip(b"/")
    try:
        while len(rest) >= PIECE:
            cut = rest.rfind(b"/", 0, PIECE)
            if cut <= 0:  # one component longer than a piece: no name is (NAME_MAX is 255)
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
            nxt = os.open(rest[:cut], LIST_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, rest = nxt, rest[cut + 1 :]
    except BaseException:
        os.close(fd)
        raise
    return fd, rest


def call(fn: Callable[..., T], path: bytes, *args, **kwargs) -> T:
    """``fn(path, *args, **kwargs)``; on ENAMETOOLONG for a long absolute path, ``fn(rest, ..., dir_fd=fd)``
    with ``fd`` a directory above it (``fn`` must take ``dir_fd``: os.open, os.stat, os.readlink...)."""
    try:
        return fn(path, *args, **kwargs)
    except OSError as exc:
        if not _fallback(exc, path):
            raise
    return _from_above(fn, path, *args, **kwargs)


def _from_above(fn: Callable[..., T], path: bytes, *args, **kwargs) -> T:
    """``fn(rest, ..., dir_fd=fd)`` with ``fd`` a directory above ``path`` (the whole path failed already)."""
    fd, rest = _open_above(path)
    try:
        return fn(rest, *args, dir_fd=fd, **kwargs)
    finally:
        os.close(fd)


def _fallback(exc: OSError, path: bytes) -> bool:
    return exc.errno == errno.ENAMETOOLONG and len(path) >= PIECE and path.startswith(b"/")


def lstat(path: bytes) -> os.stat_result:
    try:  # (the common case first, with no more calls than os.lstat alone: it runs once per file)
        return os.lstat(path)
    except OSError as exc:
        if not _fallback(exc, path):
            raise
    return _from_above(os.stat, path, follow_symlinks=False)


class Replaced(Exception):
    """The directory at a path is not the one expected (replaced or moved, or a symlink swapped in for it or for
    a directory above it)."""



def open_dir(path: bytes, flags: int, expect: tuple[int, int] | None
             ) -> tuple[int, tuple[int, int], os.stat_result]:
    """A descriptor of the directory at ``path`` (whatever its length), its (dev, ino) and stat; Replaced (the
    descriptor closed) when it is not ``expect``: every call relative to the descriptor then stays in the
    directory that was meant."""
    fd = call(os.open, path, flags)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    ident = (st.st_dev, st.st_ino)
    if expect is not None and ident != expect:
        os.close(fd)
        raise Replaced(path)
    return fd, ident, st
