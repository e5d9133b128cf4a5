"""Prune: delete what no snapshot references, repack mostly-empty packs. Runs under the exclusive lock.

1. Mark: walk every snapshot's trees; every tree id and file block id goes into a temporary SQLite table
   (memory stays flat). A tree that cannot be read, a referenced block that no index entry locates, or an
   indexed pack holding referenced blocks that is missing from the store makes prune refuse: it cannot know
   what is safe to delete, and deleting nothing is always safe.
2. Plan, per indexed pack, from the catalog (a block counts as live in the one pack the index locates it in):
   no live block -> delete; unused share above ``max_unused`` -> repack; else keep. Stored packs that no index
   segment lists are leftovers of interrupted runs -> delete.
3. Repack: read each such pack whole (one GET), authenticate every live block, store them again in new packs.
4. Rewrite the index: every segment that lists a removed pack is replaced by a segment that lists its surviving
   packs and names the old one as superseded; the new packs get segments of their own.
5. Delete the replaced (and already superseded) segments, then the removed packs, then abort unfinished
   multipart uploads. Readers ignore a segment that a present segment supersedes, so a kill at any moment
   leaves a repository where every snapshot restores: at worst leftovers that the next prune removes.
   Small segments (one per backup) are merged the same way once there are MERGE_AT of them.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import index as index_mod
from . import pack as pack_mod
from .catalog import Catalog
from .errors import CacheUnavailable, IntegrityError, ObjectNotFound, PermanentError, PruneRefused, VaultError
from .ids import ID_LEN
from .model import replaced_by_repair
from .pack import pack_name
from .packwriter import PackWriter
from .repository import Repository

SEGMENT_PACKS = 64  # packs listed per new index segment
SEGMENT_ENTRIES = 100_000  # and at most this many blocks, when small segments are merged
SMALL_SEGMENT = SEGMENT_PACKS // 4  # a segment listing fewer packs than this is merged with others ...
MERGE_AT = 32  # ... once there are this many (every backup writes one: a year of hourly ones is 8,800)


@dataclass
class PruneOptions:
    max_unused: float = 0.10  # repack a pack when more than this share of its bytes is unreferenced
    dry_run: bool = False
    workers: int = 2  # packs read at a time for repacking, parallel deletes
    ignore_snapshots: tuple[str, ...] = ()  # a dry run after a dry-run forget: as if these were gone


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    blocks_referenced: int = 0
    packs_total: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_kept: int = 0
    packs_unindexed_deleted: int = 0
    packs_written: int = 0
    packs_damaged_kept: int = 0
    blocks_repacked: int = 0
    bytes_total: int = 0
    bytes_deleted: int = 0  # bytes of the packs deleted (including repacked ones and leftovers)
    bytes_repacked_written: int = 0
    bytes_freed: int = 0  # net: deleted - written
    bytes_unused_kept: int = 0  # unreferenced bytes left in packs below the repack threshold
    segments_written: int = 0
    segments_merged: int = 0  # small segments replaced by fewer, larger ones
    segments_deleted: int = 0
    multipart_aborted: int = 0
    temp_files_removed: int = 0  # left by killed writers (local repositories)
    temp_bytes_removed: int = 0  # their space (in bytes_freed)
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["duration_s"] = round(self.duration_s, 2)
        return d


class _PackList:
    """(pack id, size) pairs, packed: 40 bytes each instead of ~150 as tuples of objects -- the plan of a prune
    that frees a 10 TB repository lists 600k packs."""

    __slots__ = ("_ids", "_sizes")

    def __init__(self, pairs: Iterable[tuple[bytes, int]] = ()):
        self._ids, self._sizes = bytearray(), array("Q")
        for pid, size in pairs:
            self.append(pid, size)

    def append(self, pid: bytes, size: int) -> None:
        if len(pid) != ID_LEN:
            raise ValueError("pack id of wrong length")
        self._ids += pid
        self._sizes.append(size)

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        ids = self._ids
        for i, size in enumerate(self._sizes):
            yield bytes(ids[i * ID_LEN : (i + 1) * ID_LEN]), size

    def total(self) -> int:
        return sum(self._sizes)


@dataclass
class _Plan:
    delete: _PackList = field(default_factory=_PackList)  # (pack id, size)
    repack: _PackList = field(default_factory=_PackList)
    unindexed: _PackList = field(default_factory=_PackList)

    @property
    def removed(self) -> Iterator[tuple[bytes, int]]:
        """Every pack this prune deletes: unreferenced, repacked and unindexed leftovers."""
        return itertools.chain(self.delete, self.repack, self.unindexed)

    def removed_bytes(self) -> int:
        return self.delete.total() + self.repack.total() + self.unindexed.total()


def _foreign(name: str) -> PruneRefused:
    return PruneRefused(f"prune refused, nothing deleted: {name} is intact (its bytes match its name) but the keys in "
                        "use do not open it: another repository's, or planted. Repair leaves such an object alone; if "
                        "it is not this repository's, move it out of the store by hand (docs/operations.md, \"When "
                        "verify or restore reports damage\")")


class Pruner:
    def __init__(self, repo: Repository, catalog: Catalog, opts: PruneOptions,
                 log: Callable[[str], None] = lambda _m: None, uploaders: int = 0,
                 before_delete: Callable[[], None] = lambda: None):
        self.repo, self.catalog, self.opts, self.log = repo, catalog, opts, log
        self._before_delete = before_delete
        self.report = PruneReport(dry_run=opts.dry_run)
        self._uploaders = uploaders
        self._new_packs: list[tuple[bytes, int, list[pack_mod.PackEntry]]] = []  # not yet in a segment
        self._written: set[str] = set()  # the index segments of the packs this run wrote
        self._new_lock = threading.Lock()
        self.sync_problems: list[str] = []  # problems the session's catalog sync met (set by the caller)

    # --- 1. mark ------------------------------------------------------------------------------------
    def _mark(self) -> None:
        cat = self.catalog
        if self.opts.ignore_snapshots and not self.opts.dry_run:
            raise ValueError("ignore_snapshots is for dry runs only: it would free data existing snapshots need")
        ignored = set(self.opts.ignore_snapshots)
        snaps = [s for s in cat.snapshots() if s.id not in ignored]
        self.report.snapshots = len(snaps)
        # a manifest the catalog could not load (damaged, or a read that failed) still counts on its data
        unreadable = sorted(set(self.repo.list_snapshots()) - {s.id for s in snaps} - ignored)
        if unreadable and self.repo.foreign("snapshots", unreadable[0]):  # ('vault repair' leaves it alone)
            raise _foreign(f"snapshots/{unreadable[0]}")
        for problem in self.sync_problems:  # (an index segment the same way)
            prefix = problem.split(":", 1)[0].removeprefix("index segment ") if problem.startswith("index ") else ""
            seg = next((s for s in self.repo.list_index() if prefix and s.startswith(prefix)), None)
            if seg is not None and self.repo.foreign("index", seg):
                raise _foreign(f"index/{seg}")
        if unreadable or self.sync_problems:
            what = f"snapshot {unreadable[0][:8]} could not be read" if unreadable else self.sync_problems[0]
            raise PruneRefused(f"prune refused, nothing deleted: {what}; run 'vault verify' and 'vault repair'")
        marker = cat.marker()
        for snap in snaps:
            def load(tids: list[bytes], snap=snap) -> Iterator[tuple[bytes, list]]:
                try:
                    yield from cat.iter_tree_entries(self.repo, tids)
                except (IntegrityError, ObjectNotFound) as exc:
                    raise PruneRefused(f"prune refused, nothing deleted: snapshot {snap.short_id} cannot be read "
                                       f"({exc}); run 'vault verify' and 'vault repair'") from None
            marker.walk(snap.tree, load, with_trees=True)
        marker.flush()
        self.report.blocks_referenced = cat.used_count()
        missing, examples = cat.used_missing()
        if missing:  # (the catalog's index is a cache: rows it lost are its damage, not the repository's)
            cat.check_not_lacking(self.repo, set(cat.used_missing(limit=-1)[1]), "prune again")
            replaced = sorted(s.short_id for s in snaps if s.id in replaced_by_repair(snaps))
            advice = (f"snapshot(s) {' '.join(replaced)}, replaced by 'vault repair', still name the lost data: "
                      f"forget them (vault forget {' '.join(replaced)}) or back up the files again"
                      if replaced else "run 'vault verify' and 'vault repair index'")
            raise PruneRefused(f"prune refused, nothing deleted: {missing} referenced block(s) are not in the index "
                               f"(e.g. {examples[0].hex()[:16]}); {advice}")

    # --- 2. plan ------------------------------------------------------------------------------------
    def _plan(self) -> _Plan:
        cat = self.catalog
        cat.stored_begin()
        cat.stored_add(self.repo.list_packs())
        plan = _Plan()
        rep = self.report
        for pid, _kind, size, stored, nblocks, nused, used_bytes in cat.pack_usage():
            rep.packs_total += 1
            if stored is None:
                if nused:
                    raise PruneRefused(f"prune refused, nothing deleted: pack {pid.hex()[:16]} holds referenced "
                                       "blocks but is missing from the repository; run 'vault verify'")
                rep.warnings.append(f"pack {pid.hex()[:16]} is indexed but missing (it holds nothing referenced)")
                continue
            rep.bytes_total += stored
            unused = max(0, stored - used_bytes - pack_mod.header_size(nused))  # vs. a pack of only live blocks
            if nused == 0:
                plan.delete.append(pid, stored)
            elif unused > self.opts.max_unused * stored:
                plan.repack.append(pid, stored)
            else:
                rep.packs_kept += 1
                rep.bytes_unused_kept += unused
        plan.unindexed = _PackList(cat.unindexed_packs())
        rep.bytes_total += plan.unindexed.total()
        rep.packs_deleted = len(plan.delete)
        rep.packs_repacked = len(plan.repack)
        rep.packs_unindexed_deleted = len(plan.unindexed)
        rep.bytes_deleted = plan.removed_bytes()
        return plan

    # --- 3. repack ----------------------------------------------------------------------------------
    def _on_pack(self, pid: bytes, size: int, entries: list[pack_mod.PackEntry]) -> None:
        """A repacked pack is stored (any thread): index it in segments of SEGMENT_PACKS as they fill, so
        memory stays bounded and a kill keeps the work (the old packs stay indexed until the rewrite)."""
        with self._new_lock:
            self._new_packs.append((pid, size, entries))
            self.report.packs_written += 1
            self.report.bytes_repacked_written += size
            full = self._new_packs if len(self._new_packs) >= SEGMENT_PACKS else None
            if full is not None:
                self._new_packs = []
        if full is not None:
            self._save_new(full)

    def _save_new(self, packs: list) -> None:
        sid = self.repo.save_index(index_mod.from_packs(packs))
        with self._new_lock:
            self.report.segments_written += 1
            self._written.add(sid)

    def _repack(self, plan: _Plan) -> None:
        if not plan.repack:
            return
        packer = PackWriter(self.repo, self._on_pack, uploaders=self._uploaders)
        done = _PackList()
        window = max(1, self.opts.workers)  # packs read at a time: memory is bounded by this many packs
        todo_packs = iter(plan.repack)
        failed = True
        try:
            with ThreadPoolExecutor(max_workers=window) as pool:
                while chunk := list(itertools.islice(todo_packs, window)):
                    todo = [(pid, size, self.catalog.live_blocks(pid)) for pid, size in chunk]
                    for (pid, size, _live), result in zip(todo, pool.map(self._read_live, todo)):
                        if isinstance(result, str):
                            self.report.warnings.append(result)
                            self.report.packs_damaged_kept += 1
                            continue
                        for entry, plain in result:
                            packer.add(entry.kind, entry.block_id, plain)
                            self.report.blocks_repacked += 1
                        done.append(pid, size)
            packer.flush()
            failed = False
        finally:
            packer.close()
            if failed:
                self._drop_unindexed()
        plan.repack = done
        self.report.packs_repacked = len(done)

    def _drop_unindexed(self) -> None:
        """A repack that failed (a full disk, a lost connection, Ctrl-C): delete the new packs no segment names
        yet -- copies of blocks the old packs, still indexed, hold -- so that a retry on a nearly full disk does
        not find less room each time. Those a segment names already stay (the next prune counts them)."""
        with self._new_lock:
            packs, self._new_packs = self._new_packs, []
        for pid, _size, _entries in packs:
            try:
                self.repo.backend.delete(pack_name(pid))
            except VaultError:
                pass  # (a leftover then: the next prune removes it)

    def _read_live(self, item: tuple[bytes, int, list[pack_mod.PackEntry]]) -> list | str:
        """The live blocks of one pack, authenticated; or a message when the pack is damaged (then kept)."""
        pid, size, live = item
        try:
            data = self.repo.backend.get(pack_name(pid), 0, size)  # (as listed: a short body is caught)
            if pack_mod.pack_id(data) != pid:
                return f"pack {pid.hex()[:16]} is damaged (content does not match its name): kept, not repacked"
            return [(e, self.repo.open_block(e, data[e.offset : e.offset + e.length])) for e in live]
        except (IntegrityError, ObjectNotFound) as exc:
            return f"pack {pid.hex()[:16]} could not be repacked ({exc}): kept"

    # --- 4. index -----------------------------------------------------------------------------------
    def _rewrite_index(self, plan: _Plan) -> list[str]:
        """Write the new index; return the segment ids to delete afterwards. Segments are read one at a time, so
        memory does not grow with the index; the ones to rewrite are read a second time, once it is known that no
        other segment supersedes them."""
        self.catalog.removed_begin(pid for pid, _ in plan.removed)  # a temporary table, not a set in memory
        with self._new_lock:
            rest, self._new_packs = self._new_packs, []
        if rest:
            self._save_new(rest)
        present = self.repo.list_index()
        superseded: set[str] = set()
        affected: list[str] = []
        tombstones: dict[str, list[bytes]] = {}  # segments with no packs: what they supersede
        small: list[str] = []  # segments to merge, if there are enough of them
        self.catalog.at_risk_begin()
        for sid, seg in self._segments(present):
            superseded.update(s.hex() for s in seg.supersedes)
            if not seg.packs:
                tombstones[sid] = list(seg.supersedes)
            elif len(seg.packs) < SMALL_SEGMENT and sid not in self._written:
                small.append(sid)
            removed = self.catalog.removed_among(seg.packs)
            if removed:
                affected.append(sid)
                self.catalog.at_risk_add([e.block_id for pid in removed for e in seg.packs[pid]])
        self._check_nothing_lost(present, superseded)
        # left by an interrupted prune: already replaced, so deleted (never rewritten: they may name removed packs)
        to_delete = [s for s in present if s in superseded]
        emptied: list[bytes] = []
        # a remote repository's rewritten segments are fetched and stored a few at a time (one after another,
        # each cost a round trip: a helper measured prune at 2x restic's time over a 200 ms link)
        width = max(1, min(self.catalog.prefetch, 4))
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="vault-index") as pool:
            saving: collections.deque[Future] = collections.deque()
            for sid, seg in self._segments([sid for sid in affected if sid not in superseded]):
                removed = self.catalog.removed_among(seg.packs)
                keep = [(pid, seg.sizes.get(pid, 0), entries) for pid, entries in seg.packs.items()
                        if pid not in removed]
                if keep:
                    saving.append(pool.submit(self.repo.save_index,
                                              index_mod.from_packs(keep, supersedes=[bytes.fromhex(sid)])))
                    self.report.segments_written += 1
                    if len(saving) >= width:  # (bounded: each holds a segment, up to SEGMENT_PACKS packs)
                        saving.popleft().result()
                else:
                    emptied.append(bytes.fromhex(sid))
                to_delete.append(sid)
            while saving:
                saving.popleft().result()
        if emptied:
            # a segment all of whose packs go is superseded too, by a segment of no packs (one: it takes over the
            # list of the one before): deleted unsuperseded, a copy of it put back later was a valid segment to
            # every reader, and a backup deduplicated against its deleted packs
            live = {t: sup for t, sup in tombstones.items() if t not in superseded}
            names = set(emptied) | {bytes.fromhex(t) for t in live} | {b for sup in live.values() for b in sup}
            self.repo.save_index(index_mod.from_packs([], supersedes=sorted(names)))
            self.report.segments_written += 1
            to_delete.extend(live)
        small = [sid for sid in small if sid not in superseded and sid not in affected]
        if len(small) >= MERGE_AT:
            to_delete.extend(self._merge(small))
        return to_delete

    def _merge(self, small: list[str]) -> list[str]:
        """Replace small segments by segments of up to SEGMENT_PACKS packs, each superseding the ones it merges
        (and what those superseded: a copy of one of them put back later stays superseded); return the merged
        ones, to delete. Every backup writes a segment of its own, and a new machine's first sync, a catalog
        rebuild and verify read them all: one request each. A kill leaves the old ones, or old and new side by
        side, which readers resolve as for an interrupted rewrite."""
        merged: list[str] = []
        group: list[tuple[str, index_mod.IndexSegment]] = []
        packs = entries = 0

        def flush() -> None:
            if len(group) > 1:
                names = {bytes.fromhex(sid) for sid, _ in group} | {b for _, seg in group for b in seg.supersedes}
                self.repo.save_index(index_mod.from_packs(
                    ((pid, seg.sizes.get(pid, 0), ents) for _, seg in group for pid, ents in seg.packs.items()),
                    supersedes=sorted(names)))
                self.report.segments_written += 1
                self.report.segments_merged += len(group)
                merged.extend(sid for sid, _ in group)
            group.clear()

        for sid, seg in self._segments(small):
            n = sum(len(e) for e in seg.packs.values())
            if group and (packs + len(seg.packs) > SEGMENT_PACKS or entries + n > SEGMENT_ENTRIES):
                flush()
                packs = entries = 0
            group.append((sid, seg))
            packs += len(seg.packs)
            entries += n
        flush()
        return merged

    def _check_nothing_lost(self, present: list[str], superseded: set[str]) -> None:
        """Every referenced block that the repository's own index places in a pack this prune removes must be
        placed by it in a pack that stays too (repacked, or a duplicate): the plan came from this machine's
        catalog, a cache, and a damaged row there (SQLite has no page checksums: one flipped bit moved a block to
        another pack) would have had a live pack repacked without the block and deleted. Checked on the
        authenticated segments before anything is superseded or deleted; the segments this run wrote (the
        repacked packs) first, the others only while something is left unfound."""
        if not self.catalog.at_risk_left()[0]:
            return
        ours = [sid for sid in present if sid in self._written]
        order = [sid for sid in ours + [sid for sid in present if sid not in self._written] if sid not in superseded]
        for sid, seg in self._segments(order):  # (a remote repository's fetched side by side, a few ahead)
            removed = self.catalog.removed_among(seg.packs)
            self.catalog.at_risk_found([e.block_id for pid, entries in seg.packs.items() if pid not in removed
                                        for e in entries])
            if not self.catalog.at_risk_left()[0]:
                return
        n, first = self.catalog.at_risk_left()
        raise PruneRefused(f"prune stopped before deleting anything: {n} block(s) that snapshots reference (e.g. "
                           f"{first.hex()[:16]}) would be lost with the packs it removes -- this machine's catalog "
                           "disagrees with the repository's index; run 'vault catalog rebuild', then prune again")

    def _segments(self, sids: list[str]) -> Iterator[tuple[str, index_mod.IndexSegment]]:
        """(id, segment) for each of ``sids``, in order; from a remote repository a few are fetched ahead (a
        repository of a year of hourly backups has thousands)."""
        for sid, seg, exc in Catalog._fetched(self._load_segment, sids, min(self.catalog.prefetch, 4)):
            if exc is not None:
                raise exc
            yield sid, seg

    def _load_segment(self, sid: str) -> index_mod.IndexSegment:
        try:
            return self.repo.load_index(sid)
        except (IntegrityError, ObjectNotFound) as exc:
            raise PruneRefused(f"prune stopped before deleting anything: index segment {sid[:16]}: {exc}") from None

    # --- 5. delete ----------------------------------------------------------------------------------
    def _delete_all(self, names: Iterable[str]) -> None:
        def one(name: str) -> None:
            try:
                self.repo.backend.delete(name)
            except ObjectNotFound:
                pass
        names = iter(names)
        with ThreadPoolExecutor(max_workers=max(1, self.opts.workers)) as pool:
            while chunk := list(itertools.islice(names, 1000)):  # (map would submit every name at once)
                list(pool.map(one, chunk))

    def _abort_multipart(self, started: float) -> None:
        backend = self.repo.backend
        for key, upload_id, initiated in backend.list_multipart_uploads():
            if initiated > started:
                continue  # cannot be ours to clean: we hold the exclusive lock, but be conservative
            try:
                backend.abort_multipart(key, upload_id)
                self.report.multipart_aborted += 1
            except ObjectNotFound:
                pass

    # --- the run ------------------------------------------------------------------------------------
    def run(self) -> PruneReport:
        started = time.time()
        t0 = time.monotonic()
        self._mark()
        plan = self._plan()
        rep = self.report
        self.log(f"prune: {rep.snapshots} snapshots reference {rep.blocks_referenced} blocks; {rep.packs_total} "
                 f"packs: {len(plan.delete)} to delete, {len(plan.repack)} to repack, {rep.packs_kept} kept; "
                 f"{len(plan.unindexed)} unindexed leftovers")
        if not self.opts.dry_run and (plan.delete or plan.repack or plan.unindexed or self.catalog.superseded_known()
                                      or self.catalog.small_segments(SMALL_SEGMENT) >= MERGE_AT):
            try:
                self._repack(plan)
            except PermanentError as exc:
                if not str(exc).startswith(("disk full", "no free inodes", "disk quota")):
                    raise
                raise PermanentError(f"{exc}; prune writes the repacked packs before it deletes anything: free some "
                                     "space, or run 'vault prune --max-unused 100%' first (it deletes the wholly "
                                     "unused packs and repacks nothing)") from None
            # the replaced index first, then (only then) what it no longer names
            old_segments = self._rewrite_index(plan)
            self._before_delete()  # still our exclusive lock? else stop: deleting is the one unsafe step
            self._delete_all([f"index/{s}" for s in old_segments])
            rep.segments_deleted = len(old_segments)
            self._delete_all(pack_name(pid) for pid, _ in plan.removed)
            rep.bytes_deleted = plan.removed_bytes()
        if not self.opts.dry_run:
            self._abort_multipart(started)
            rep.temp_files_removed, rep.temp_bytes_removed = self.repo.backend.remove_temp_files()
            try:
                self.catalog.drop_unwalked_trees()
            except CacheUnavailable as exc:  # (a full cache disk: what it would free is only the cache's)
                rep.warnings.append(f"the catalog's trees of pruned snapshots are kept for now ({exc})")
        else:
            self._estimate_repack(plan)
            rep.temp_files_removed, rep.temp_bytes_removed = self.repo.backend.remove_temp_files(dry_run=True)
            small = self.catalog.small_segments(SMALL_SEGMENT)  # (an estimate: those a rewrite replaces count)
            rep.segments_merged = small if small >= MERGE_AT else 0
        # (a dry run takes no lock: the temp files it counts may be a write under way -- found, not freed)
        rep.bytes_freed = rep.bytes_deleted - rep.bytes_repacked_written + (0 if self.opts.dry_run else
                                                                              rep.temp_bytes_removed)
        rep.duration_s = time.monotonic() - t0
        return rep

    def _estimate_repack(self, plan: _Plan) -> None:
        """A dry run's repack figures: the live blocks the repacked packs hold, their bytes, and the packs of
        ``pack_size`` they would fill (an estimate: data and trees go to separate packs)."""
        blocks = size = 0
        for pid, _ in plan.repack:
            for e in self.catalog.live_blocks(pid):
                blocks += 1
                size += e.length
        rep = self.report
        rep.blocks_repacked, rep.bytes_repacked_written = blocks, size
        rep.packs_written = -(-size // self.repo.config.pack_size) if size else 0
