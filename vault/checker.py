"""Verification: structure, and optionally data -> one damage report naming objects, snapshots and files.

Structure (always): every index segment and snapshot decrypts and matches its name, every tree reachable
from a snapshot loads and verifies, every block a file or tree references is in the index, and every indexed
pack exists with the size the index records. Data (``--read-data`` or a subset): each pack is read whole,
its SHA-256 checked against its name, its header decrypted and compared with the index, and every block
decrypted, decompressed and checked against its id. Packs no index names are leftovers of an interrupted
backup: reported as info, not damage.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import forkpool
from .backend.base import confirmed_size
from .backend.counting import sum_stats
from .catalog import Catalog
from .errors import CatalogError, IntegrityError, ObjectNotFound, UsageError, VaultError, is_damage
from .entries import entry, split_ids
from .forkpool import ForkPool
from .model import DIR, FILE, Tree, replaced_by_repair
from .pack import PackEntry, header_length, header_rows, pack_name, sealed_header
from .repository import MAX_SEGMENT_STORED, Repository, Scratch


MAX_SIZE_MISMATCHES = 10_000  # files whose size their blocks contradict, named in one report (more: the next)
READ_PIECE = 4 * 1024 * 1024  # a local pack is read (and hashed, and its blocks checked) this much at a time


@dataclass
class Damage:
    object: str  # e.g. "data/ab/ab12...", "block 1f2e...", "snapshots/...", "index/..."
    problem: str  # missing, wrong size, hash mismatch, authentication failed, ...
    snapshots: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"object": self.object, "problem": self.problem, "snapshots": self.snapshots, "files": self.files}


@dataclass
class _PackCheck:
    pid: bytes
    read: int = 0
    damage: list[tuple[str, str]] = field(default_factory=list)
    bad: dict[bytes, str] = field(default_factory=dict)


@dataclass
class VerifyReport:
    snapshots: int = 0
    trees: int = 0
    blocks_referenced: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    damage: list[Damage] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    coverage: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.damage


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``2GiB``, ``1.5G``, ``10GB``, ``4096``: bytes (K/M/G/T are binary; KB/MB/GB/TB decimal)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise UsageError(f"invalid size {text!r} (e.g. 500M, 2G, 10GB)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Subset:
    """Which packs ``--read-data-subset`` reads: the first ``percent`` % (least recently verified first), or
    slice ``piece`` = (n, m): the packs whose id falls in the n-th of m groups."""

    percent: float | None = None
    piece: tuple[int, int] | None = None


def parse_subset(text: str | None) -> Subset | None:
    """``P%`` -> Subset(percent=P), ``n/m`` -> Subset(piece=(n, m)); None for no subset."""
    if text is None:
        return None
    t = text.strip()
    try:
        if t.endswith("%"):
            p = float(t[:-1])
            if 0 < p <= 100:
                return Subset(percent=p)
        elif "/" in t:
            n, m = (int(x) for x in t.split("/", 1))
            if 1 <= n <= m:
                return Subset(piece=(n, m))
    except ValueError:
        pass
    raise UsageError(f"bad --read-data-subset {text!r}: use a percentage like 5% or n/m like 1/20")


_TREE_MISSING = "tree block missing from the index"


def whole_below(catalog: Catalog, repo: Repository, root: bytes,
                read_tree: Callable[[bytes], tuple[list | None, str | None]]) -> bool:
    """Whether every tree below ``root`` reads (``read_tree``: (entries, None), or (None, what is wrong)) and every
    file block they name is in the index: one walk (the catalog's cached trees where the index lists them), the
    block ids in the catalog's ``used`` table, which it empties first."""
    broken: list[bytes] = []

    def quiet(tid: bytes) -> list | None:
        entries, problem = read_tree(tid)
        if problem is not None:
            broken.append(tid)
        return entries

    marker = catalog.marker()
    marker.walk(root, lambda tids: catalog.iter_cached_or(repo, tids, quiet, indexed=True))
    marker.flush()
    return not broken and catalog.used_missing(limit=0)[0] == 0


class Checker:
    def __init__(self, repo: Repository, catalog: Catalog, read_data: bool = False,
                 subset: Subset | None = None, now: float | None = None, jobs: int = 0,
                 max_bytes: int | None = None, processes: int = 0,
                 fresh_backend: Callable[[], object] | None = None, piecewise: bool = False):
        """``processes`` > 1: packs are read by that many forked workers (a local repository), each opening
        the backend anew with ``fresh_backend`` (a retry-over-counting chain: its requests are counted into
        ``requests``). ``piecewise``: packs are read ``READ_PIECE`` bytes at a time (a local repository), else
        whole (one request each: a remote store)."""
        self.repo, self.catalog = repo, catalog
        self.progress: Callable[[VerifyReport], None] | None = None  # called as packs are read (this process)
        self.processes, self._fresh_backend, self.piecewise = processes, fresh_backend, piecewise
        self.requests: dict = {}
        self._failed: dict[bytes, set[bytes]] = {}  # pack -> its blocks the reads found bad (bounded by damage)
        self.max_bytes = max_bytes
        self.jobs = jobs or forkpool.cores()
        self._local = threading.local()  # per worker: a reusable decryption buffer
        self.read_data = read_data or subset is not None
        self.subset = subset
        self.now = time.time() if now is None else now
        self.report = VerifyReport()
        self._bad_blocks: dict[bytes, str] = {}  # block id -> problem
        self._bad_trees: dict[bytes, str] = {}
        self._tree_pool: ThreadPoolExecutor | None = None  # (remote: trees loaded side by side)
        self._bad_sizes: dict[tuple[bytes, int], int] = {}  # (a file's blocks, its recorded size) -> bytes they hold
        self._affected: dict[bytes, tuple[set[str], set[str]]] = {}  # block id -> (snapshots, files)

    def _damage(self, obj: str, problem: str) -> Damage:
        d = Damage(obj, problem)
        self.report.damage.append(d)
        return d

    def _check_packs(self) -> None:
        """Every indexed pack exists with its indexed size: the store's listing goes into a temporary table and
        the comparison is SQL, streamed (memory does not grow with the number of packs)."""
        cat = self.catalog
        cat.stored_begin()
        cat.stored_add(self.repo.list_packs())
        self.report.packs = cat.pack_count()
        wrong: list[tuple[bytes, int, int | None]] = []
        for pid, size, stored in cat.packs_not_stored():
            if stored is None:  # not listed: asked for by name before it is called missing (a listing can
                try:            # come back short; the pack is damage only if it is really gone)
                    stored = confirmed_size(self.repo.backend, pack_name(pid), size)
                except ObjectNotFound:
                    pass
                if stored == size:
                    continue
            wrong.append((pid, size, stored))
        # (the size, and that the pack exists, are the catalog's word: confirmed before the repository is blamed)
        if wrong:
            cat.check_in_index(self.repo, "verify again", sizes={pid: size for pid, size, _ in wrong})
        for pid, size, stored in wrong:
            if stored is None:
                self._mark_pack_blocks(pid, "pack missing")
                self._damage(pack_name(pid), "missing")
            else:
                self._mark_pack_blocks(pid, "pack has the wrong size")
                self._damage(pack_name(pid), f"wrong size: {stored} bytes, index says {size}")
        extra = len(cat.unindexed_packs())
        if extra:
            self.report.info.append(f"{extra} pack(s) not in any index (left by an interrupted backup, or "
                                    "damaged packs that 'vault repair' left out; 'vault prune' removes them)")
        counted = getattr(self.repo.backend, "remove_temp_files", None)  # (a local repository's, counted only)
        temps, size = counted(dry_run=True) if counted is not None else (0, 0)
        if temps:
            self.report.info.append(f"{temps} temp file(s), {size:,} bytes, of a write under way or of a killed run "
                                    "('vault prune' removes those of killed runs)")

    def _mark_pack_blocks(self, pid: bytes, problem: str) -> None:
        for e in self.catalog.pack_blocks(pid):
            self._bad_blocks.setdefault(e.block_id, problem)

    def _choose(self) -> Iterator[tuple[bytes, int]]:
        """The packs to read, streamed from the catalog, least recently verified first: all, a slice n/m, or the
        first P%; then at most --max-bytes."""
        # (a live cursor while mark_verified updates the same rows: safe because its ORDER BY makes SQLite sort
        # every row before the first comes back -- an index on verified_at would change that)
        usable = self.catalog.stored_packs_by_verification()
        limit = piece = None
        if self.subset is not None and self.subset.piece is not None:
            piece = self.subset.piece
        elif self.subset is not None:
            limit = max(1, math.ceil(self.catalog.stored_pack_count() * self.subset.percent / 100))
        taken = total = skipped = 0
        for pid, size in usable:
            if piece is not None and int.from_bytes(pid[:4], "big") % piece[1] != piece[0] - 1:
                continue
            if limit is not None and taken >= limit:
                break
            if self.max_bytes is not None and total + size > self.max_bytes:
                skipped += 1
                continue
            taken += 1
            total += size
            yield pid, size
        if skipped:
            self.report.info.append(f"--max-bytes: read {taken} packs ({total} bytes), {skipped} more were due; "
                                    "they are first in line next time")

    def _check_pack(self, pid: bytes, size: int, entries: list[PackEntry] | None = None) -> _PackCheck:
        """Read one pack and check it: its name (SHA-256), its header against the index (``entries``, sorted by
        offset; else from the catalog), every block. Runs in worker threads or processes: it only reads shared
        state. With ``piecewise`` the pack is read in pieces of about ``READ_PIECE`` bytes (whole blocks each)
        into one reused buffer and hashed as they come (memory, and pages faulted in, stay small); else whole,
        in one request (a remote store)."""
        res = _PackCheck(pid)
        name = pack_name(pid)
        if entries is None:
            entries = self.catalog.pack_blocks(pid)
        if getattr(self._local, "buf", None) is None:  # decrypted into reused buffers (no fresh pages each time)
            self._local.buf, self._local.read = Scratch(), bytearray()
        digest = hashlib.sha256()
        checked = 0  # (blocks checked so far: a pack gone before its header was read has none)
        try:
            if self.piecewise:
                header = self._header(name, size, res)
                pieces = self._pieces(name, size, entries)
            else:
                data = memoryview(self.repo.backend.get(name, 0, size))  # (as listed: a short body is caught)
                header = self._header(name, len(data), res, data)
                pieces = iter([(0, data, entries)])
            for start, view, todo in pieces:
                digest.update(view)
                res.read += len(view)
                for e in todo:
                    self._check_block(e, view, start, header, res)
                checked += len(todo)
        except VaultError as exc:
            if not is_damage(exc):  # not evidence against the pack (descriptors, permissions, the network)
                raise
            res.damage.append((name, f"unreadable: {exc}"))
            # (the pieces before the failure were checked: their blocks keep their verdict)
            res.bad.update((e.block_id, f"unreadable: {exc}") for e in entries[checked:] if e.block_id not in res.bad)
            return res
        if digest.digest() != pid:
            res.damage.append((name, "hash mismatch (content does not match its name)"))
        return res

    def _header(self, name: str, size: int, res: _PackCheck, data: memoryview | None = None) -> dict:
        """The pack's header entries by block id, as (offset, length) ({} and the damage noted when it cannot
        be read)."""
        try:
            if data is None:
                n = header_length(self.repo.backend.get(name, max(0, size - 4), 4), size)
                sealed = self.repo.backend.get(name, size - 4 - n, n)
                if len(sealed) != n:
                    raise IntegrityError("pack shorter than its index says")
            else:
                sealed = sealed_header(data)
            rows = header_rows(sealed, size, self.repo.cipher)
        except IntegrityError as exc:
            res.damage.append((name, f"header unreadable: {exc}"))
            return {}
        return {bid: (offset, length) for _, bid, offset, length, _ in rows}

    def _pieces(self, name: str, size: int, entries: list[PackEntry]) -> Iterator[tuple[int, memoryview, list]]:
        """(offset, bytes, the index entries starting in them) of the pack in order, covering every byte: a
        piece is extended to its last block's end (a block bigger than a piece is read alone)."""
        pos = i = 0
        while pos < size:
            end = min(size, pos + READ_PIECE)
            j = i
            while j < len(entries) and entries[j].offset < end:
                end = max(end, min(size, entries[j].offset + entries[j].length))
                j += 1
            if len(self._local.read) < end - pos:  # (a new buffer: the caller may still hold a view of the old one)
                self._local.read = bytearray(end - pos)
            view = self.repo.backend.get_into(name, pos, end - pos, self._local.read)
            if len(view) != end - pos:
                raise IntegrityError(f"pack shorter than its index says ({pos + len(view)} of {size} bytes)")
            yield pos, view, entries[i:j]
            pos, i = end, j
        for e in entries[i:]:  # (an index entry past the end: a malformed index)
            yield size, memoryview(b""), [e]

    def _check_block(self, e: PackEntry, view: memoryview, start: int, header: dict, res: _PackCheck) -> None:
        if header and header.get(e.block_id) != (e.offset, e.length):
            res.bad[e.block_id] = "index entry does not match the pack header"
            return
        if e.offset < start or e.offset + e.length > start + len(view):
            res.bad[e.block_id] = "index entry lies outside the pack"
            return
        try:
            self.repo.open_block_into(e, view[e.offset - start : e.offset - start + e.length], self._local.buf)
        except IntegrityError as exc:
            res.bad[e.block_id] = str(exc)

    def _read_packs(self, packs: Iterator[tuple[bytes, int]]) -> None:
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="vault-verify") as pool:
            while True:  # a window at a time: the list of packs is never held whole
                window = list(itertools.islice(packs, 4 * self.jobs))
                if not window:
                    break
                self._check_window(pool, window)

    def _check_window(self, pool: ThreadPoolExecutor, window: list[tuple[bytes, int]]) -> None:
        good: list[bytes] = []
        for res in pool.map(lambda pack: self._check_pack(*pack), window):
            self._take(res, good)
        self.catalog.mark_verified(good, self.now)

    def _take(self, res: _PackCheck, good: list[bytes]) -> None:
        """One pack's result into the report (and ``good`` when it is clean)."""
        if res.bad:
            self._failed[res.pid] = set(res.bad)
        for obj, problem in res.damage:
            self._damage(obj, problem)
        for bid, problem in res.bad.items():
            self._bad_blocks.setdefault(bid, problem)
        if res.read:
            self.report.packs_read += 1
            self.report.bytes_read += res.read
            if self.progress is not None:
                self.progress(self.report)
        if not res.damage and not res.bad:
            good.append(res.pid)

    def _catalog_agrees(self) -> None:
        """Blocks failed their check: first make sure this machine's catalog (a cache) is not what is wrong. A
        pack none of whose failures an index segment confirms is the catalog's doing; when every problem found
        is of that kind, CatalogError (exit 1: rebuild it), else the damage is reported as found (exit 20) with
        a note -- real damage is never hidden behind the catalog's."""
        if not self._failed:
            return
        wrong = self.catalog.unconfirmed(self.repo, self._failed)
        if not wrong:
            return
        what = (f"this machine's catalog disagrees with the repository's index about pack "
                f"{sorted(wrong)[0].hex()[:16]}" + (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))
        if set(self._failed) == wrong and not self._missing and all(
                d.object in {pack_name(p) for p in wrong} for d in self.report.damage):
            raise CatalogError(f"{what} (the catalog is damaged, not the repository): run 'vault catalog "
                               "rebuild', then verify again")
        self.report.info.append(f"{what}: the damage reported for it may be the catalog's; run 'vault catalog "
                                "rebuild' and verify again")

    def _check_index(self) -> None:
        """Every index segment in the store still matches its name (a segment damaged since this machine synced
        it must not pass because the catalog's copy is fine). Its SHA-256 is proof enough: the catalog's copy
        was decrypted and validated from exactly those bytes when synced (the session synced every segment
        listed; one that failed then is in the sync's problems)."""
        sids = self.repo.list_index()
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="vault-verify") as pool:
            for sid, problem in zip(sids, pool.map(self._index_problem, sids)):  # (a remote store: in parallel)
                if problem is not None:
                    self._damage(f"index/{sid}", problem)

    def _index_problem(self, sid: str) -> str | None:
        size = self.repo.listed_size("index", sid)  # (hashed a piece at a time: never held whole)
        if size is not None and size > MAX_SEGMENT_STORED:
            return f"{size:,} bytes, more than an index segment holds (damaged)"
        try:
            self.repo.check_stored(f"index/{sid}", sid, size)
        except VaultError as exc:
            if not is_damage(exc):
                raise
            return f"unreadable: {exc}"
        return None

    # --- worker processes (a local repository: see forkpool) ------------------------------------------
    def _walk_and_read(self, snaps: list, packs: Iterator[tuple]) -> None:
        """The walk in this process while forked workers read and check the packs, each kept two packs ahead: no
        GIL shared (in threads the two fought over it and took longer than one after the other); the catalog
        (SQLite: never used across a fork) stays here, each pack's index entries go with it. The damage the
        reads find is taken in after the walk, in the packs' order: the walk never depends on which finished
        first, and the report is the one threads give. ``packs``: (index segment id,) items, then (pack id, size)."""
        pool = ForkPool(self.processes, self._check_in_child, self._child_init)
        good: list[bytes] = []
        requests: dict[int, dict] = {}
        held: list[tuple[int, _PackCheck]] = []  # the packs with damage (clean ones are counted at once)
        last, left, sent = [0.0], [True], itertools.count()
        ahead: list[tuple | None] = [None] * len(pool)  # a message taken from ``packs``, not sent yet
        room = pool.send_buffer() // 2

        def pump(block: bool) -> bool:
            """Keep each worker two packs ahead (it never waits for this process to notice it is done; the second
            only when small enough to wait in the socket's buffer), take the replies in; False when all are read."""
            for i in range(len(pool)):
                while pool.busy[i] < 2:
                    if ahead[i] is None:
                        pack = next(packs, None) if left[0] else None
                        if pack is None:
                            left[0] = False
                            break
                        ahead[i] = ((next(sent), *pack) if len(pack) == 1 else  # (an index segment)
                                    (next(sent), *pack, self.catalog.pack_rows(pack[0])))
                    msg = ahead[i]
                    if pool.busy[i] and len(msg) == 4 and len(msg[3]) * 56 > room:  # (~51 bytes a row pickled)
                        break  # (a big one waits until the worker is idle: a send must never wait on it)
                    pool.send(i, msg)
                    ahead[i] = None
            got = pool.receive(None if block and any(pool.busy) else 0)
            while got is not None:
                i, (seq, res, requests[i]) = got
                if isinstance(res, tuple):  # (segment id, problem) of an index segment
                    if res[1] is not None:
                        held.append((seq, res))
                elif res.damage or res.bad:
                    held.append((seq, res))
                else:
                    self._take(res, good)
                if len(good) >= 256:
                    self.catalog.mark_verified(good, self.now)
                    good.clear()
                got = pool.receive(0)
            return left[0] or any(pool.busy) or any(a is not None for a in ahead)

        def loader(tids: list[bytes]):
            now = time.monotonic()
            if now - last[0] > 0.002:  # (between two batches of trees: a worker done gets its next pack)
                last[0] = now
                pump(False)
            return self._load_trees(tids)

        try:
            pump(False)
            self._walk_trees(snaps, loader)
            while pump(True):
                pass
        except BaseException:
            pool.close(kill=True)  # (verify writes nothing a kill could leave half done)
            raise
        pool.close()
        for _, res in sorted(held, key=lambda h: h[0]):
            if isinstance(res, tuple):
                self._damage(f"index/{res[0]}", res[1])
            else:
                self._take(res, good)
        self.catalog.mark_verified(good, self.now)
        self.requests = sum_stats(requests.values())

    def _child_init(self) -> None:
        """In a worker process: a backend of its own (no descriptors or sockets shared with the parent)."""
        if self._fresh_backend is not None:
            self.repo = copy.copy(self.repo)
            self.repo.backend = self._fresh_backend()
        # (the parent's SQLite connection is never used here: each pack's index entries come with it)

    def _check_in_child(self, msg: tuple) -> tuple:
        """In a worker process: check one pack; the result and this process's request counts so far."""
        if len(msg) == 2:  # (seq, index segment id)
            res: object = (msg[1], self._index_problem(msg[1]))
        else:
            _, pid, size, rows = msg
            res = self._check_pack(pid, size, [PackEntry(*row) for row in rows])
        return msg[0], res, (self.repo.backend.inner.stats() if self._fresh_backend is not None else {})

    def _load_snapshots(self) -> list:
        """The snapshots to walk; a repaired original (``vault repair`` wrote a complete replacement; the
        original is kept for what it still holds) is reported as info, not walked."""
        snaps = []
        # the snapshots the catalog synced (whose index segments it holds), each loaded and checked again; one
        # a backup commits while verify runs is left to the next verify (listed now, its index would be missing)
        for sid in [s.id for s in self.catalog.snapshots()]:
            try:
                snaps.append(self.repo.load_snapshot(sid))
            except VaultError as exc:
                if not is_damage(exc):
                    raise
                if isinstance(exc, ObjectNotFound) and self.catalog.let_go(self.repo, sid):
                    continue  # (forgotten since this run's sync: a forget runs beside verify, both shared)
                self._damage(f"snapshots/{sid}", f"unreadable: {exc}")
        self.report.snapshots = len(snaps)
        repaired = replaced_by_repair(snaps)
        self._repaired = [s for s in snaps if s.id in repaired]
        self._snaps = snaps
        return [s for s in snaps if s.id not in repaired]

    def _report_repaired(self) -> None:
        """An info line for each repaired original (not walked as damage): whether it still references lost
        data, or is whole again -- a later backup or a copy stored what it lost, and it restores whole. A walk
        of its own trees, after everything else (it empties the marker's tables), counting nothing as damage."""
        for snap in self._repaired:
            by = sorted(s.short_id for s in self._snaps if s.repaired_from == snap.id)
            as_ = f"as {', '.join(by)} (tagged 'repaired')" if by else "(tag 'repaired')"
            if self._whole(snap):
                self.report.info.append(f"snapshot {snap.short_id} was repaired {as_}, but the data it lost has "
                                        "been stored again since: it restores whole; forget whichever of the two "
                                        "you do not need")
            else:
                self.report.info.append(f"snapshot {snap.short_id} references lost data and was repaired {as_}; "
                                        "forget it when it is no longer needed")

    def _whole(self, snap) -> bool:
        return whole_below(self.catalog, self.repo, snap.tree, self._read_tree) and not (
            self._bad_blocks and self.catalog.used_contains(self._bad_blocks))

    def _walk_trees(self, snaps: list, loader=None) -> None:
        """Every tree reachable from a snapshot, once (walked ids in a catalog table, not in memory): it must
        load, authenticate and parse; the file blocks it names go into the catalog's ``used`` table, and
        those no index entry locates into ``_missing``."""
        cat = self.catalog
        marker = cat.marker(sizes=True)
        trees = 0
        try:
            for snap in snaps:
                trees += marker.walk(snap.tree, loader or self._load_trees)
        finally:
            if self._tree_pool is not None:
                self._tree_pool.shutdown(cancel_futures=True)
                self._tree_pool = None
        marker.flush()
        self.report.trees = trees
        self.report.blocks_referenced = cat.used_count()
        missing = set(cat.used_missing(limit=-1)[1])
        trees = {tid for tid, problem in self._bad_trees.items() if problem == _TREE_MISSING}
        if missing or trees:  # (the catalog's index is a cache: rows deleted from it are not the repository's damage)
            cat.check_not_lacking(self.repo, missing | trees, "verify again")
        self._missing.update(missing)
        for blocks, size, held in itertools.islice(cat.size_mismatches(), MAX_SIZE_MISMATCHES):
            self._bad_sizes[(blocks, size)] = held
        if self._bad_sizes:  # (the blocks' lengths are the catalog's word: confirmed before the repository is blamed)
            rows: dict[bytes, set[tuple]] = {}
            for pid, e in cat.lookup_many(b for blocks, _ in self._bad_sizes for b in split_ids(blocks)).values():
                rows.setdefault(pid, set()).add((e.block_id, e.offset, e.length, e.raw_length, e.kind))
            cat.check_in_index(self.repo, "verify again", rows)

    def _attribute(self, snaps: list) -> None:
        """Name the snapshots and files each damaged tree or block affects: a second walk, per snapshot (a
        shared subtree is walked for each), only when something referenced is damaged or missing."""
        if not (self._bad_trees or self._missing or self._bad_sizes
                or (self._bad_blocks and self.catalog.used_contains(self._bad_blocks))):
            return
        for snap in snaps:
            stack = [(b"", snap.tree)]
            while stack:
                base, tid = stack.pop()
                problem = self._bad_trees.get(tid)
                if problem is not None:
                    d = self._tree_damage(tid, problem)
                    if snap.short_id not in d.snapshots:
                        d.snapshots.append(snap.short_id)
                    d.files.append(os.fsdecode(base or b"/") + " (directory listing)")
                    # the listing is damaged in the repository: name what is below it from this machine's
                    # catalog when it holds the tree (sealed, validated when it was cached)
                    entries = self.catalog.cached_entries(self.repo, tid)
                else:
                    try:
                        entries = self.catalog.tree_entries(self.repo, tid)
                    except VaultError:
                        entries = None  # it loaded in the first walk; vanished since: the next verify reports it
                if entries is None:
                    continue
                for name, key, extra, _ in entries:
                    path = base + b"/" + name
                    if key[0] == DIR and extra is not None:
                        stack.append((path, extra))
                    elif key[0] == FILE:
                        held = self._bad_sizes.get((extra, key[4])) if self._bad_sizes else None
                        if held is not None:
                            d = self._tree_damage(tid, "records a file size its blocks do not hold")
                            if snap.short_id not in d.snapshots:
                                d.snapshots.append(snap.short_id)
                            text = (f"{os.fsdecode(path)} (its blocks hold {held} bytes, the file is recorded "
                                    f"as {key[4]})")
                            if text not in d.files:  # (a tree shared by snapshots is walked for each)
                                d.files.append(text)
                        for bid in split_ids(extra):
                            if bid in self._bad_blocks or bid in self._missing:
                                snaps_, files_ = self._affected.setdefault(bid, (set(), set()))
                                snaps_.add(snap.short_id)
                                files_.add(os.fsdecode(path))

    def _tree_damage(self, tid: bytes, problem: str) -> Damage:
        for d in self.report.damage:
            if d.object == f"tree {tid.hex()}":
                return d
        return self._damage(f"tree {tid.hex()}", problem)

    def _load_trees(self, tids: list[bytes]) -> Iterator[tuple[bytes, list | None]]:
        """The trees' entries (``entries.py``), each loaded from the repository, authenticated and validated;
        None (and the problem noted in ``_bad_trees``) for one missing from the index, in a damaged pack, or
        unreadable.

        When every pack is read afterwards (``_reads_all``), a tree this machine's catalog holds and the index
        lists is taken from there (one query for the batch): its entries were validated when cached and are
        sealed with a key derived from the repository's, and the pack read checks the tree block's bytes
        against the same id -- the repository's copy is proved as strictly, without decoding 7,000 trees
        twice (structure-only verify still loads them)."""
        if self._reads_all:  # not cached, or not indexed: "missing" in _load_tree
            return self.catalog.iter_cached_or(self.repo, tids, self._load_tree, indexed=True)
        if self.processes == 0 and self.jobs > 1 and len(tids) > 1:  # a remote store: one request per tree,
            # the batch's requests side by side (one after the other, an S3 copy with many snapshots took a
            # minute of round trips); ``map`` keeps their order
            if self._tree_pool is None:
                self._tree_pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="vault-trees")
            return zip(tids, self._tree_pool.map(self._load_tree, tids))
        return ((tid, self._load_tree(tid)) for tid in tids)

    def _load_tree(self, tid: bytes) -> list | None:
        entries, problem = self._read_tree(tid)
        if problem is not None:
            self._bad_trees[tid] = problem
        return entries

    def _read_tree(self, tid: bytes) -> tuple[list | None, str | None]:
        """(the tree's entries, None) or (None, what is wrong with it)."""
        loc = self.catalog.lookup(tid)
        if loc is None:
            return None, _TREE_MISSING
        if tid in self._bad_blocks:
            return None, self._bad_blocks[tid]
        try:
            return [entry(n) for n in Tree.decode(self.catalog.load_block(self.repo, loc)).nodes], None
        except CatalogError:
            raise
        except VaultError as exc:
            if not is_damage(exc):
                raise
            return None, f"unreadable: {exc}"

    def _check_keys(self) -> None:
        if self.repo.config_problem:  # (the sealed copy is in use: nothing read depends on the stored one)
            self._damage("config", self.repo.config_problem)
        for name, info in self.repo.list_keys():
            if info is None and name == self.repo.key_name:  # (its bytes changed where the key is not)
                self._damage(name, "key slot damaged (its content does not match its name), though this password "
                                   "opens it: add a key ('vault key add'), then remove this one ('vault key remove')")
            elif info is None and self.repo.slot_malformed(name):
                self._damage(name, "not a usable key slot (malformed: no password can open the repository with it; "
                                   "'vault repair index' removes it)")
            elif info is None:
                self._damage(name, "key slot damaged (its content does not match its name): its password may no "
                                   "longer open the repository; if it still does, add a key with it ('vault key "
                                   "add') and remove this one ('vault key remove'), else just remove this one")
            elif "unsupported" in info:
                self.report.info.append(f"{name}: not usable here: {info['unsupported']}; left alone")

    def _check_logs(self) -> None:
        """Every ``logs/`` record (what a forget, tag or repair let go) still opens: a damaged one leaves the
        snapshots it let go unknown to a machine that had not read it yet (it may call them lost), and stops
        ``repair --from-repo`` writing deleted manifests back from a copy. Small objects, read whole."""
        lids = self.repo.list_logs()
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="vault-verify") as pool:
            for lid, problem in zip(lids, pool.map(self.repo.log_problem, lids)):  # (a remote store: in parallel)
                if problem is not None:
                    self._damage(f"logs/{lid}", f"{problem}: this record of the snapshots a forget, tag or repair "
                                 "let go cannot be read (a machine that did not read it before may call them lost; "
                                 "repair --from-repo writes no deleted manifest back while it stays)")

    def run(self) -> VerifyReport:
        self._missing: set[bytes] = set()
        self._repaired: list = []
        self._snaps: list = []
        self._check_keys()
        self._check_logs()
        self._check_packs()
        snaps = self._load_snapshots()
        # the walk first, then the reads: run side by side in threads they fight over the GIL and take more
        # CPU and as long (measured on the bench corpus: 4.9 vs 4.5 s)
        self._reads_all = self.read_data and self.subset is None and self.max_bytes is None
        forked = self.read_data and self.processes > 1 and forkpool.available()
        if forked:
            try:
                self._walk_and_read(snaps, itertools.chain(((sid,) for sid in self.repo.list_index()),
                                                           self._choose()))
            except forkpool.ForkFailed:  # (not one worker could be forked, before any work: threads do it)
                forked = False
        if not forked:
            self._check_index()
            self._walk_trees(snaps)
            if self.read_data:
                self._read_packs(self._choose())
        self._catalog_agrees()
        if self._reads_all:  # trees walked from the catalog whose block the read found damaged
            for bid, problem in self._bad_blocks.items():
                if bid not in self._bad_trees and self.catalog.walked(bid):
                    self._bad_trees[bid] = problem
        self._attribute(snaps)
        for bid, (in_snaps, files) in sorted(self._affected.items()):
            problem = self._bad_blocks.get(bid) or "missing from the index"
            d = self._damage(f"block {bid.hex()}", problem)
            d.snapshots = sorted(in_snaps)
            d.files = sorted(files)
        self._report_repaired()
        self.report.coverage = self._coverage()
        return self.report

    def _coverage(self) -> dict:
        """How recently the packs were read (from this machine's catalog): what a verify-subset cron proves."""
        total, never, oldest = self.catalog.verification_summary()
        return {"packs": total, "packs_never_read": never,
                "all_read_within_days": None if never or oldest is None or not total
                else round((self.now - oldest) / 86400, 2)}
