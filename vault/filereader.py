"""Backup's work on one file: read it, cut it into chunks, name them, store the new ones; its Node.

Used by the backup's worker threads (all sharing one FileReader) or, for a local repository, by each of
its worker processes (``backup_workers``). Which blocks are new is decided by ``claim``: the blocks claimed in
this run (``claims``, shared by every worker) and, when the index may hold some already, ``lookup``.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .claims import Claims
from .entries import split_ids
from .errors import MACHINE_LIMITS, StoreFailed
from . import longpath
from .fsmeta import node_from_stat, read_xattrs
from .model import Node
from .pack import DATA
from .repository import Repository

_O_NOATIME = getattr(os, "O_NOATIME", 0)
GROWTH = 64 << 20  # bytes a file may grow by while it is read (more: another process keeps extending it)


RACY_FINE_NS = 20_000_000  # a file system with sub-second timestamps: a few clock ticks of an older kernel
RACY_COARSE_NS = 2_000_000_000  # whole seconds (ext4 with 128-byte inodes, SMB, some NFS and FUSE), FAT's 2 s


def racy(ctime_ns: int, started_ns: int) -> bool:
    """Whether the file, read from ``started_ns`` on, could still change without its ctime changing: its ctime
    lies within one timestamp granule of the read (git's "racily clean" entries). Such a file is stored with
    ctime 0, so that the next backup reads it again instead of taking a rewrite of the same size in that granule
    for no change. The granule is judged by the ctime itself: a whole second is taken for a coarse file system
    (the odds of a fine one landing on a whole second are one in 10^9)."""
    window = RACY_COARSE_NS if ctime_ns % 1_000_000_000 == 0 else RACY_FINE_NS
    return ctime_ns + window > started_ns


@dataclass(slots=True)  # (one per file of a directory until its tree is stored: 200,000 in a wide one)
class FileResult:
    node: Node | None
    read: int = 0
    added: int = 0
    blocks_added: int = 0
    error: str | None = None
    vanished: bool = False  # deleted between the directory listing and the read: not in the snapshot, no error
    replaced_by: str | None = None  # no longer a file ("a symbolic link"...) at the read: as vanished, said so
    changed_while_reading: bool = False
    note: str | None = None  # a warning about the file (its extended attributes could not be stored)


def to_wire(res: FileResult) -> tuple:
    """``res`` as plain values (a worker process's reply: pickling dataclasses field by field cost the bench's
    first backup ~0.7 s of CPU); ``from_wire`` makes it again."""
    n = res.node
    node = None if n is None else (n.name, n.type, n.mode, n.uid, n.gid, n.size, n.mtime_ns, n.ctime_ns, n.inode,
                                   n.dev, n.nlink, b"".join(n.blocks), n.rdev, n.xattrs)
    return (node, res.read, res.added, res.blocks_added, res.error, res.vanished, res.changed_while_reading, res.note,
            res.replaced_by)


def from_wire(t: tuple) -> FileResult:
    node, read, added, blocks_added, error, vanished, changed, note, replaced_by = t
    if node is not None:
        name, typ, mode, uid, gid, size, mtime, ctime, inode, dev, nlink, blocks, rdev, xattrs = node
        node = Node(name, typ, mode, uid, gid, size, mtime, ctime, inode, dev, nlink, split_ids(blocks), rdev=rdev,
                    xattrs=xattrs)
    return FileResult(node, read, added, blocks_added, error, vanished, replaced_by=replaced_by,
                      changed_while_reading=changed, note=note)


#: A file's error when its directory's path no longer leads to the directory the walk listed (``longpath.Replaced``).
DIR_GONE = "its directory was replaced, moved or deleted while the backup ran: not in the snapshot"

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def _kind(mode: int) -> str:
    """What a name that is no longer a regular file now is, for a warning."""
    return _KINDS.get(stat.S_IFMT(mode), "something else")


class FileReader:
    """``store(kind, id, data) -> stored size`` keeps a block the caller must store; ``lookup(id)`` says
    whether the index holds it, asked only while ``lookups`` is true or once ``claims`` forgot some blocks."""

    def __init__(self, repo: Repository, claims: Claims, store: Callable[[str, bytes, bytes | memoryview], int],
                 lookup: Callable[[bytes], bool], lookups: bool, cancelled: Callable[[], bool] = lambda: False):
        self.repo, self.claims, self.store, self.lookup, self.lookups = repo, claims, store, lookup, lookups
        self.cancelled = cancelled  # checked before each file and between chunks: the rest is not read
        self._local = threading.local()

    def claim(self, bid: bytes) -> bool:
        """True when the caller must store this block (first time seen, not in the repository)."""
        claims = self.claims
        if claims.contains(bid):
            return False
        known = (self.lookups or claims.generation > 0) and self.lookup(bid)
        return claims.add(bid) and not known

    def read_files(self, files: list[tuple[bytes, bytes, tuple[int, int]]]) -> list[FileResult]:
        """``read_file`` for each (path, name, the walked directory's (dev, ino)); the directory descriptor
        opened for them is closed at the end."""
        try:
            return [self.read_file(path, name, parent) for path, name, parent in files]
        finally:
            held = getattr(self._local, "dir", None)
            if held is not None:
                self._local.dir = None
                os.close(held[2])

    def _dir_fd(self, path: bytes, name: bytes, parent: tuple[int, int]) -> int:
        """A descriptor of the directory holding ``path``, proved to be the one the walk listed (``parent``):
        a directory replaced or moved since (a symlink swapped in for it or for one above it, which the
        path would follow) raises longpath.Replaced, so nothing is ever read from outside the tree walked. Kept for the
        next file of the same directory."""
        where = path[: len(path) - len(name) - 1] or b"/"
        held = getattr(self._local, "dir", None)
        if held is not None:
            if held[:2] == (where, parent):
                return held[2]
            self._local.dir = None
            os.close(held[2])
        try:
            fd = longpath.open_dir(where, longpath.SEARCH_FLAGS, parent)[0]
        except FileNotFoundError:  # (its directory's path: the directory, or one above it, moved or deleted)
            raise longpath.Replaced(where) from None
        self._local.dir = (where, parent, fd)
        return fd

    def _open(self, path: bytes, name: bytes, parent: tuple[int, int], flags: int) -> int:
        return os.open(name, flags, dir_fd=self._dir_fd(path, name, parent))

    def read_file(self, path: bytes, name: bytes, parent: tuple[int, int]) -> FileResult:
        """The file's result; a problem of the file itself (unreadable, vanished) is in it. A failure to store
        a block raises (it is the repository's, and the block stays claimed: no later file may name it).
        ``parent``: the (dev, ino) of the directory the walk listed it in; the file is then opened relative to
        that very directory."""
        res = FileResult(node=None)
        if self.cancelled():
            res.error = "cancelled"
            return res
        try:
            # O_NONBLOCK: a file swapped for a FIFO since the listing must not hang the open (the type is
            # checked next; reads of a regular file never block anyway)
            try:
                fd = self._open(path, name, parent, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_NOATIME)
            except PermissionError:
                fd = self._open(path, name, parent, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except BlockingIOError:  # a file under a write lease (Samba): wait for the lease to be broken
                fd = self._open(path, name, parent, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            res.vanished = True
            return res
        except longpath.Replaced:
            res.error = DIR_GONE
            return res
        except OSError as exc:
            if exc.errno in MACHINE_LIMITS:  # this machine's limits, not the file's:
                raise  # the backup fails (exit 1), never a snapshot missing the files that could not be opened
            # ELOOP: O_NOFOLLOW met a symlink (`ln -sfn`, a deploy's `current`); ENXIO, ENODEV: a socket, a device
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
                res.replaced_by = self._kind_now(path, name, parent)
                if res.replaced_by is not None:
                    return res
            res.error = exc.strerror or str(exc)
            return res
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                res.replaced_by = _kind(st.st_mode)
                return res
            started = time.time_ns()
            node = node_from_stat(name, st)
            node.xattrs, res.note = read_xattrs(fd)
            if res.note is not None:
                node.ctime_ns = 0  # (not stored: the next backup must not take it as unchanged, and warns again)
            blocks: list[bytes] = []
            chunks = None
            if st.st_size < self.repo.config.chunker.min_size:
                small = self._read_small(fd, st.st_size)
                if small is not None:
                    chunks = [small]
                else:  # it grew past the small-file buffer while we looked: chunk it like a big one
                    os.lseek(fd, 0, os.SEEK_SET)
            zero = None
            if chunks is None:  # (a file growing while read: at most twice its size plus 64 MiB, then a warning)
                chunker = self.repo.chunker
                zero = chunker.zero_chunk()
                # (fewer blocks allocated than a zero chunk's worth short of its size: it has holes)
                sparse = st.st_blocks * 512 + len(zero) <= st.st_size
                chunks = chunker.cut_fd(fd, limit=2 * st.st_size + GROWTH, sparse=sparse)
            for chunk in chunks:
                if not len(chunk):
                    continue
                if self.cancelled():
                    res.error = "cancelled"
                    return res
                bid = self._zero_id(zero) if chunk is zero else self.repo.block_id(chunk)
                res.read += len(chunk)
                if self.claim(bid):
                    try:
                        stored = self.store(DATA, bid, chunk)
                    except OSError as exc:  # (not the file's: the pack writer's memory or /dev/zero)
                        raise StoreFailed(f"storing a block failed: {exc.strerror or exc}") from exc
                    if stored:  # (0: in the open pack already)
                        res.added += stored
                        res.blocks_added += 1
                blocks.append(bid)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns,
                                                                       st.st_ctime_ns) or res.read != st.st_size:
                res.changed_while_reading = True
            if racy(st.st_ctime_ns, started):
                node.ctime_ns = 0  # (the next backup reads it again: a change from now on may not show in its stat)
            node.size = res.read
            node.blocks = blocks
            res.node = node
        except OSError as exc:
            res.error = exc.strerror or str(exc)
        finally:
            os.close(fd)
        return res

    def _kind_now(self, path: bytes, name: bytes, parent: tuple[int, int]) -> str | None:
        """What ``name`` is now when it is no regular file (``_KINDS``), else None."""
        try:
            mode = os.stat(name, dir_fd=self._dir_fd(path, name, parent), follow_symlinks=False).st_mode
        except (OSError, longpath.Replaced):
            return None
        return None if stat.S_ISREG(mode) else _kind(mode)

    def _zero_id(self, zero: memoryview) -> bytes:
        """The block id of the chunker's zero chunk (a sparse file's holes): hashed once."""
        bid = getattr(self, "_zero", None)
        if bid is None:
            bid = self._zero = self.repo.block_id(zero)
        return bid

    def _read_small(self, fd: int, expected: int) -> memoryview | None:
        """Read a whole small file into this thread's reusable buffer (no allocation per file, so the heap
        does not fragment over 100,000 files); None if it does not fit (the file grew).

        A short read that ends exactly at the size fstat gave is taken as the end of the file (one read
        per file, not two); growth after that is caught by the second fstat in ``read_file``."""
        buf = getattr(self._local, "small", None)
        if buf is None:
            buf = self._local.small = memoryview(bytearray(self.repo.config.chunker.min_size + 1))
        n = 0
        while n < len(buf):
            want = len(buf) - n
            got = os.readv(fd, [buf[n:]])
            if got == 0:
                return buf[:n]
            n += got
            if n == expected and got < want:
                return buf[:n]
        return None
