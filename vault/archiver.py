"""Backup engine: walk + exclude + chunk + dedup + store -> snapshot.

The walk runs in the calling thread, depth-first in name order. Files whose size, mtime, ctime and inode
match the parent snapshot reuse its block list without being read; the others go, in batches, to workers
that read, chunk (FastCDC), hash, compress, encrypt and pack them (``filereader``): forked worker processes
with packs of their own for a local repository (``backup_workers``), else threads sharing this PackWriter.
A directory's tree is stored once all its entries are known. Order of writes: packs, then index segments naming them
(also as checkpoints during long runs), then the snapshot -- so a crash never leaves a snapshot pointing at
missing data, and an interrupted run's packs are reused by the next.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import sys
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import index as index_mod
from . import longpath
from .catalog import Catalog
from .errors import MACHINE_LIMITS, SourceNotFound, VaultError
from .backup_workers import BackupWorkers, Pending
from .claims import Claims
from .excludes import Matcher
from .filereader import DIR_GONE, FileReader, FileResult
from .entries import node as entry_node, split_ids
from .fsmeta import TYPE_OF, entry_path, node_from_stat, node_type, read_xattrs, stat_key, username
from .model import DEEPEST, DIR, FILE, SYMLINK, XATTRS_MARK, Node, Snapshot, Tree, holds_xattrs, replaced_by_repair
from .pack import DATA, TREE, PackEntry, sealed_size
from .packwriter import PackWriter, adopt_leftover_packs
from .repository import Repository

BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024
# to a worker process: bigger batches (~12 ms of work), so that the few batches queued for a worker outlast
# the main process's pauses (a tree pack, a checkpoint, a catalog flush) -- with 64 files a worker went
# idle for 1-4 ms after one batch in five
PROCESS_BATCH_FILES = 256
PROCESS_BATCH_BYTES = 16 * 1024 * 1024
MAX_PENDING_ITEMS = 100_000  # entries of walked directories waiting to be stored (bounds memory)
HARDLINKS_KEPT = 10_000  # hardlinked files whose read later names share (more: the oldest's are read again)
CHECKPOINT_SECONDS = 60.0
TICK = 0.25  # seconds between progress lines while a batch of files is waited for (only with a progress line)
CHECKPOINT_PACKS = 16
# ... or this many block entries, whichever comes first: the catalog takes ~5 us an entry, and the last
# checkpoint (after the last pack) is on the critical path -- 60,000 small-file entries cost it 0.3 s
CHECKPOINT_ENTRIES = 16_384


CACHEDIR_TAG = b"CACHEDIR.TAG"  # https://bford.info/cachedir/
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


@dataclass(frozen=True)
class BackupOptions:
    paths: list[str]
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    time: datetime | None = None
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    dry_run: bool = False
    force: bool = False  # read every file again, unchanged or not (the parent snapshot's blocks are not reused)
    jobs: int = 0
    uploaders: int = 0  # packs stored in the background at once (local: 0 = by the worker; S3: connections)
    skip_paths: list[str] = field(default_factory=list)  # repository and cache dirs, never backed up
    before_commit: Callable[[], None] | None = None  # raises to stop before the snapshot is written (lock check)
    adopt_leftovers: bool = True  # look for packs a killed run stored (``adopt_leftover_packs``: lists data/)
    on_file: Callable[[str, str], None] | None = None  # ("new" | "modified", path) for each file read (-v)
    exclude_if_present: list[str] = field(default_factory=list)  # a directory holding such a file: only it kept
    exclude_caches: bool = False  # the same for CACHEDIR.TAG files with their signature
    stdin_name: bytes | None = None  # back up what ``stdin_fd`` yields as the file /NAME (``Archiver.run_stream``)
    stdin_fd: int = 0
    stdin_check: Callable[[], None] = lambda: None  # raises at the end of the stream when its producer failed


@dataclass
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    bytes_processed: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    blocks_added: int = 0
    stored_so_far: int = 0  # bytes of the packs stored so far (the progress line, while files are still read)
    packs_adopted: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


class _Batch:
    """Files read by one worker job. ``submit`` is idempotent; ``result`` submits first if needed."""

    __slots__ = ("arch", "files", "bytes", "future")

    def __init__(self, arch: "Archiver"):
        self.arch, self.files, self.bytes, self.future = arch, [], 0, None

    def submit(self) -> None:
        if self.future is None:
            self.future = self.arch._submit_batch(self.files)

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def result(self) -> list[FileResult]:
        self.submit()
        tick = self.arch._progress if getattr(self.arch._progress, "enabled", True) else None
        while tick is not None and not self.future.done():  # (the progress line moves while a big file is read)
            tick(self.arch.stats)
            if isinstance(self.future, Pending):
                self.future.wait(TICK)
            else:
                wait_futures([self.future], TICK)
        return self.future.result()


class _Read:
    """A hardlinked file's read once done, all its later names need: not the whole batch it came in (held by
    the hardlink map, each batch of a tree of hardlinked files stayed in memory to the end of the run)."""

    __slots__ = ("res",)

    def __init__(self, res: FileResult):
        self.res = res

    def submit(self) -> None:
        pass

    def done(self) -> bool:
        return True

    def result(self) -> list[FileResult]:
        return [self.res]


class _Reuse:
    """An unchanged file: its Node (stat + the parent's block list) is built only if its directory's tree
    turns out to differ from the parent's; an unchanged directory reuses the parent's tree id as is. ``key``:
    its ``stat_key``, all a Node needs (not the stat result: ~300 bytes more a file, 100,000 files in one
    directory held at once)."""

    __slots__ = ("name", "key", "blocks", "xattrs", "unread")

    def __init__(self, name: bytes, key: tuple, blocks: bytes, xattrs: tuple | None, unread: bool = False):
        self.name, self.key, self.blocks, self.xattrs, self.unread = name, key, blocks, xattrs, unread


class _PendingDir:
    """A walked directory whose tree is not stored yet; ``node`` is its entry in the parent (None: root).

    ``same_as`` is the parent snapshot's tree id while every entry so far matches it exactly; ``subdirs``
    pairs each subdirectory's new Node with its old subtree id (compared once their trees are known)."""

    __slots__ = ("items", "node", "_checked", "same_as", "subdirs")

    def __init__(self, items: list, node: Node | None, same_as: bytes | None, subdirs: list):
        self.items, self.node, self._checked = items, node, 0
        self.same_as, self.subdirs = same_as, subdirs

    def ready(self) -> bool:
        """True when no entry waits for a worker (amortised: entries already seen done are skipped)."""
        while self._checked < len(self.items):
            it = self.items[self._checked]
            if type(it) is tuple and not it[0].done():  # (batch, index, first, path, name, ...: _save_dir)
                return False
            self._checked += 1
        return True


_VANISHED = (-1, -1)  # ``_open_dir``: the directory's path is gone (deleted, or a directory above it moved)


def _gone(parent_fd: int, name: bytes) -> bool:
    """Whether entry ``name`` is gone from the directory open as ``parent_fd`` (not merely from its path)."""
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


KEEP_OPEN = 64  # directory levels that keep their descriptor while a subdirectory is walked


def _not_ours(exc: OSError) -> OSError:
    """``exc`` when it is the source's (named, exit 3); raised when it is this machine's limits (too many open
    files, no memory): a snapshot missing whatever could not be opened must not pass for a backup that read
    all it could (exit 1, no snapshot; the packs written are adopted by the next run)."""
    if exc.errno in MACHINE_LIMITS:
        raise exc
    return exc


def _node(name: bytes, st: os.stat_result, xattrs: tuple | None, unread: bool) -> Node:
    """``node_from_stat`` with the entry's extended attributes; ctime 0 when they could not be stored, so that the
    next backup does not take the entry as unchanged (it reads, and names, them again)."""
    n = node_from_stat(name, st)
    n.xattrs = xattrs
    if unread:
        n.ctime_ns = 0
    return n


def _join(base: bytes, name: bytes) -> bytes:
    return base + name if base.endswith(b"/") else base + b"/" + name


def _display(path: bytes) -> str:
    return os.fsdecode(path)


def _skeleton(paths: list[bytes]) -> dict | None:
    """Nested dict of the path components to back up; None at a leaf means 'everything below'."""
    root: dict = {}
    for p in sorted(paths, key=len):
        parts = [c for c in p.split(b"/") if c]
        if not parts:
            return None  # "/" itself: everything
        node = root
        for i, part in enumerate(parts):
            if node.get(part, 0) is None:
                break  # an ancestor is already backed up whole
            if i == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})
    return root


def _source_path(given: bytes) -> bytes:
    """A PATH from the command line, absolute and normalised as written (``os.path.abspath``: symlinks on the
    way are followed and stored as directories) -- unless that text names another entry than the kernel does:
    ``LINK/`` and ``LINK/.`` name the directory a symlink points to (``LINK`` the link), ``LINK/..`` the parent
    of that directory and ``LINK/../NAME`` an entry there. Then the directories on the way are resolved as the
    kernel resolves them (``os.path.realpath``) and the entry goes in under that real path (a final symlink
    named without a slash stays a symlink)."""
    textual = os.path.abspath(given)
    if textual.startswith(b"//"):  # (Linux reads a leading // as /: one group of snapshots, one parent)
        textual = b"/" + textual.lstrip(b"/")
    parts = given.split(b"/")
    if not (given.endswith(b"/") or b"." in parts or b".." in parts):
        return textual
    try:
        try:
            kernel = os.lstat(given)  # (a trailing slash or /. makes the kernel follow a final symlink)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return textual
            # the kernel names nothing here (missing/.., FILE/., a loop): never the entry the text alone would
            # name -- the path as written, so that its error is reported
            return given if given.startswith(b"/") else os.path.join(os.getcwd().encode(), given)
        try:
            text = os.lstat(textual)
            if (text.st_dev, text.st_ino) == (kernel.st_dev, kernel.st_ino):
                return textual
        except FileNotFoundError:
            pass
        head, tail = os.path.split(given.rstrip(b"/"))
        if given.endswith(b"/") or tail in (b"", b".", b".."):
            return os.path.realpath(given)
        return os.path.join(os.path.realpath(head or b"."), tail)
    except (OSError, ValueError):
        return textual  # (missing or unreadable: reported with the path as written)


class Archiver:
    def __init__(self, repo: Repository, catalog: Catalog, opts: BackupOptions,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 progress: Callable[[BackupStats], None] | None = None, workers: BackupWorkers | None = None):
        """``workers``: processes forked before ``catalog`` was opened that read the files (see
        ``backup_workers``); without them, threads of this process do."""
        self.repo, self.catalog, self.opts = repo, catalog, opts
        self._now = now
        self._progress = progress
        self.stats = BackupStats()
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes, int, list[PackEntry]]] = []
        self._pending_entries = 0
        self._tree_rows: list[tuple[bytes, list[Node]]] = []
        self._tree_row_nodes = 0
        self._checked: list[bytes] = []  # parent trees whose blocks were all found in the index (catalog marks)
        self._tree_token = -2 - secrets.randbits(30)  # the trees this run caches: checked once its index is written
        # (dev, ino) of a file with more names -> (its read: batch, index; the walked size, mtime, ctime)
        self._hardlinks: dict[tuple[int, int], tuple[_Batch | _Read, int, tuple]] = {}
        self._depth = 0  # directory levels being walked (``_save_dir``)
        self._xattrs_known = False  # the parent snapshot's trees hold extended attributes (``run``)
        self._excludes = Matcher(opts.excludes)
        self._tags = {os.fsencode(t) for t in opts.exclude_if_present} | ({CACHEDIR_TAG} if opts.exclude_caches
                                                                            else set())
        self._named: set[bytes] = set()  # the PATHs given, absolute
        self._named_gone: set[bytes] = set()  # those deleted or replaced while the walk ran: not in the snapshot
        self._skip = set()
        for p in opts.skip_paths:
            try:
                st = os.stat(p)
                self._skip.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        self.packer = PackWriter(repo, self._on_pack, uploaders=max(0, opts.uploaders))
        self._workers = workers
        self._pool = None
        self._batch_files, self._batch_bytes = ((PROCESS_BATCH_FILES, PROCESS_BATCH_BYTES) if workers is not None
                                                else (BATCH_FILES, BATCH_BYTES))
        if workers is None:
            jobs = opts.jobs or os.cpu_count() or 2
            self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="vault-backup")
            self._inflight = threading.BoundedSemaphore(jobs * 4)  # batches queued or running
        self._batch = _Batch(self)
        # a first backup into an empty repository needs no index lookups at all (``lookups``)
        self._reader = FileReader(repo, workers.claims if workers is not None else Claims(), self._store,
                                  catalog.has_block, lookups=catalog.has_any_block())
        self._last_checkpoint = time.monotonic()
        self._dirs: collections.deque[_PendingDir] = collections.deque()
        self._pending_items = 0
        self._root: bytes = b""

    # --- dedup and storing --------------------------------------------------------------------------
    def _claim(self, bid: bytes) -> bool:
        """True when the caller must store this block (first time seen, not in the repository)."""
        return self._reader.claim(bid)

    def _store(self, kind: str, bid: bytes, data: bytes | memoryview) -> int:
        if self.opts.dry_run:  # what it would take: compressed and sealed, not stored
            return sealed_size(len(self.repo.compress(data)[1]))
        return self.packer.add(kind, bid, data)

    def _on_pack(self, pid: bytes, size: int, entries: list[PackEntry]) -> None:
        """Called by whichever thread stored a pack; writes an index checkpoint when one is due, so even
        one huge file or one huge directory is resumable after a crash."""
        with self._lock:
            self._pending.append((pid, size, entries))
            self._pending_entries += len(entries)
            self.stats.stored_so_far += size
        self._checkpoint()

    def _checkpoint(self, force: bool = False) -> None:
        """Write an index segment for the packs stored so far (so a crash loses little)."""
        with self._lock:
            due = (force or len(self._pending) >= CHECKPOINT_PACKS or self._pending_entries >= CHECKPOINT_ENTRIES
                   or (self._pending and time.monotonic() - self._last_checkpoint > CHECKPOINT_SECONDS))
            if not due:
                return
            pending, self._pending, self._pending_entries = self._pending, [], 0
            self._last_checkpoint = time.monotonic()
        if pending and not self.opts.dry_run:
            seg = index_mod.from_packs(pending)
            sid = self.repo.commit_index(seg, self.opts.before_commit)
            self.catalog.add_segment(sid, seg)

    def _adopt_leftover_packs(self) -> None:
        """Index the packs an interrupted run stored after its last checkpoint (``adopt_leftover_packs``), so
        their blocks are reused instead of uploaded again."""
        adopted = adopt_leftover_packs(self.repo, self.catalog, self.opts.before_commit)
        if adopted:
            self._reader.lookups = True
            self.stats.packs_adopted = adopted

    def _flush_tree_rows(self, force: bool = False) -> None:
        """Cache the new trees' entries in the catalog (main thread; batched)."""
        if not force and self._tree_row_nodes < 5000:
            return
        rows, self._tree_rows, self._tree_row_nodes = self._tree_rows, [], 0
        checked, self._checked = self._checked, []
        if not self.opts.dry_run:
            self.catalog.add_trees(self.repo, rows, pending=self._tree_token)
            if checked:
                self.catalog.mark_checked(checked)

    # --- files --------------------------------------------------------------------------------------
    def _submit_file(self, path: bytes, name: bytes, st: os.stat_result,
                     parent: tuple[int, int]) -> tuple["_Batch", int, bool]:
        """Queue a file for reading; returns (batch, index of its result, whether this name is the one its
        bytes are counted for: another name of a hardlinked file shares the first one's read). Small files
        travel in batches of up to BATCH_FILES / BATCH_BYTES (PROCESS_... for worker processes; one job, one
        future for many files: far less hand-off); a large file is a batch of its own."""
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            known = self._hardlinks.get(key)
            # (another name's read, its bytes counted once -- if the same file: an inode number freed by a
            # deletion during the run is given to the next file made at once, on ext4)
            if known is not None and known[2] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return known[0], known[1], False
        small = st.st_size < self.repo.config.chunker.min_size
        if self._batch.future is not None:  # (submitted early: a directory's tree was forced out, see _finalize)
            self._batch = _Batch(self)
        batch = self._batch if small else _Batch(self)
        slot = (batch, len(batch.files))
        batch.files.append((path, name, parent))
        batch.bytes += st.st_size
        if st.st_nlink > 1:
            self._hardlinks.pop(key, None)
            self._hardlinks[key] = (*slot, (st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            if len(self._hardlinks) > HARDLINKS_KEPT:  # (the oldest forgotten: its other names are read again)
                del self._hardlinks[next(iter(self._hardlinks))]
        if not small or len(batch.files) >= self._batch_files or batch.bytes >= self._batch_bytes:
            batch.submit()
            if small:
                self._batch = _Batch(self)
        return (*slot, True)

    def _keep_read(self, walked: tuple[int, int], batch: "_Batch", idx: int, res: FileResult) -> None:
        """The first name of a hardlinked file is done: the map keeps its result alone, not its batch."""
        known = self._hardlinks.get(walked)
        if known is not None and known[0] is batch and known[1] == idx:
            self._hardlinks[walked] = (_Read(res), 0, known[2])

    def _submit_batch(self, files: list[tuple[bytes, bytes, tuple[int, int]]]):
        """Hand a batch to the workers: a Future of its results (or ``backup_workers.Pending``)."""
        if self._workers is not None:
            return self._workers.submit(files, self._reader.lookups)
        self._inflight.acquire()
        return self._pool.submit(self._run_batch, files)

    def _run_batch(self, files: list[tuple[bytes, bytes, tuple[int, int]]]) -> list[FileResult]:
        try:
            return self._reader.read_files(files)
        finally:
            self._inflight.release()

    # --- directories --------------------------------------------------------------------------------
    def _parent_entries(self, tree_id: bytes | None) -> tuple[dict[bytes, tuple], bool, set[bytes]]:
        """The parent snapshot's entries of this directory by name (the catalog's validated tuples,
        ``entries.py``), whether the index lists that tree, and the ids of its files' blocks the index does not
        list (a pack lost and 'vault repair index' run: such a file is read again, so the new snapshot holds
        its data again instead of naming what is gone); ({}, False, set()) when there is none or it cannot be
        read (a missing or malformed parent tree only costs re-reading the files). The index is asked only
        for a tree not marked checked in the catalog (``Catalog.add_trees``): once per tree after an index
        rebuild, never on a plain re-run."""
        if tree_id is None:
            return {}, False, set()
        try:
            entries, indexed, checked = self.catalog.parent_entries(self.repo, tree_id)
        except VaultError:  # damaged, missing, unreadable (the backup goes on: a damaged repository needs one most)
            return {}, False, set()
        lost: set[bytes] = set()
        if not checked:
            ids = [b for e in entries if e[1][0] == FILE for b in split_ids(e[2])]
            lost = self.catalog.blocks_missing(ids) if ids else set()
            if not lost:
                self._checked.append(tree_id)
        return {e[0]: e for e in entries}, indexed and not lost, lost

    def _save_dir(self, path: bytes, parent_tree: bytes | None, only: dict | None, root_dev: int,
                  node: Node | None, at: tuple[int | None, bytes, bytes, tuple[int, int]] | None = None) -> bool:
        """Walk one directory: stat its entries, reuse unchanged files, submit the others to the workers,
        recurse into subdirectories. Its tree is stored later, by ``_finalize``, once every entry is known
        -- so the walk never waits for the workers at a directory boundary."""
        parent, same, lost = self._parent_entries(parent_tree)  # same: still identical to the parent's tree
        subdirs: list[tuple[Node, bytes | None]] = []
        if self._depth > DEEPEST:  # (refused past this depth, not wherever the recursion limit happens to fall)
            raise VaultError(f"a directory tree nests more than {DEEPEST:,} levels deep (counted from /): not "
                             f"supported ({_display(path[:200])}...)")
        may_vanish = at is not None and only is None and node is not None and path not in self._named
        here, names, fd, listed_at = self._open_dir(path, only, None if node is None else (node.dev, node.inode),
                                                    may_vanish)
        if here is _VANISHED:
            if self._gone_from_parent(*at):  # (deleted since its parent was listed: as if listed a moment later)
                self.stats.warnings.append((_display(path), "deleted while the backup ran: not in the snapshot"))
                return False
            # still in its parent: its path failed because a directory above it was moved meanwhile
            self._error(path, "a directory above it was moved while the backup ran: its entries are not in the "
                              "snapshot")
            here = None
        if only is None and fd is not None and self._tags and names:
            names = self._tagged(fd, path, names)
        self._depth += 1
        items: list[Node | tuple[Future, bytes, bytes]] = []
        force = self.opts.force
        # (the loop below runs once per entry of the tree: what it looks up every time is fetched here once)
        excludes = self._excludes if only is None and self._excludes else None
        named_paths, base = self._named, (path if path.endswith(b"/") else path + b"/")
        lstat = os.stat
        try:
            for name in names:
                child = base + name
                if fd is None:  # (let go before a deep subdirectory: opened again, proved the same directory)
                    fd = self._reopen(path, here)
                    if fd is None:
                        same = False
                        break
                try:  # (_stat_at, its common case inline: all but symlinks, one call per entry)
                    st = lstat(name, dir_fd=fd, follow_symlinks=False)
                    target = st_dir = None
                    t = TYPE_OF.get(st.st_mode & 0o170000)  # (fsmeta.node_type inline: S_IFMT)
                    if t == SYMLINK:
                        st, target, st_dir = self._symlink_at(fd, path, name, st)
                except OSError as exc:
                    st = exc
                if isinstance(st, OSError):
                    if not isinstance(st, FileNotFoundError):
                        self._error(child, _not_ours(st).strerror or str(st))
                    elif only is not None:
                        self._error(child, "no such file or directory")
                        self._named_gone.update(p for p in self._named if p == child or p.startswith(child + b"/"))
                    continue
                if t == SYMLINK:
                    t = node_type(st.st_mode)  # (it stopped being a symlink before readlink: what it now is)
                if t is None:
                    continue
                via_link = False
                if st_dir is not None:
                    # a symlink on the way to a PATH named below it (/bin -> usr/bin for /bin/true): followed, as
                    # the kernel follows it for that PATH, and stored as the directory it leads to
                    st, t, via_link = st_dir, DIR, True
                # a PATH named on the command line is never excluded (at the top or inside another PATH), nor are
                # the directories leading to it: an excluded one holds only the named PATHs below it
                excluded = (excludes is not None and child not in named_paths and excludes.matches(child, t == DIR))
                if excluded and (t != DIR or not self._named_below(child)):
                    continue
                old = parent.get(name)
                key = stat_key(t, st) if old is not None else None  # (a first backup has no parent to compare)
                if same and (old is None or old[1] != key):
                    same = False
                xattrs, unread = None, False  # (a regular file's: read by its worker, or carried over below; a
                if t != FILE and not via_link:  # symlink on the way to a PATH is stored as its directory: none)
                    xattrs, unread = self._xattrs_at(fd, child, name, old, key)
                    if same and xattrs != old[3]:
                        same = False
                if self._depth > KEEP_OPEN and t == DIR:
                    os.close(fd)  # (no descriptor held per level deep down: 9,000 levels would run out of them)
                    fd = None
                if t == DIR:
                    if (st.st_dev, st.st_ino) in self._skip:
                        same = False
                        continue
                    sub = _node(name, st, xattrs, unread)
                    old_sub = old[2] if old is not None and old[1][0] == DIR else None
                    if same:
                        subdirs.append((sub, old_sub))
                    sub_only = only[name] if only is not None else None
                    if via_link and only is None and child not in self._named:  # only the PATHs named below it
                        sub_only = _skeleton(self._named_below(child))
                    named = only is None and child in self._named  # a PATH given inside another PATH
                    if excluded or (only is None and self.opts.one_file_system and st.st_dev != root_dev and not named):
                        # excluded, or another file system: left empty, except for the PATHs named below it
                        inner = self._named_below(child)
                        if inner:
                            self._save_dir(child, old_sub, _skeleton(inner), root_dev, sub)
                        else:
                            sub.subtree = self._store_tree(Tree([]))
                    else:  # a named PATH is walked whole, on its own file system (-x stops at mounts below it)
                        dev = st.st_dev if (only is not None and sub_only is None) or named else root_dev
                        if not self._save_dir(child, old_sub, sub_only, dev, sub, (fd, name, path, here)):
                            same = False
                            continue
                    self.stats.dirs += 1
                    items.append(sub)
                elif t == FILE:
                    self.stats.bytes_processed += st.st_size
                    # same: every field matched just above; else the content is unchanged when the type, size,
                    # mtime, ctime and inode are (a chmod or chown changes only the tree)
                    if (old is not None and not force and (same or (old[1][0] == FILE and old[1][4:8] == key[4:8]))
                            and not (lost and not lost.isdisjoint(split_ids(old[2])))):
                        self.stats.files_unmodified += 1
                        xattrs = old[3]
                        if not self._xattrs_known:  # (the parent's has none stored: read them, not the data)
                            xattrs, unread = self._read_xattrs(fd, child, name)
                            same = same and xattrs == old[3] and not unread
                        items.append(_Reuse(name, key, old[2], xattrs, unread))
                    else:
                        same = False
                        # (was: None for a new name; the parent's blocks of a file it stored with ctime 0 -- read
                        # again only to be sure, see filereader.racy: the same blocks are no change; else False)
                        was = (None if old is None else old[2] if old[1][0] == FILE and (old[1][6] == 0 or force)
                               else False)  # (--force: read again; the same blocks are no change)
                        items.append((*self._submit_file(child, name, st, here), child, name, st.st_size,
                                      st.st_mtime_ns, was, (st.st_dev, st.st_ino), here))
                elif t == SYMLINK:
                    if isinstance(target, OSError):
                        self._error(child, _not_ours(target).strerror or str(target))
                        same = False
                        continue
                    n = _node(name, st, xattrs, unread)
                    n.target = target
                    if same and old[2] != n.target:
                        same = False
                    items.append(n)
                else:
                    items.append(_node(name, st, xattrs, unread))
        finally:
            self._depth -= 1
            if fd is not None:
                if listed_at is not None:
                    self._changed_since_listed(fd, path, listed_at)
                os.close(fd)
        if len(items) != len(parent):
            same = False  # entries were added, removed or skipped (an error, an exclude)
        self._dirs.append(_PendingDir(items, node, parent_tree if same else None, subdirs))
        self._pending_items += len(items)
        self._finalize(block=False)
        return True

    def _tagged(self, fd: int, path: bytes, names: list[bytes]) -> list[bytes]:
        """``names``, or only the tag files among them when the directory holds one (``--exclude-if-present``,
        ``--exclude-caches``: the directory and its tag are kept, the rest of its content is not -- restic's
        rule), and the way to any PATH named below it."""
        found = [n for n in names if n in self._tags and (n != CACHEDIR_TAG or self._cachedir_tag(fd, n))]
        if not found:
            return names
        keep = set(found) | {p.lstrip(b"/").split(b"/")[0] for p in self._named_below(path)}
        return [n for n in names if n in keep]

    @staticmethod
    def _cachedir_tag(fd: int, name: bytes) -> bool:
        """Whether ``name`` is a regular file starting with the Cache Directory Tagging signature (a symlink to one
        counts, as restic and tar count it: only its first bytes are compared; a FIFO or device never blocks)."""
        try:
            tag = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.fstat(tag).st_mode) and os.read(tag, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            return False
        finally:
            os.close(tag)

    def _open_dir(self, path: bytes, only: dict | None, expect: tuple[int, int] | None, may_vanish: bool = False
                  ) -> tuple[tuple[int, int] | None, list[bytes], int | None, tuple[int, int] | None]:
        """The directory's (dev, ino), its entry names in order, a descriptor of it, and its (mtime, ctime) as it
        was listed (None for ``only``, or when not listed; see ``_changed_since_listed``): every entry is then
        stat'ed relative to the directory itself (``_save_dir``), once it is proved to be the one its parent
        listed (``expect``) -- so nothing is ever looked up through a symlink swapped in for it or for a
        directory above it meanwhile, and nothing from outside the tree gets into the snapshot. ``only``: these
        names (the PATHs' skeleton) instead of a listing; such a directory needs only search permission
        (O_PATH), as the path to a PATH always did. On failure (named as an error): (None, [], None, None);
        deleted since its parent was listed, when ``may_vanish`` (not a PATH): (_VANISHED, [], None, None), no
        error."""
        try:
            fd, here, listed = longpath.open_dir(path, longpath.LIST_FLAGS if only is None else longpath.SEARCH_FLAGS,
                                                 expect)
        except longpath.Replaced:
            self._error(path, "replaced or moved while the backup ran: its entries are not in the snapshot")
            return None, [], None, None
        except FileNotFoundError as exc:
            if may_vanish:
                return _VANISHED, [], None, None
            self._error(path, _not_ours(exc).strerror or str(exc))
            return None, [], None, None
        except OSError as exc:
            self._error(path, _not_ours(exc).strerror or str(exc))
            return None, [], None, None
        if only is not None:
            return here, sorted(only), fd, None
        try:
            names = sorted(map(os.fsencode, os.listdir(fd)))  # (str for a descriptor: to bytes)
            return here, names, fd, (listed.st_mtime_ns, listed.st_ctime_ns)
        except OSError as exc:
            self._error(path, _not_ours(exc).strerror or str(exc))
            return here, [], fd, None

    def _changed_since_listed(self, fd: int, path: bytes, listed_at: tuple[int, int]) -> None:
        """A directory whose entries were added, removed or renamed while it was walked (its mtime or ctime moved
        on) is named: each entry is stat'ed at its own moment, so a directory renamed from a name not reached
        yet to one already passed (or swapped with another entry) was in no name of the snapshot, or in two,
        without a word."""
        try:
            st = os.fstat(fd)
        except OSError:
            return
        if (st.st_mtime_ns, st.st_ctime_ns) != listed_at:
            self.stats.warnings.append((_display(path), "changed while the backup ran (entries added, removed or "
                                                        "renamed meanwhile): the snapshot may lack or double some"))

    def _gone_from_parent(self, fd: int | None, name: bytes, path: bytes, here: tuple[int, int]) -> bool:
        """``_gone`` through the parent's descriptor; deep down, where the walk let it go (KEEP_OPEN), through
        one opened again and proved to be that parent (not there any more as itself: moved, not gone)."""
        if fd is not None:
            return _gone(fd, name)
        try:
            again = longpath.open_dir(path, longpath.SEARCH_FLAGS, here)[0]
        except (longpath.Replaced, OSError):
            return False
        try:
            return _gone(again, name)
        finally:
            os.close(again)

    def _reopen(self, path: bytes, here: tuple[int, int]) -> int | None:
        """A descriptor of the directory at ``path`` again, proved to be ``here`` (None, named, when not)."""
        try:
            return longpath.open_dir(path, longpath.SEARCH_FLAGS, here)[0]
        except longpath.Replaced:
            self._error(path, "replaced or moved while the backup ran: the rest of its entries are not in the "
                              "snapshot")
        except OSError as exc:
            self._error(path, f"{_not_ours(exc).strerror or exc} while the backup ran: the rest of its entries are not in "
                              "the snapshot")
        return None

    def _xattrs_at(self, fd: int, child: bytes, name: bytes, old: tuple | None, key: tuple | None
                   ) -> tuple[tuple | None, bool]:
        """(the extended attributes of a directory, symlink or special entry ``name`` of the directory open as
        ``fd``, whether they could not be stored): the parent snapshot's when its metadata (``key``, as stat gave
        it) is unchanged -- setting one changes the ctime -- else read. A regular file's are read by the worker
        that reads the file."""
        if old is not None and self._xattrs_known and old[1] == key:
            return old[3], False
        return self._read_xattrs(fd, child, name)

    def _read_xattrs(self, fd: int, child: bytes, name: bytes) -> tuple[tuple | None, bool]:
        """Entry ``name``'s extended attributes, read through the directory open as ``fd`` (not following a
        symlink), and whether they could not be (a warning). Such an entry is stored with ctime 0, so that the
        next backup does not take it as unchanged: it is read, and named, again."""
        xattrs, note = read_xattrs(entry_path(fd, name))
        if note is not None:
            self.stats.warnings.append((_display(child), note))
        return xattrs, note is not None

    def _symlink_at(self, fd: int, path: bytes, name: bytes, st: os.stat_result) -> tuple:
        """(lstat or the OSError, its target or OSError, for a symlink on the way to a PATH named below it the
        directory it leads to) of an entry that lstat found a symlink (``_save_dir``): its target, looked at
        again when it stopped being a symlink before readlink (replaced meanwhile: stored as what it now is)."""
        target = st_dir = None
        for attempt in range(3):
            if attempt:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    return exc, None, None
                if not stat.S_ISLNK(st.st_mode):
                    return st, None, None
            try:
                target = os.readlink(name, dir_fd=fd)
                break
            except OSError as exc:
                target = exc
                if exc.errno != errno.EINVAL:
                    break
        if isinstance(target, OSError) and target.errno == errno.EINVAL:
            target = OSError(errno.EINVAL, "replaced again and again while the backup ran: not in the snapshot")
        if self._named_below(_join(path, name)):
            try:
                st_dir = os.stat(name, dir_fd=fd)
            except OSError:
                st_dir = None
            if st_dir is not None and not stat.S_ISDIR(st_dir.st_mode):
                st_dir = None
        return st, target, st_dir

    def _finalize(self, block: bool) -> None:
        """Store the trees of walked directories whose entries are all known, oldest first.

        Directories are queued in post-order (children before parents), so a parent is stored after its
        subdirectories and can name their tree ids. Without ``block`` this stops at the first directory
        still waiting for a worker -- unless too many entries are queued (memory bound)."""
        while self._dirs:
            head = self._dirs[0]
            if not block and self._pending_items < MAX_PENDING_ITEMS and not head.ready():
                return
            self._dirs.popleft()
            self._pending_items -= len(head.items)
            tid = self._finish_dir(head)
            if head.node is None:
                self._root = tid
            else:
                head.node.subtree = tid
        if self._progress is not None:
            self._progress(self.stats)

    def _finish_dir(self, d: "_PendingDir") -> bytes:
        if d.same_as is not None and all(sub.subtree == old for sub, old in d.subdirs):
            return d.same_as  # nothing changed: the parent's tree, already in the repository
        nodes = []
        moved_away: collections.Counter[bytes] = collections.Counter()  # directories moved under files to read
        for it in d.items:
            if type(it) is _Reuse:
                node = entry_node((it.name, it.key, it.blocks, it.xattrs))
                if it.unread:
                    node.ctime_ns = 0  # (as _node: the next backup must not take it as unchanged)
                nodes.append(node)
                continue
            if isinstance(it, Node):
                nodes.append(it)
                continue
            batch, idx, first, child, name, seen, mtime, was, walked, here = it  # (was: see _save_dir; hardlinks
            #                                   share a read, counted for the ``first`` name only; walked: (dev, ino))
            res: FileResult = batch.result()[idx]
            read = None if res.node is None else (res.node.dev, res.node.inode)
            if not first and (read != walked or (res.node.size, res.node.mtime_ns) != (seen, mtime)):
                # the name that was read for this file was replaced or deleted after the walk: what was read
                # is another file's (or nothing), not this one's: read this name itself
                res, first = self._reader.read_files([(child, name, here)])[0], True
            elif read is not None and read != walked:
                self.stats.warnings.append((_display(child), "replaced while the backup ran: the new file is stored"))
            if first and res.node is not None and res.node.nlink > 1:
                self._keep_read(walked, batch, idx, res)
            if res.vanished or res.replaced_by:  # as if the listing had been taken a moment later (a name no
                # longer a file: the walk is over, it is left for the next backup, as a deleted one) -- but a
                # PATH given is an error, as one gone before the walk
                gone = ("deleted while the backup ran" if res.vanished else
                        f"replaced by {res.replaced_by} while the backup ran")
                if child in self._named:
                    self._error(child, f"{gone}: not in the snapshot")
                    self._named_gone.add(child)
                else:
                    self.stats.warnings.append((_display(child), f"{gone}: not in the snapshot" + (
                        "" if res.vanished else " (the next backup stores it)")))
                self.stats.bytes_processed -= seen
                continue
            if res.error == DIR_GONE:  # one line for the directory, not one per file in it (a `mv` of a
                moved_away[child.rpartition(b"/")[0] or b"/"] += 1  # directory of 600 files: 600 lines in the cron mail)
                if child in self._named:
                    self._named_gone.add(child)
                self.stats.bytes_processed -= seen
                continue
            if res.error is not None or res.node is None:
                self._error(child, res.error or "unreadable")
                self.stats.bytes_processed -= seen  # not in the snapshot
                continue
            self.stats.bytes_processed += res.read - seen  # it grew or shrank while being read
            node = res.node
            if node.name != name:  # a hardlink sharing another name's read
                node = dataclasses.replace(node, name=name)
            if res.changed_while_reading:
                self.stats.warnings.append((_display(child), "file changed while it was being read"))
            if res.note is not None:
                self.stats.warnings.append((_display(child), res.note))
            same_content = type(was) is bytes and b"".join(node.blocks) == was  # (read again to be sure)
            if was is None:
                self.stats.files_new += 1
            elif same_content:
                self.stats.files_unmodified += 1
            else:
                self.stats.files_changed += 1
            if self.opts.on_file is not None and not same_content:
                self.opts.on_file("new" if was is None else "modified", _display(child))
            if first:
                self.stats.bytes_read += res.read
                self.stats.bytes_added += res.added
                self.stats.blocks_added += res.blocks_added
            nodes.append(node)
        for where, n in moved_away.items():
            self._error(where, f"replaced, moved or deleted while the backup ran: {n:,} file(s) in it not in the "
                               "snapshot")
        tid = self._store_tree(Tree(nodes))
        self._flush_tree_rows()
        return tid

    def _store_tree(self, tree: Tree) -> bytes:
        data = tree.encode()
        tid = self.repo.block_id(data)
        if self._claim(tid):
            stored = self._store(TREE, tid, data)
            self.stats.bytes_added += stored
            self.stats.blocks_added += 1 if stored else 0
            self._tree_rows.append((tid, tree.nodes))
            self._tree_row_nodes += len(tree.nodes)
        return tid

    def _named_below(self, path: bytes) -> list[bytes]:
        """The PATHs named on the command line that lie strictly below ``path``, relative to it."""
        return [p[len(path):] for p in self._named if p.startswith(path + b"/")]

    def _error(self, path: bytes, message: str) -> None:
        self.stats.errors.append((_display(path), message))

    # --- the run ------------------------------------------------------------------------------------
    def find_parent(self, host: str, paths: list[str]) -> Snapshot | None:
        key = (host, tuple(sorted(paths)))
        snaps = self.catalog.snapshots()
        replaced = replaced_by_repair(snaps)  # (its files whose data was lost must be read again, not reused)
        candidates = [s for s in snaps if s.group_key() == key and s.id not in replaced]
        return candidates[-1] if candidates else None

    def run(self) -> Snapshot | None:
        t0 = time.monotonic()
        sys.setrecursionlimit(max(sys.getrecursionlimit(), DEEPEST + 1000))  # one frame per directory level
        abs_paths = []
        for p in self.opts.paths:
            b = _source_path(os.fsencode(p))
            try:
                longpath.lstat(b)  # (a PATH longer than PATH_MAX too)
            except FileNotFoundError:
                self._error(b, "no such file or directory")
            except OSError as exc:
                self._error(b, exc.strerror or str(exc))
            else:
                abs_paths.append(b)
        self._named = set(abs_paths)
        if not abs_paths:
            raise SourceNotFound("nothing to back up: " + "; ".join(f"{p}: {m}" for p, m in self.stats.errors))
        host = self.opts.host or socket.gethostname()
        paths = sorted({_display(p) for p in abs_paths})
        parent = self.find_parent(host, paths)
        # a parent written before vault stored extended attributes has none: unchanged entries' are read
        self._xattrs_known = parent is not None and holds_xattrs(parent)
        skeleton = _skeleton(abs_paths)
        if not self.opts.dry_run and self.opts.adopt_leftovers:
            self._adopt_leftover_packs()
        if self._workers is not None:
            self._workers.start(self._on_pack)

        def walk() -> bytes:
            self._save_dir(b"/", parent.tree if parent else None, skeleton, os.lstat(b"/").st_dev, None)
            self._finalize(block=True)
            if self._workers is not None:
                self._workers.finish()  # their last packs stored before ours (trees) and the last segment
            else:
                self._pool.shutdown(wait=True)
            return self._root

        return self._stored(t0, host, paths, parent, walk)

    def run_stream(self, name: bytes, fd: int, check_source: Callable[[], None] = lambda: None) -> Snapshot | None:
        """Back up what ``fd`` yields until its end (a pipe: ``backup --stdin``) as one file ``/name`` -- the
        snapshot's path; ``name`` may hold directories (``dumps/db.sql``: they are made, 0700). ``check_source``
        is called at the end of the stream, before anything is committed: it raises when the producer failed
        (``--stdin-from-command``), and no snapshot is written."""
        t0 = time.monotonic()
        host = self.opts.host or socket.gethostname()
        parts = name.strip(b"/").split(b"/")
        paths = [_display(b"/" + b"/".join(parts))]
        parent = self.find_parent(host, paths)
        old = None
        if parent is not None:
            try:
                tree_id: bytes | None = parent.tree
                for part in parts:
                    old = next((n for n in self.catalog.tree(self.repo, tree_id) if n.name == part), None) \
                        if tree_id is not None else None
                    tree_id = old.subtree if old is not None else None
            except VaultError:  # (an unreadable parent: the stream is new to it)
                old = None
        if not self.opts.dry_run and self.opts.adopt_leftovers:
            self._adopt_leftover_packs()

        def stream() -> bytes:
            os.set_blocking(fd, True)  # (a pipe a parent left non-blocking: EAGAIN whenever the producer is slow)
            blocks: list[bytes] = []
            for chunk in self.repo.chunker.cut_fd(fd):
                bid = self.repo.block_id(chunk)
                if self._claim(bid):
                    stored = self._store(DATA, bid, chunk)
                    if stored:
                        self.stats.bytes_added += stored
                        self.stats.blocks_added += 1
                blocks.append(bid)
                self.stats.bytes_read += len(chunk)
                self.stats.bytes_processed = self.stats.bytes_read
                if self._progress is not None:
                    self._progress(self.stats)
            check_source()
            now = time.time_ns()
            node = Node(parts[-1], FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(), size=self.stats.bytes_read,
                        mtime_ns=now, blocks=blocks)
            if old is None:
                self.stats.files_new = 1
            elif old.type == FILE and old.blocks == blocks:
                self.stats.files_unmodified = 1
            else:
                self.stats.files_changed = 1
            for part in reversed(parts[:-1]):  # (the directories above it, innermost first)
                node = Node(part, DIR, mode=0o700, uid=os.getuid(), gid=os.getgid(), mtime_ns=now,
                            subtree=self._store_tree(Tree([node])))
            return self._store_tree(Tree([node]))

        return self._stored(t0, host, paths, parent, stream)

    def _name_stored_packs(self) -> None:
        """A run stopped cleanly (Ctrl-C, SIGTERM) names the packs it stored since its last checkpoint in one more
        index segment: the next run reuses their blocks at once, instead of reading every such pack back whole
        to adopt it (up to 16 packs, ~270 MiB downloaded from S3). Only when every upload had been answered: a
        store that stalled would hold the stop for its retries (minutes; systemd's stop timeout is 90 s). A
        failure here, or a second interrupt, gives up quietly: those packs are adopted as a killed run's are."""
        try:
            self._checkpoint(force=True)
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - the run is stopping; nothing here may mask that
            pass

    def _stored(self, t0: float, host: str, paths: list[str], parent: Snapshot | None,
                produce: Callable[[], bytes]) -> Snapshot | None:
        """``produce`` stores a run's blocks and trees and returns its root tree; then the last pack, index
        segment and tree rows are stored, and the snapshot written (none for a dry run)."""
        stopped = False
        try:
            root = produce()
            if not self.opts.dry_run:
                self.packer.flush()
            self._checkpoint(force=True)
            self._flush_tree_rows(force=True)
            if not self.opts.dry_run:  # the last segment names every block this run stored: its trees are checked
                self.catalog.confirm_pending(self._tree_token)
        except KeyboardInterrupt:  # (Ctrl-C, SIGTERM)
            stopped = True
            raise
        finally:
            # stopped: an upload that gets no answer (a stalled store: 2 minutes of retries) is not waited for --
            # its pack, if it lands, names nothing and is adopted or removed later; the CLI exits without it
            if self._workers is not None:
                self._workers.close()
            else:
                self._pool.shutdown(wait=not stopped, cancel_futures=True)
            settled = self.packer.settled()  # (an upload left unanswered: the store may be stalled -- no more)
            self.packer.close(wait=not stopped)
            if stopped and settled and not self.opts.dry_run:
                self._name_stored_packs()
        self.stats_duration = time.monotonic() - t0
        if self.opts.dry_run:
            return None
        when = self.opts.time or self._now()
        when = when.astimezone(timezone.utc).replace(microsecond=when.microsecond)
        s = self.stats
        if self._named_gone and self._named - self._named_gone:  # (as PATHs gone before the walk: not named)
            paths = sorted({_display(p) for p in self._named - self._named_gone})
        snap = Snapshot(time=when, host=host, paths=paths, tree=root, tags=sorted(set(self.opts.tags)),
                        username=username(), parent=parent.id if parent else None,
                        summary={"files_new": s.files_new, "files_changed": s.files_changed,
                                 "files_unmodified": s.files_unmodified, "dirs": s.dirs,
                                 "bytes_processed": s.bytes_processed, "bytes_added": s.bytes_added,
                                 "errors": len(s.errors), "duration_s": round(self.stats_duration, 3),
                                 XATTRS_MARK: root.hex()})  # (its trees hold every entry's extended attributes)
        if self.opts.before_commit is not None:
            self.repo.commit_snapshot(snap, self.opts.before_commit, "backup")
        else:
            self.repo.save_snapshot(snap)
        self.catalog.add_snapshot(snap)
        return snap

