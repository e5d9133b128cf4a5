"""Restore engine: plan by pack, fetch each pack (range) once, verify, write temp files, rename, metadata.

1. Plan, in batches of a few thousand files (memory stays bounded): walk the snapshot's trees
   (include/exclude applied), create directories, and map every needed block to the files and offsets
   that use it, grouped by pack.
2. Fetch: workers read each pack once (coalesced ranged reads), decrypt, decompress and check every block
   against its id, and write it with positioned writes into ``.vault-<random>.tmp`` files beside the final
   names (all-zero blocks are left as holes, so sparse files stay sparse). From a local repository the
   workers are forked processes, each given whole files (see ``forkpool``: threads would hand the GIL back
   and forth at every system call); from a remote one, threads (one per connection).
3. Finish: a complete file gets its size, mode, owner and mtime and is renamed over its final name; a file
   with a damaged or missing block is removed and named in the result. Then hardlinks, symlinks and special
   files, and last the directories' metadata (deepest first).

Names come from verified trees whose entries were validated (no ``/``, ``..``, NUL or duplicates), and
everything is done by name relative to a descriptor of its directory, opened from the target down with
O_NOFOLLOW (``dirhandles``): an existing symlink is never followed, not even one swapped in for a directory
while the restore runs, and temp files are opened with O_EXCL|O_NOFOLLOW. Metadata is set through descriptors
of what was created. Nothing is written outside the target.
"""

from __future__ import annotations

import collections
import copy
import contextlib
import errno
import itertools
import marshal
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import forkpool
from .backend.base import Backend
from .backend.counting import sum_stats
from .catalog import Catalog
from .errors import MACHINE_LIMITS, CatalogError, IntegrityError, VaultError, is_damage
from .dirhandles import DirHandles, split
from .excludes import Matcher
from .forkpool import ForkPool
from .fsmeta import (IS_ROOT, REPLACED, apply_metadata, apply_metadata_at, chmod_nofollow, current_umask, fold_key,
                     folding_names, make_special, rename_noreplace)
from .model import DIR, FILE, SOCKET, SYMLINK, Node, Snapshot
from .pack import PackEntry, pack_name
from .repository import Repository, Scratch

MAX_GAP = 256 * 1024
MAX_RANGE = 4 * 1024 * 1024
BATCHES_IN_FLIGHT = 2  # the next batch's fetches start while the last ones of the previous finish
BATCH_FILES = 4096  # files or blocks per batch: ~4 KB of plan a file (peak RSS of a 55,000-file restore: 104 -> 87 MiB
#                     vs 8192)
PROCESS_BATCH = 1024  # files and blocks, with worker processes: each has its own copy of its part (and copies
#                       pages of the parent's heap as it allocates): the bench restore's PSS, all processes
#                       together, was 117 MiB with 4096 and four parts queued, 96-102 with 2048, 89 with 1024
SLICE = 4 * 1024 * 1024  # worker processes: a pack's files are shared out by slices of this many bytes
FILE_COST = 16 * 1024  # the work of creating a file, in bytes written (for sharing work out evenly)
TICK = 0.25  # seconds between progress lines while worker processes are waited for (only with a progress line)
_OPEN_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


_Wanted = dict  # (offset, block id) -> (PackEntry, [(task, offset in the file)]): one pack's blocks to read
_Packs = dict  # pack id -> _Wanted


# a target file system that cannot hardlink a symlink, fifo or device (or no more links): made separately
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}


@dataclass(frozen=True)
class RestoreOptions:
    target: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    jobs: int = 0  # fetching threads (remote repositories: the connections)
    cpu_jobs: int = 0  # of those, how many decrypt/decompress/write at once (default: cores)
    fetches: int = 0  # of those, how many fetch a range at once (remote: the connections; 0: all of them)
    processes: int = 0  # worker processes writing the files (0, 1: ``jobs`` threads of this process; see forkpool)
    progress: Callable[[RestoreResult], None] | None = None  # called (this process only) as files are done


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    other: int = 0
    bytes_written: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (snapshot path, why)
    errors: list[tuple[str, str]] = field(default_factory=list)  # could not create / conflicts
    warnings: list[tuple[str, str]] = field(default_factory=list)
    requests: dict = field(default_factory=dict)  # backend requests and bytes, filled in by the api
    failed: dict[bytes, set[bytes]] = field(default_factory=dict)  # pack -> blocks failing their check (no JSON)
    catalog_problem: str | None = None  # the catalog, not the repository, explains the damage (api)
    passed_over: dict[str, str] = field(default_factory=dict)  # unreadable snapshots latest/--at chose over (api)


class _LazyDir:
    """A directory above paths --include may match: created when the first of them is restored."""
    __slots__ = ("path", "node", "parent", "made")

    def __init__(self, path: bytes, node: Node, parent: "_LazyDir | None"):
        self.path, self.node, self.parent = path, node, parent
        self.made: bool | None = None  # not tried yet / created / could not be


class _FileTask:
    __slots__ = ("path", "dir", "tmp", "node", "remaining", "problem", "local", "created", "mode_ok", "owner_ok", "end", "done",
                 "spare", "lock", "written", "folds")

    def __init__(self, path: bytes, node: Node, tmp: bytes | None = None, remaining: int | None = None,
                 problem: str | None = None):
        self.path, self.node = path, node
        self.dir = split(path)[0]  # the temp file's directory (snapshot path)
        self.tmp = tmp or _tmp_name()
        self.remaining = len(node.blocks) if remaining is None else remaining
        self.problem = problem
        self.local = False  # the problem is here (a write failed), not in the repository's data
        self.created = False  # the temp file exists and is ours (created with O_EXCL)
        self.mode_ok = False  # it was created with exactly node.mode (no chmod needed)
        self.owner_ok = False  # it was created with node's owner and group already (no chown needed)
        self.end = 0  # where the data written so far ends (all-zero blocks are left as holes)
        self.done = False  # renamed into place
        self.spare = False  # complete, but its name was taken: tmp waits for another name of its hardlinks
        self.lock = threading.Lock()
        self.written = 0  # data bytes written (holes not counted); in bytes_written once the file is in place
        self.folds = False  # its name may be another's of its directory on a case-insensitive file system


def _same_spelling(dfd: int, name: bytes) -> None:
    """Unless the entry the file system finds for ``name`` in directory ``dfd`` is listed under exactly that
    name: OSError -- a case-insensitive file system took it for an entry of another spelling."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)  # (dfd may be O_PATH: no listing)
    try:
        listed = os.listdir(fd)
    finally:
        os.close(fd)
    if os.fsdecode(name) in listed:
        return
    want = fold_key(name)
    other = next((n for n in listed if fold_key(os.fsencode(n)) == want), "another entry")
    raise OSError(errno.EEXIST, f"this file system takes its name for that of {other!r}, already there (names "
                                "that differ only in case)")


def _new_tmp_prefix() -> None:
    global _TMP_PREFIX
    _TMP_PREFIX = b".vault-" + secrets.token_hex(6).encode() + b"-"  # random per process; then a counter


_new_tmp_prefix()
os.register_at_fork(after_in_child=_new_tmp_prefix)  # a forked child must not reuse its parent's names
_tmp_numbers = itertools.count()


def _tmp_name() -> bytes:
    """A temp name, used in the final name's directory: no random draw (a system call) per file. Created with
    O_EXCL (or link/symlink/mknod, which fail on an existing name) and removed only by whoever created it."""
    return _TMP_PREFIX + b"%d.tmp" % next(_tmp_numbers)


_ZERO_RUN = 64 * 1024
_ZEROS = bytes(_ZERO_RUN)


def _data_runs(data: bytes | memoryview) -> list[tuple[int, int]]:
    """The (start, end) ranges of a block to write: 64 KiB pieces that are all zero are left out (they stay
    holes, so zero runs inside a block -- a disk image's free space around a little data -- stay sparse).
    ``bytes.startswith`` compares at memcmp speed and stops at the first nonzero byte."""
    n = len(data)
    if n < 2 * _ZERO_RUN:
        return [] if _all_zero(data) else [(0, n)]
    mv = memoryview(data)
    runs: list[tuple[int, int]] = []
    start = None
    for off in range(0, n, _ZERO_RUN):
        if _ZEROS.startswith(mv[off : off + _ZERO_RUN]):
            if start is not None:
                runs.append((start, off))
                start = None
        elif start is None:
            start = off
    if start is not None:
        runs.append((start, n))
    return runs


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite until every byte is written: on a full disk or at a file-size limit Linux may write part of it
    and return the shorter count without an error (the next call then raises)."""
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[n:], offset + n


def _all_zero(data: bytes | memoryview) -> bool:
    if not len(data) or data[0] or data[-1]:  # the common case, decided without a scan
        return not len(data)
    return (data if isinstance(data, bytes) else bytes(data)).count(0) == len(data)


def _slim(node: Node) -> tuple:
    """What a worker process needs of a file's node: not its block list (``_unslim`` makes the node again)."""
    return node.mode, node.uid, node.gid, node.size, node.mtime_ns, node.nlink, node.xattrs


def _unslim(meta: tuple) -> Node:
    mode, uid, gid, size, mtime_ns, nlink, xattrs = meta
    return Node(b"", FILE, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime_ns, nlink=nlink, xattrs=xattrs)


def _show(path: bytes) -> str:
    return os.fsdecode(path)


class Restorer:
    def __init__(self, repo: Repository, catalog: Catalog, snapshot: Snapshot, opts: RestoreOptions,
                 fresh_backend: "Callable[[], Backend] | None" = None):
        """``fresh_backend``: opens the repository's backend anew, for worker processes (a counting backend:
        their requests are added up in ``result.requests``); without it they use the inherited one."""
        self.repo, self.catalog, self.snap, self.opts = repo, catalog, snapshot, opts
        self._index_asked = False  # whether blocks the catalog lacked were looked for in the repository's index
        self._fresh_backend = fresh_backend
        self.result = RestoreResult()
        self._progress = opts.progress
        self._include = Matcher(opts.include)
        self._exclude = Matcher(opts.exclude)
        self._target = os.path.abspath(os.fsencode(opts.target))
        self._links: list[tuple[bytes, _FileTask]] = []  # (path, first task)
        self._spares: list[_FileTask] = []  # complete files whose name was taken (see _finish_file)
        self._others: list[tuple[bytes, Node]] = []  # symlinks and special files
        self._folding: set[bytes] = set()  # paths whose name may be a sibling's on a case-insensitive file system
        self._dirs: list[tuple[int, bytes, bytes]] = []  # directories made, to the catalog in batches (depth,
        #                                                 path, metadata): their metadata is set at the end
        self._dirs_held = False  # some are in the catalog's temporary table already
        self._at: DirHandles | None = None  # opened by run() once the target exists
        self._loosened: list[tuple[bytes, int, int, int]] = []  # (path, dev, ino, mode) of directories that were
        #                                                        read-only, made writable for the run
        self._lock = threading.Lock()
        self._cpu = threading.BoundedSemaphore(opts.cpu_jobs or max(2, os.cpu_count() or 2))
        # (more threads than connections: while one decrypts and writes what it fetched, another's request runs
        # -- with one thread per connection, each connection sat idle during its thread's CPU work)
        self._net = threading.BoundedSemaphore(opts.fetches) if opts.fetches else contextlib.nullcontext()
        self._bufs: list[Scratch] = []  # decryption buffers, one per CPU slot (list ops are atomic)
        self._tls = threading.local()  # a read buffer per fetching thread
        self._umask = current_umask()

    # --- plan ---------------------------------------------------------------------------------------
    def _wanted(self, path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this entry, descend into it): (False, True) for a directory that is not included itself
        but may hold included paths (created only when one of them is restored)."""
        if self._exclude and self._exclude.matches(path, is_dir):
            return False, False
        if not self._include or self._include.matches_or_parent(path, is_dir):
            return True, True
        return False, is_dir and self._include.could_match_below(path)

    def _make_dirs(self, lazy: "_LazyDir | None") -> bool:
        """Create the not yet created directories above an entry to restore (--include creates only the
        directories above what it matches); False when one of them cannot be (named once, in errors)."""
        chain = []  # from this directory up to the nearest one already tried (a loop: any depth)
        while lazy is not None and lazy.made is None:
            chain.append(lazy)
            lazy = lazy.parent
        ok = lazy is None or lazy.made
        for d in reversed(chain):
            ok = d.made = ok and self._make_dir(d.path, d.node)
        return ok

    def _make_dir(self, path: bytes, node: Node) -> bool:
        try:
            made = self._ensure_dir(path)
        except OSError as exc:
            self.result.errors.append((_show(path), f"cannot create directory: {exc.strerror}"))
            return False
        if made is None:
            self.result.errors.append((_show(path), "kept: something that is not a directory is in the way"))
            return False
        self._dirs.append((path.count(b"/"), path, marshal.dumps((_slim(node), made))))
        if len(self._dirs) >= 1024:
            self._flush_dirs()
        return True

    def _flush_dirs(self) -> None:
        if self._dirs:
            if not self._dirs_held:
                self.catalog.held_dirs_begin()
                self._dirs_held = True
            self.catalog.held_dirs_add(self._dirs)
            self._dirs = []

    def _ensure_dir(self, path: bytes) -> tuple[int, int, int] | None:
        """Make the directory at ``path``, or take the one there; its (dev, ino, owner): it must still be that one
        when its metadata is set at the end (``_finish_dirs``); None when something else is in the way."""
        parent, name = split(path)
        with self._at.at(parent) as dfd:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                made = True
            except FileExistsError:
                made = False
                if path in self._folding:  # (Photos and photos: never merged into one)
                    _same_spelling(dfd, name)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if (not made and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o300 != 0o300
                    and st.st_uid == os.geteuid()):
                # ours but not writable (a 0555 or 0000 directory an earlier restore made): writable for now, its
                # mode from the snapshot is set at the end -- or, when the run stops first, its own given back
                chmod_nofollow(dfd, name, stat.S_IMODE(st.st_mode) | 0o700)
                self._loosened.append((path, st.st_dev, st.st_ino, stat.S_IMODE(st.st_mode)))
        return (st.st_dev, st.st_ino, st.st_uid) if stat.S_ISDIR(st.st_mode) else None

    def _walk(self) -> Iterator[_FileTask]:
        """Walk the snapshot: create directories, note links/symlinks/specials, yield the files to fill."""
        first_of_inode: dict[tuple[int, int], _FileTask] = {}
        stack: list[tuple[bytes, bytes, _LazyDir | None]] = [(b"", self.snap.tree, None)]
        while stack:
            base, tid, lazy = stack.pop()
            try:
                nodes = self.catalog.tree(self.repo, tid)
            except CatalogError:  # this machine's cache, not the snapshot: the restore stops and says so
                raise
            except VaultError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno in MACHINE_LIMITS:
                    raise  # this machine's limits: every listing after it would fail too (a summary of 0 files)
                if is_damage(exc):
                    self.result.damaged.append((_show(base or b"/"), f"directory listing lost: {exc}"))
                else:
                    self.result.errors.append((_show(base or b"/"), f"directory listing unreadable: {exc}"))
                continue
            folds = folding_names([n.name for n in nodes])  # (README and readme: one name on FAT)
            for n in nodes:
                path = base + b"/" + n.name
                if folds and n.name in folds:
                    self._folding.add(path)
                want, descend = self._wanted(path, n.type == DIR)
                if not want:
                    if descend and n.subtree is not None:  # only what --include matches below it
                        stack.append((path, n.subtree, _LazyDir(path, n, lazy)))
                    continue
                if not self._make_dirs(lazy):
                    break
                if n.type == DIR:
                    if not self._make_dir(path, n):
                        continue
                    if descend and n.subtree is not None:
                        stack.append((path, n.subtree, None))
                elif n.type == FILE:
                    key = (n.dev, n.inode)
                    first = first_of_inode.get(key) if n.nlink > 1 else None
                    if first is not None and (first.node.size, first.node.blocks) == (n.size, n.blocks):
                        self._links.append((path, first))
                        continue  # (names of one inode with other contents -- a crafted tree -- stay apart)
                    task = _FileTask(path, n)
                    task.folds = path in self._folding
                    if n.nlink > 1 and first is None:
                        first_of_inode[key] = task
                    yield task
                else:
                    self._others.append((path, n))

    # --- fetch --------------------------------------------------------------------------------------
    def _plan(self, tasks: list[_FileTask], parts: int) -> list[tuple[list[_FileTask], _Packs]]:
        """Map every block of ``tasks`` to its pack, split into ``parts`` (one per worker process): a file goes
        whole to the part of the 4 MiB slice of a pack its first block is in (files next to each other in a
        pack share range reads), a new slice to the part with the least work so far. A file whose blocks are
        all missing (or which has none) is in no part."""
        ids = [b for t in tasks for b in t.node.blocks]
        where = self.catalog.lookup_many(ids)
        if len(where) < len(set(ids)) and not self._index_asked:  # (once a run: asked again, a real loss would
            self._index_asked = True                              # cost a read of every segment per batch)
            self.catalog.check_not_lacking(self.repo, set(ids) - where.keys(), "restore again")
        out: list[tuple[list[_FileTask], _Packs]] = [([], {}) for _ in range(parts)]
        owner: dict[tuple[bytes, int], int] = {}
        sized_wrong: dict[bytes, set[tuple]] = {}  # pack -> rows of the blocks of files whose sizes do not add up
        for task in tasks:
            offset = 0
            found = []
            for bid in task.node.blocks:
                loc = where.get(bid)
                if loc is None:
                    task.problem = task.problem or f"block {bid.hex()[:16]}: missing from the index"
                    task.remaining -= 1
                    continue
                found.append((loc[0], loc[1], bid, offset))
                offset += loc[1].raw_length
            if task.problem is None and offset != task.node.size:
                task.problem = f"its blocks hold {offset} bytes but the file is recorded as {task.node.size}"
                for pid, e, bid, _ in found:
                    sized_wrong.setdefault(pid, set()).add((bid, e.offset, e.length, e.raw_length, e.kind))
            if not found:
                continue
            part = 0
            if parts > 1:
                key = (found[0][0], found[0][1].offset // SLICE)
                part = owner.get(key, -1)
                if part < 0:
                    part = owner[key] = self._load.index(min(self._load))
                self._load[part] += task.node.size + FILE_COST
            mine, packs = out[part]
            mine.append(task)
            for pid, entry, bid, off in found:
                # keyed by id too: a (hostile) index placing two ids at one offset gets each checked on its own
                slot = packs.setdefault(pid, {}).setdefault((entry.offset, bid), (entry, []))
                slot[1].append((task, off))
        if sized_wrong:  # (the lengths are this machine's catalog's word: confirmed before a file is called damaged)
            self.catalog.check_in_index(self.repo, "restore again", sized_wrong)
        return out

    @staticmethod
    def _ranges(wanted: _Wanted) -> list[list]:
        """Coalesce a pack's needed blocks into ranges (gaps <= MAX_GAP, size <= MAX_RANGE): units of work."""
        entries = sorted(wanted.values(), key=lambda x: x[0].offset)
        out: list[list] = []
        for item in entries:
            e = item[0]
            if out:
                first, last = out[-1][0][0], out[-1][-1][0]
                if (e.offset - (last.offset + last.length) <= MAX_GAP
                        and e.offset + e.length - first.offset <= MAX_RANGE):
                    out[-1].append(item)
                    continue
            out.append([item])
        return out

    def _fetch_range(self, pid: bytes, items: list) -> None:
        start = items[0][0].offset
        end = max(e.offset + e.length for e, _ in items)  # entries may overlap (a hostile index): the furthest
        why, local = "", False
        try:
            with self._net:
                data = self._get(pack_name(pid), start, end - start)
        except VaultError as exc:  # damage (exit 20), or it could not be read here and now (an error, exit 1)
            data, why, local = None, f"pack {pid.hex()[:16]} unreadable: {exc}", not is_damage(exc)
        with self._cpu:  # network waits overlap freely; the CPU work never oversubscribes the cores (GIL)
            buf = self._bufs.pop() if self._bufs else Scratch()
            try:
                self._process_range(pid, items, start, data, why, buf, local)
            finally:
                self._bufs.append(buf)

    def _get(self, name: str, start: int, length: int) -> memoryview:
        """A range of a pack, read into this thread's reused buffer where the backend can (a local one:
        fresh 4 MiB buffers were 70 % of a restore's page faults), valid until the thread's next read."""
        get_into = getattr(self.repo.backend, "get_into", None)
        if get_into is None:
            return memoryview(self.repo.backend.get(name, start, length))
        buf = getattr(self._tls, "read", None)
        if buf is None or len(buf) < length:
            buf = self._tls.read = bytearray(max(length, MAX_RANGE + MAX_GAP))  # (a new one: never resized)
        return get_into(name, start, length, buf)

    def _process_range(self, pid: bytes, items: list, start: int, data: memoryview | None, why: str,
                       buf: Scratch, local: bool) -> None:
        """Decrypt and decompress into ``buf`` (one per CPU slot, reused: no fresh pages faulted in) and write."""
        for entry, users in items:
            plain, problem, runs = None, None, []
            if data is None:
                problem = why
            else:
                try:
                    plain = self.repo.open_block_into(entry, data[entry.offset - start : entry.offset - start + entry.length],
                                                      buf)
                    runs = _data_runs(plain)  # (once for all its users: a sparse file's zero block is in it
                except IntegrityError as exc:  # every 8 MiB -- 131,072 times a TiB, each scanned, each an open)
                    problem = f"damaged: {exc}"
                    with self._lock:
                        self.result.failed.setdefault(pid, set()).add(entry.block_id)
            for task, off in users:
                self._write(task, off, plain, problem, local and data is None, runs)

    def _write(self, task: _FileTask, offset: int, plain: bytes | None, problem: str | None, local: bool,
               runs: list[tuple[int, int]]) -> None:
        """``runs``: ``plain``'s data runs (``_data_runs``)."""
        fd = None
        with task.lock:
            if problem is not None:
                if task.problem is None or (task.local and not local):  # damage outranks a local error
                    task.problem, task.local = problem, local
            elif task.problem is None:
                try:  # the file's last block: its descriptor stays open for _finish_file (one open, not two)
                    fd = self._write_block(task, offset, plain, keep=task.remaining == 1, runs=runs)
                except OSError as exc:
                    task.problem, task.local = f"cannot write it: {exc.strerror}", True
            task.remaining -= 1
            done = task.remaining == 0
        if done:
            self._finish_file(task, fd)
        elif fd is not None:
            os.close(fd)

    def _create_mode(self, node: Node) -> int:
        """The mode a temp file is created with: the file's own when the umask leaves it whole, the owner may
        read and write it (later blocks reopen it; a read-only file gets its mode at the end) and it has no
        setuid/setgid/sticky bit -- then no chmod is needed if ``fstat`` confirms it (a default ACL or a
        filesystem without modes can differ; the directories stay 0700 until restore ends); else 0600 and a
        chmod at the end."""
        m = node.mode
        return m if m & 0o600 == 0o600 and m == m & 0o777 & ~self._umask else 0o600

    def _open_tmp(self, task: _FileTask) -> int:
        with self._at.at(task.dir) as dfd:
            if task.created:
                return os.open(task.tmp, _OPEN_FLAGS, dir_fd=dfd)
            mode = self._create_mode(task.node)
            fd = os.open(task.tmp, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, mode, dir_fd=dfd)
        task.created = True
        if mode == task.node.mode or IS_ROOT:  # one fstat may spare a chmod and (as root) a chown
            try:
                st = os.fstat(fd)
            except OSError:
                return fd
            task.mode_ok = mode == task.node.mode and st.st_mode & 0o7777 == mode
            task.owner_ok = (st.st_uid, st.st_gid) == (task.node.uid, task.node.gid)
        return fd

    def _write_block(self, task: _FileTask, offset: int, plain: bytes | memoryview, *,
                     runs: list[tuple[int, int]], keep: bool = False) -> int | None:
        """Write one block's data runs (``runs``: ``_data_runs(plain)``) at ``offset``; the descriptor is returned
        open when ``keep``. A block of zeros writes nothing and opens nothing (``_finish_file`` makes the file and
        gives it its size)."""
        if not runs:  # zero runs stay holes (the temp file is new: holes read as zeros)
            return None
        view = memoryview(plain)  # (slicing bytes would copy)
        fd = self._open_tmp(task)
        try:
            written = 0
            for a, b in runs:
                _pwrite_all(fd, view[a:b], offset + a)
                task.end = max(task.end, offset + b)
                written += b - a
            if written:
                with self._lock:
                    task.written += written
        except BaseException:
            os.close(fd)
            raise
        if keep:
            return fd
        os.close(fd)
        return None

    # --- finish -------------------------------------------------------------------------------------
    def _finish_file(self, task: _FileTask, fd: int | None = None) -> None:
        """Size, metadata and rename of a complete file (``fd``: its temp file, still open from the last write;
        closed here); a damaged one is removed and named."""
        if task.problem is not None:
            if fd is not None:
                os.close(fd)
            self._discard(task.dir, task.tmp, task.created)
            with self._lock:  # a local failure is an error (exit 1); damage is the repository's (exit 20)
                (self.result.errors if task.local else self.result.damaged).append((_show(task.path), task.problem))
            return
        ready = False
        try:
            if fd is None:
                fd = self._open_tmp(task)
            try:
                if task.end != task.node.size:  # a hole at the end (or a size the blocks do not fill)
                    os.ftruncate(fd, task.node.size)
                problems = apply_metadata(fd, task.node, mode_set=task.mode_ok, owner_set=task.owner_ok)
            finally:
                os.close(fd)
            ready = True
            self._rename(task.dir, task.tmp, task.path, task.folds)
        except OSError as exc:
            if ready and task.node.nlink > 1:
                task.spare = True  # complete: the hardlink group's other names may still take it
                with self._lock:
                    self._spares.append(task)
            else:
                self._discard(task.dir, task.tmp, task.created)
            with self._lock:
                self.result.errors.append((_show(task.path), f"cannot restore: {exc.strerror or exc}"))
            return
        task.done = True
        with self._lock:
            self.result.files += 1
            self.result.bytes_written += task.written  # (a damaged or failed file's partial data: not counted)
            for p in problems:
                self.result.warnings.append((_show(task.path), p))
        if self._progress is not None:
            self._progress(self.result)

    def _rename(self, tmp_dir: bytes, tmp: bytes, path: bytes, folds: bool = False) -> None:
        """Rename the temp file ``tmp`` in directory ``tmp_dir`` to snapshot path ``path``. ``folds``: another
        name of its directory may be this one's on a case-insensitive file system (README, readme): it then
        never replaces an entry of another spelling (restored a moment ago: a file lost without a word)."""
        parent, name = split(path)
        try:  # never replaces a directory, empty or not: rename(2) fails with EISDIR
            if tmp_dir == parent and not folds:  # (the usual case: one handle)
                with self._at.at(parent) as dfd:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                with self._at.at(tmp_dir) as src, self._at.at(parent) as dst:
                    if folds:
                        self._rename_folding(src, tmp, dst, name)
                    else:
                        os.rename(tmp, name, src_dir_fd=src, dst_dir_fd=dst)
        except IsADirectoryError:
            raise OSError(errno.EISDIR, "kept: a directory is in the way") from None

    @staticmethod
    def _rename_folding(src: int, tmp: bytes, dst: int, name: bytes) -> None:
        """``_rename`` of a name that may fold into another: replaces only an entry of exactly this name."""
        try:
            rename_noreplace(src, tmp, dst, name)
            return
        except FileExistsError:
            pass
        except OSError as exc:  # (no renameat2, or not on this file system: looked at first, then renamed)
            if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:
                os.stat(name, dir_fd=dst, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(tmp, name, src_dir_fd=src, dst_dir_fd=dst)
                return
        _same_spelling(dst, name)
        os.rename(tmp, name, src_dir_fd=src, dst_dir_fd=dst)

    def _discard(self, tmp_dir: bytes, tmp: bytes, created: bool) -> None:
        """Remove a temp file we made; if its directory is gone or was swapped (a symlink now), it stays."""
        if created:
            try:
                with self._at.at(tmp_dir) as dfd:
                    os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass

    def _finish_links(self) -> None:
        """The other names of each hardlinked file: linked to the first name restored. When that first name
        could not take the file (something in the way), the complete temp file goes to the next name that
        can, and the rest link to it; never to whatever was already at a name."""
        for path, first in self._links:
            if first.problem is not None:
                (self.result.errors if first.local else self.result.damaged).append((_show(path), first.problem))
                continue
            if not first.done and first.spare:
                try:
                    self._rename(first.dir, first.tmp, path, path in self._folding)
                except OSError as exc:
                    self.result.errors.append((_show(path), f"cannot restore: {exc.strerror or exc}"))
                    continue
                first.path, first.done, first.spare = path, True, False
                self.result.files += 1
                self.result.bytes_written += first.written  # (its data is in place, under this name)
                continue
            if not first.done:
                self.result.errors.append((_show(path), f"cannot create hardlink: {_show(first.path)} was not "
                                           "restored"))
                continue
            try:
                self._hardlink(first.path, path)
                self.result.files += 1
            except OSError as exc:
                if exc.errno in _NO_LINKS and exc.errno != errno.EXDEV:
                    self._copy_instead(first, path)
                    continue
                self.result.errors.append((_show(path), f"cannot create hardlink: {exc.strerror or exc}"))
        for task in self._spares:  # no other name took it (or none is being restored)
            if task.spare:
                task.spare = False
                self._discard(task.dir, task.tmp, True)

    def _copy_instead(self, first: _FileTask, path: bytes) -> None:
        """Another name of a hardlinked file, on a file system without hard links (FAT, exFAT): a copy of the
        restored first name (its data was lost otherwise), with a warning; named as an error when that fails."""
        parent = split(path)[0]
        tmp = _tmp_name()
        try:
            src_dir, src_name = split(first.path)
            with self._at.at(src_dir) as sdfd:
                src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sdfd)
            try:
                with self._at.at(parent) as dfd:
                    dst = os.open(tmp, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
                try:
                    while os.sendfile(dst, src, None, 1 << 24):
                        pass
                    problems = apply_metadata(dst, first.node)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self._rename(parent, tmp, path, path in self._folding)
        except OSError as exc:
            self._discard(parent, tmp, True)
            self.result.errors.append((_show(path), f"cannot create hardlink, nor a copy: {exc.strerror or exc}"))
            return
        self.result.files += 1
        self.result.bytes_written += first.written
        self.result.warnings.append((_show(path), f"restored as a copy of {_show(first.path)}: this file system "
                                                  "has no hard links"))
        self.result.warnings.extend((_show(path), p) for p in problems)

    def _hardlink(self, first: bytes, path: bytes) -> None:
        """``path`` made another name of the restored ``first`` (a temp name linked, then renamed over)."""
        parent = split(path)[0]
        tmp = _tmp_name()
        try:
            src_dir, src_name = split(first)
            with self._at.at(src_dir) as src, self._at.at(parent) as dst:
                os.link(src_name, tmp, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            self._rename(parent, tmp, path, path in self._folding)
            with self._at.at(parent) as dst:
                try:  # the name already was this inode: rename(2) did nothing
                    os.unlink(tmp, dir_fd=dst)
                except FileNotFoundError:
                    pass
        except OSError:
            self._discard(parent, tmp, True)  # (ours by its random name: a file system may fail after creating it)
            raise

    def _finish_others(self) -> None:
        """Symlinks, fifos and device nodes; the names of one hardlinked inode are linked to the first."""
        firsts: dict[tuple[int, int], tuple[bytes, tuple]] = {}
        for path, node in self._others:
            key = (node.dev, node.inode) if node.nlink > 1 else None
            same = (node.type, node.target, node.rdev, node.mode, node.uid, node.gid, node.mtime_ns)
            first = firsts.get(key) if key is not None else None
            if first is not None and first[1] == same:  # (other contents under one inode -- crafted -- stay apart)
                try:
                    self._hardlink(first[0], path)
                except OSError as exc:
                    if exc.errno not in _NO_LINKS:
                        self.result.errors.append((_show(path), f"cannot create hardlink: {exc.strerror or exc}"))
                        continue
                else:
                    self._count_other(node)
                    continue
                # (a file system that cannot link these: made on its own below, as before)
            parent = split(path)[0]
            tmp = _tmp_name()
            made = False
            try:
                with self._at.at(parent) as dfd:
                    if node.type == SYMLINK:
                        os.symlink(node.target or b"", tmp, dir_fd=dfd)
                    else:
                        make_special(dfd, tmp, node)
                    made = True
                    # (as made: a file system may give new entries another owner than this euid -- vfat or cifs
                    # with uid=, NFS squashing root)
                    st = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
                    problems = apply_metadata_at(dfd, tmp, node, (st.st_dev, st.st_ino, st.st_uid))
                self._rename(parent, tmp, path, path in self._folding)
            except OSError as exc:
                self._discard(parent, tmp, True)  # (even when the call failed: exFAT on FUSE creates, then fails)
                if node.type == SOCKET and not made:  # (never recreated: documented, a warning)
                    self.result.warnings.append((_show(path), f"not restored: {exc.strerror}"))
                elif made:  # (it could not take its name: what is there -- an immutable file, another user's
                    #          in a sticky directory -- stays, named, as for a file)
                    self.result.errors.append((_show(path), f"cannot restore: {exc.strerror or exc}"))
                else:  # (a file system without symlinks or fifos, a device node without root: named, exit 1)
                    self.result.errors.append((_show(path), f"cannot create {node.type}: {exc.strerror or exc}"))
                continue
            self._count_other(node)
            self.result.warnings.extend((_show(path), p) for p in problems)
            if key is not None and key not in firsts:
                firsts[key] = (path, same)

    def _count_other(self, node: Node) -> None:
        if node.type == SYMLINK:
            self.result.symlinks += 1
        else:
            self.result.other += 1

    def _finish_dirs(self) -> None:
        if self._dirs_held:
            self._flush_dirs()
            held = self.catalog.held_dirs_deepest_first()
        else:  # (few: never left this process)
            held = ((p, m) for _, p, m in sorted(self._dirs, key=lambda d: d[0], reverse=True))
        for path, meta in held:
            slim, made = marshal.loads(meta)
            node = _unslim(slim)
            node.type = DIR
            parent, name = split(path)
            try:
                with self._at.at(parent) as dfd:  # (a symlink swapped in for it is not followed)
                    problems = apply_metadata_at(dfd, name, node, tuple(made))
            except OSError as exc:  # the directory above is gone or was swapped for a symlink: left alone
                problems = [f"metadata not set: {exc.strerror or exc}"]
            for p in problems:
                if p == REPLACED:  # (moved away and something put in its place: what the restore wrote into it
                    #               went along -- the files are not at their paths in DIR)
                    self.result.errors.append((_show(path), "moved or replaced while the restore ran: what was "
                                                            "restored below it is not here (restore again)"))
                else:
                    self.result.warnings.append((_show(path), p))
            self.result.dirs += 1

    # --- run ---------------------------------------------------------------------------------------
    def _submit_batch(self, tasks: list[_FileTask], pool: ThreadPoolExecutor) -> list[Future]:
        [(_, packs)] = self._plan(tasks, 1)
        self._finish_empty(tasks)
        return [pool.submit(self._fetch_range, pid, items)
                for pid, wanted in packs.items() for items in self._ranges(wanted)]

    def _finish_empty(self, tasks: list[_FileTask]) -> None:
        for task in tasks:  # empty files and files whose blocks are all missing
            if task.remaining == 0:
                self._finish_file(task)

    # --- worker processes (see forkpool) --------------------------------------------------------------
    def _parts(self, tasks: list[_FileTask]) -> list[tuple[list[_FileTask], tuple]]:
        """A batch as one message per worker process: (its files, (files to fill, pack ranges to read))."""
        out = []
        for mine, packs in self._plan(tasks, len(self._load)):
            index = {id(t): i for i, t in enumerate(mine)}
            # each PackEntry as a plain tuple: a frozen slotted dataclass pickles through Python-level
            # __getstate__/__setstate__, 4-8x the cost of a tuple on both sides of the pipe
            ranges = [(pid, [((e.kind, e.block_id, e.offset, e.length, e.raw_length),
                              [(index[id(t)], off) for t, off in users]) for e, users in items])
                      for pid, wanted in packs.items() for items in self._ranges(wanted)]
            files = [(t.path, t.tmp, t.remaining, t.problem, _slim(t.node), t.folds) for t in mine]
            out.append((mine, (files, ranges)))
        self._finish_empty(tasks)
        return out

    def _child_init(self, threads: int) -> None:
        """In a worker process: a backend of its own (no sockets shared with the parent), one CPU slot."""
        if self._fresh_backend is not None:
            self.repo = copy.copy(self.repo)
            self.repo.backend = self._fresh_backend()
        self._cpu = threading.BoundedSemaphore(1)
        self._progress = None  # (the parent shows it, from the replies)
        self._bufs, self._tls = [], threading.local()
        self._child_pool = ThreadPoolExecutor(threads, thread_name_prefix="vault-restore") if threads > 1 else None

    def _run_part(self, msg: tuple) -> tuple:
        """In a worker process: fill and finish the files of one message; what the parent needs back."""
        files, ranges = msg
        tasks = []
        for path, tmp, remaining, problem, meta, folds in files:
            tasks.append(_FileTask(path, _unslim(meta), tmp, remaining, problem))
            tasks[-1].folds = folds
        self.result, self._spares = RestoreResult(), []
        units = [(pid, [(PackEntry(*entry), [(tasks[i], off) for i, off in users]) for entry, users in items])
                 for pid, items in ranges]
        if self._child_pool is None:
            for pid, items in units:
                if self._abort[0]:  # stopping: what is not filled is removed by the parent
                    break
                self._fetch_range(pid, items)
        else:
            for fut in [self._child_pool.submit(self._fetch_range, pid, items) for pid, items in units]:
                fut.result()
        r = self.result
        stats = self.repo.backend.inner.stats() if self._fresh_backend is not None else None
        return ([(t.done, t.spare, t.created, t.problem, t.local, t.written) for t in tasks],
                (r.files, r.bytes_written, r.errors, r.damaged, r.warnings, r.failed), stats)

    def _merge_part(self, mine: list[_FileTask], reply: tuple, worker: int) -> None:
        states, (files, written, errors, damaged, warnings, failed), stats = reply
        for task, (task.done, task.spare, task.created, task.problem, task.local, task.written) in zip(mine, states):
            if task.spare:
                self._spares.append(task)
        r = self.result
        r.files += files
        r.bytes_written += written
        r.errors += errors
        r.damaged += damaged
        r.warnings += warnings
        for pid, bids in failed.items():
            r.failed.setdefault(pid, set()).update(bids)
        if stats is not None:
            self._worker_requests[worker] = stats
        if self._progress is not None:
            self._progress(r)

    def _run_processes(self, processes: int, threads: int) -> None:
        """Fill the files in forked worker processes (no GIL shared between them); this process walks the
        snapshot, makes the directories, plans and hands out batches, and does the finishing steps."""
        self._worker_requests: dict[int, dict] = {}
        self._abort = mmap.mmap(-1, 1)  # shared with the workers: set on Ctrl-C, they read no further range
        pool = ForkPool(processes, self._run_part, lambda: self._child_init(threads))
        processes = len(pool)  # (fewer when the process limit stopped the forks: `ulimit -u`)
        self._load = [0] * processes
        queued: list[collections.deque] = [collections.deque() for _ in range(processes)]
        in_hand: list[_FileTask] = []
        try:
            def top_up() -> None:
                """Each worker two parts ahead (the first of ``queued[i]`` are sent): it never waits for this
                process to notice it is done. Sent by writer threads (a part may be bigger than a socket's
                buffer; this thread must go on taking replies in). A worker with nothing left takes a part not
                sent yet from another (at the end, one worker had ~0.5 s more to do than the other)."""
                for i, q in enumerate(queued):
                    if not q:  # idle with nothing planned: the last unsent part of the most loaded one
                        donor = max(range(len(queued)), key=lambda k: len(queued[k]) - pool.busy[k])
                        if len(queued[donor]) > pool.busy[donor]:
                            q.append(queued[donor].pop())
                    while pool.busy[i] < min(2, len(q)):
                        pool.send_later(i, q[pool.busy[i]][1])

            tick = self._progress if getattr(self._progress, "enabled", True) else None  # (as the archiver's)

            def pump(block: bool) -> None:
                top_up()
                got = pool.receive(0 if not block else TICK if tick is not None else None)
                while block and got is None and tick is not None and any(pool.busy):
                    tick(self.result)  # (the progress line: shown, and its seconds moving, while a big file is done)
                    got = pool.receive(TICK)
                while got is not None:
                    i, reply = got
                    self._merge_part(queued[i].popleft()[0], reply, i)
                    top_up()
                    got = pool.receive(0)

            def submit(batch: list[_FileTask]) -> None:
                in_hand[:] = batch  # (its empty files are finished here, in this process)
                for i, part in enumerate(self._parts(batch)):
                    if part[0]:
                        queued[i].append(part)
                pump(False)
                while sum(map(len, queued)) > 3 * processes:  # bounded plans in memory (a part in hand, one sent
                    #                                            ahead, one planned)
                    pump(True)

            self._walk_batches(submit, PROCESS_BATCH, tick=lambda: pump(False))  # (a worker done: its next part)
            while any(queued):
                pump(True)
        except BaseException as exc:  # Ctrl-C: the workers stop between two ranges (the abort flag); then every
            self._abort[0] = 1        # temp file not renamed into place is removed here, by name
            try:
                pool.close(kill=not isinstance(exc, KeyboardInterrupt))
            finally:  # killed (an error, a third Ctrl-C) part way through a file: its temp file goes too
                self._discard_unfinished([t for q in queued for mine, _ in q for t in mine] + in_hand)
            raise
        pool.close()
        self.result.requests = sum_stats(self._worker_requests.values())

    def _run_threads(self, jobs: int) -> None:
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="vault-restore")
        # batches in flight, oldest first: (their range fetches, their files)
        running: collections.deque[tuple[list[Future], list[_FileTask]]] = collections.deque()

        def submit(batch: list[_FileTask]) -> None:
            while len(running) >= BATCHES_IN_FLIGHT:
                for fut in running[0][0]:
                    fut.result()
                running.popleft()  # (only once all of its files are finished: Ctrl-C may come at any point)
            futs: list[Future] = []
            running.append((futs, batch))  # (before any of its files is touched: Ctrl-C may come at any point)
            futs += self._submit_batch(batch, pool)

        try:
            self._walk_batches(submit)
            for futs, _ in running:
                for fut in futs:
                    fut.result()
        except BaseException:
            self._abandon(pool, [t for _, batch in running for t in batch])
            raise
        pool.shutdown()

    def _abandon(self, pool: ThreadPoolExecutor, tasks: list[_FileTask]) -> None:
        """Stop after an error or Ctrl-C: fetches not started are cancelled, running ones finish (the CLI
        ignores a second Ctrl-C meanwhile), then the files in flight not renamed into place lose their temp
        files (a file some of whose fetches were cancelled never would be renamed)."""
        pool.shutdown(wait=True, cancel_futures=True)
        self._discard_unfinished(tasks)

    def _discard_unfinished(self, tasks: list[_FileTask]) -> None:
        """A restore stopping: the temp file of each of ``tasks`` and of the spares (complete, waiting for a
        name of their hardlink group) not renamed into place is removed (the names are ours: random, created
        O_EXCL; one never created is simply not there)."""
        for task in tasks + self._spares:
            if not task.done:
                self._discard(task.dir, task.tmp, True)

    def _walk_batches(self, submit, size: int = BATCH_FILES, tick=None) -> None:
        """The files to fill in batches of up to ``size`` files or blocks, each passed to ``submit``; ``tick``
        is called every 256 files meanwhile."""
        batch: list[_FileTask] = []
        blocks = 0
        for task in self._walk():
            batch.append(task)
            blocks += len(task.node.blocks)
            if tick is not None and not len(batch) % 256:
                tick()
            if len(batch) >= size or blocks >= size:
                submit(batch)
                batch, blocks = [], 0
        submit(batch)

    def _make_target(self) -> None:
        """--target and any missing directory above it, each made 0755 at most (less under the umask): under
        umask 000 (some cron daemons and service managers) they were 0777, and any local user could rename a
        root restore's top directory and plant their own."""
        try:
            missing, p = [], self._target
            while not os.path.lexists(p):
                missing.append(p)
                p = os.path.dirname(p)
            for d in reversed(missing):
                try:
                    os.mkdir(d, 0o755)
                except FileExistsError:  # (made meanwhile by another process)
                    pass
            if not os.path.isdir(self._target):
                raise FileExistsError
        except FileExistsError:  # a file, or a symlink to nowhere
            raise VaultError(f"--target {_show(self._target)} exists and is not a directory") from None
        except OSError as exc:
            raise VaultError(f"cannot create --target {_show(self._target)}: {exc.strerror or exc}") from None

    def run(self) -> RestoreResult:
        """Restore in batches of files, so memory stays bounded however large the snapshot: the walk of
        the next batch overlaps the fetching and writing of the previous one."""
        self._make_target()
        try:
            self._at = DirHandles(self._target)
        except OSError as exc:
            raise VaultError(f"cannot open --target {_show(self._target)}: {exc.strerror or exc}") from None
        try:
            return self._run()
        except BaseException:  # (Ctrl-C, an error that stops the run: no directory the user had made read-only
            self._give_back_modes()  # is left writable)
            raise
        finally:
            self._at.close()

    def _give_back_modes(self) -> None:
        """The modes of the read-only directories ``_ensure_dir`` made writable, each still that very directory."""
        for path, dev, ino, mode in reversed(self._loosened):
            parent, name = split(path)
            try:
                with self._at.at(parent) as dfd:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == (dev, ino) and stat.S_ISDIR(st.st_mode):
                        chmod_nofollow(dfd, name, mode)
            except OSError:
                pass  # (gone, or swapped for something else: left alone)

    def _run(self) -> RestoreResult:
        jobs = self.opts.jobs or max(2, os.cpu_count() or 2)
        processes = self.opts.processes
        forked = processes > 1 and forkpool.available()
        if forked:
            try:
                self._run_processes(processes, max(1, -(-jobs // processes)))
            except forkpool.ForkFailed:  # (not one worker could be forked, before any work: threads do it)
                forked = False
        if not forked:
            self._run_threads(jobs)
        self._finish_links()
        self._finish_others()
        self._finish_dirs()
        self.result.damaged.sort()
        self.result.errors.sort()  # (the workers' order is the timing's)
        return self.result
