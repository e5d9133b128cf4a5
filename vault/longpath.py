"""System calls on paths longer than the kernel's PATH_MAX (4096 bytes).

Such a call fails with ENAMETOOLONG although every component is a legal name (a deep tree of long names).
``call`` retries it relative to a descriptor of a directory above the path, opened hop by hop with pieces
shorter than the limit: the lookup is the kernel's own, component by component, exactly as for the whole path
(symlinks on the way are followed or not just as they would be). Normal paths pay nothing: the fallback runs
only after ENAMETOOLONG. Pure system calls; knows nothing of vault.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PIECE = 3072  # bytes of path opened per hop: well under PATH_MAX
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def _open_above(path: bytes) -> tuple[int, bytes]:
    """A descriptor of a directory above absolute ``path`` and the rest of the path below it (< PIECE bytes)."""
    fd = os.open(b"/", _DIR_FLAGS)
    rest = path.lstrip(b"/")
    try:
        while len(rest) >= PIECE:
            cut = rest.rfind(b"/", 0, PIECE)
            if cut <= 0:  # one component longer than a piece: no name is (NAME_MAX is 255)
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
            nxt = os.open(rest[:cut], _DIR_FLAGS, dir_fd=fd)
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


def listdir(path: bytes) -> list[bytes]:
    """``os.listdir`` of a directory, as bytes names, whatever the length of its path."""
    try:
        return os.listdir(path)
    except OSError as exc:
        if not _fallback(exc, path):
            raise
    fd = _from_above(os.open, path, _DIR_FLAGS)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)
