"""Copy snapshots into a second repository (its own password and keys): redundancy.

Block ids are keyed hashes, so an id in the source says nothing about the id in the destination: every block
the destination does not already hold under a known mapping is read from the source (authenticated), hashed
with the destination's key, and stored there only when the destination lacks it. The mapping source id ->
destination id is cached in the destination's catalog (a table created on first use), so a nightly copy reads
and transfers only new data; a whole subtree whose mapped tree id the destination holds is skipped unread.
Trees are rebuilt bottom-up with destination ids, then the snapshot is written with its original time, host,
paths and tags, and ``summary.copied_from`` = source snapshot id (how a later copy knows it is there already).

Order in the destination is the backup's: packs, index segments (checkpoints every 16 packs, so an interrupted
copy resumes without re-uploading), the snapshot last. Idempotent: copying again adds nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import index as index_mod
from .catalog import Catalog
from .errors import IntegrityError, VaultError
from .model import DIR, FILE, Snapshot, Tree, moved_summary
from .pack import DATA, TREE, PackEntry
from .packwriter import PackWriter, adopt_leftover_packs
from .repository import Repository

CHECKPOINT_PACKS = 16


@dataclass
class CopyReport:
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source id, destination id)
    skipped: list[str] = field(default_factory=list)  # already in the destination
    blocks_read: int = 0
    blocks_stored: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0
    trees_skipped: int = 0
    packs_adopted: int = 0  # left by an interrupted copy: indexed, not sent again
    tags_differ: list[tuple[str, str]] = field(default_factory=list)  # (source, destination): retagged since
    duration_s: float = 0.0

    def to_json(self) -> dict:
        return {"copied": [{"source": s, "destination": d} for s, d in self.copied], "skipped": self.skipped,
                "blocks_read": self.blocks_read, "blocks_stored": self.blocks_stored, "bytes_read": self.bytes_read,
                "bytes_stored": self.bytes_stored, "trees_skipped": self.trees_skipped,
                "packs_adopted": self.packs_adopted,
                "tags_differ": [{"source": a, "destination": b} for a, b in self.tags_differ],
                "duration_s": round(self.duration_s, 2)}


class Copier:
    def __init__(self, src: Repository, src_cat: Catalog, dst: Repository, dst_cat: Catalog,
                 workers: int = 4, uploaders: int = 0, log: Callable[[str], None] = lambda _m: None):
        self.src, self.src_cat, self.dst, self.dst_cat = src, src_cat, dst, dst_cat
        self.workers = max(1, workers)
        self.log = log
        self.report = CopyReport()
        self._pending: list[tuple[bytes, int, list[PackEntry]]] = []
        self._unindexed: set[bytes] = set()  # destination ids stored by this run and not yet in its catalog
        self._uploaders = uploaders
        self._lock = threading.Lock()  # uploader threads call _on_pack
        self._check_lock: Callable[[], None] | None = None  # the destination's lock (``run``)
        # tree mappings are saved only once their snapshot is written: a tree pack can be indexed before the
        # data pack holding its files is stored, and after a kill a mapped tree must not be skipped unread
        self._tree_pairs: list[tuple[bytes, bytes]] = []
        dst_cat.copy_map_init()
        # a tree copied in another index epoch is walked again (its blocks may have left the index since: a
        # repair of the destination dropped lost ones); those still indexed are not read again
        self._epoch = dst_cat.index_epoch()
        self._seen: dict[str, set[str]] = {}  # destination manifests written by others meanwhile: their copy keys
        self._dst_ids: set[str] = set()  # destination manifests there when this run began, and this run's own

    # --- another copy to the same destination at the same time -----------------------------------------
    def _copied_meanwhile(self, keys: set[str], mine: str | None = None, tree: bytes = b"") -> bool:
        """Whether another copy running beside this one (another host's, or this host's cron overlapping a
        manual run) has written the destination's copy of the snapshot with ``keys`` since this one looked:
        two overlapping copies both wrote every snapshot (exit 0 both), and the mirror's retention then kept
        fewer distinct states. Asked before writing the manifest and, with ``mine``, again after: then of the
        manifests holding this state the one with the smallest id stays and this run takes back the others,
        its own or another copy's (with a ``logs/`` record) -- whichever copy looks last, also after the other
        was killed before its second look, settles it, and the one that stays is never taken back. True when
        this run's own is not the one that stays."""
        others = []
        for sid in self.dst.list_snapshots():
            if sid in self._dst_ids or sid == mine:  # (not the catalog's list: another copy sharing this cache
                continue                             # directory adds its manifests there too)
            if sid not in self._seen:
                try:
                    self._seen[sid] = self.dst.load_snapshot(sid).copy_keys()
                except VaultError:  # (unreadable, or forgotten since the listing: not a copy of this one)
                    self._seen[sid] = set()
            if self._seen[sid] & keys:
                if mine is None:
                    return True
                others.append(sid)
        if not others:
            return False
        keep = min(others + [mine])
        for sid in sorted(set(others + [mine]) - {keep}):  # (another's may be taken back by its own copy too)
            self.dst.withdraw_snapshot(sid, tree if sid == mine else None, "copy",
                                       "withdrawn: another copy wrote the same snapshot at the same time",
                                       f"the same as {keep}")
        return keep != mine

    # --- blocks ---------------------------------------------------------------------------------------
    def _on_pack(self, pid: bytes, size: int, entries: list[PackEntry]) -> None:
        with self._lock:
            self._pending.append((pid, size, entries))
            due = len(self._pending) >= CHECKPOINT_PACKS
        if due:
            self._checkpoint()

    def _checkpoint(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            seg = index_mod.from_packs(pending)
            self.dst_cat.add_segment(self.dst.commit_index(seg, self._check_lock), seg)
            with self._lock:
                for _pid, _size, entries in pending:
                    self._unindexed.difference_update(e.block_id for e in entries)

    def _present(self, dst_id: bytes) -> bool:
        with self._lock:
            if dst_id in self._unindexed:
                return True
        return self.dst_cat.has_block(dst_id)

    def _known(self, src_id: bytes) -> bytes | None:
        """The destination id of a source block the destination already holds, if known without reading it."""
        dst_id = self.dst_cat.copy_map_get(self.dst, src_id)
        return dst_id if dst_id is not None and self._present(dst_id) else None

    def _read(self, src_id: bytes) -> bytes:
        loc = self.src_cat.lookup(src_id)
        if loc is None:
            raise IntegrityError(f"block {src_id.hex()[:16]} of the source is not in its index (missing)")
        return self.src.load_block(*loc)

    def _store(self, kind: str, plain: bytes, packer: PackWriter) -> bytes:
        dst_id = self.dst.block_id(plain)
        if not self._present(dst_id):
            with self._lock:
                self._unindexed.add(dst_id)
            packer.add(kind, dst_id, plain)
            self.report.blocks_stored += 1
            self.report.bytes_stored += len(plain)
        return dst_id

    def _copy_blocks(self, ids: list[bytes], packer: PackWriter, pool: ThreadPoolExecutor) -> dict[bytes, bytes]:
        """Source id -> destination id for ``ids``, storing what the destination lacks."""
        out: dict[bytes, bytes] = {}
        todo = []
        for b in dict.fromkeys(ids):
            known = self._known(b)
            if known is None:
                todo.append(b)
            else:
                out[b] = known
        for i in range(0, len(todo), 4 * self.workers):  # bounded read-ahead
            part = todo[i : i + 4 * self.workers]
            for bid, plain in zip(part, pool.map(self._read, part)):
                self.report.blocks_read += 1
                self.report.bytes_read += len(plain)
                out[bid] = self._store(DATA, plain, packer)
        if todo:
            self.dst_cat.copy_map_put(self.dst, [(b, out[b]) for b in todo])
        return out

    # --- trees (iterative post-order: directory depth is not limited by the Python stack) ---------------
    def _copy_tree(self, root: bytes, packer: PackWriter, pool: ThreadPoolExecutor) -> bytes:
        done: dict[bytes, bytes] = {}
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tid, expanded = stack.pop()
            if tid in done:
                continue
            known = self.dst_cat.copy_tree_get(self.dst, tid, self._epoch)
            if known is not None and self._present(known):
                done[tid] = known
                self.report.trees_skipped += 1
                continue
            nodes = self.src_cat.tree(self.src, tid)
            subs = [n.subtree for n in nodes if n.type == DIR and n.subtree is not None and n.subtree not in done]
            if not expanded and subs:
                stack.append((tid, True))
                stack.extend((s, False) for s in subs)
                continue
            ids = self._copy_blocks([b for n in nodes if n.type == FILE for b in n.blocks], packer, pool)
            out = []
            for n in nodes:
                if n.type == FILE:
                    n = dataclasses.replace(n, blocks=[ids[b] for b in n.blocks])
                elif n.type == DIR and n.subtree is not None:
                    n = dataclasses.replace(n, subtree=done[n.subtree])
                out.append(n)
            tree = Tree(out)
            data = tree.encode()
            dst_tid = self._store(TREE, data, packer)
            self._tree_pairs.append((tid, dst_tid))
            self.dst_cat.add_tree(self.dst, dst_tid, tree.nodes)
            done[tid] = dst_tid
        return done[root]

    # --- the run ------------------------------------------------------------------------------------
    def run(self, snaps: list[Snapshot], before_commit: Callable[[], None] = lambda: None,
            adopt: bool = True) -> CopyReport:
        """Copy ``snaps``; ``adopt``: first look for the packs a killed copy stored (``adopt_leftover_packs``)."""
        t0 = time.monotonic()
        self._check_lock = before_commit  # (asked around every index segment too: Repository.commit_index)
        if snaps and adopt:  # the packs a killed copy stored after its last checkpoint: not sent again
            self.report.packs_adopted = adopt_leftover_packs(self.dst, self.dst_cat, before_commit)
        theirs = self.dst_cat.snapshots()
        self._dst_ids = {s.id for s in theirs}  # (their copy keys are in ``present``; those written since are not)
        # copied before (the copy records its source), a copy of one of theirs (copying back), or a manifest
        # `repair --from-repo` healed from one of theirs (it records that snapshot): either way the
        # destination holds it already
        # (any number of copies back: A -> B -> C, then C -> A; see Snapshot.copy_keys)
        theirs_by_key = {k: s for s in theirs for k in s.copy_keys()}
        present = set(theirs_by_key)
        # (and one the destination lost without a forget: its repair writes it again from its catalog -- copied
        # now as well, the destination would hold it twice)
        present |= set().union(*(s.copy_keys() for s in self.dst_cat.lost_snapshots()))
        packer = PackWriter(self.dst, self._on_pack, uploaders=self._uploaders)
        pool = ThreadPoolExecutor(max_workers=self.workers)
        stopped = False
        try:
            for snap in sorted(snaps, key=lambda s: (s.time, s.id)):
                if snap.copy_keys() & present:
                    self.report.skipped.append(snap.id)
                    there = next((theirs_by_key[k] for k in snap.copy_keys() if k in theirs_by_key), None)
                    if there is not None and sorted(there.tags) != sorted(snap.tags):  # (a `vault tag` since)
                        self.report.tags_differ.append((snap.id, there.id))
                    continue
                self.log(f"copying snapshot {snap.short_id} ({snap.host}: {' '.join(snap.paths)})")
                try:
                    root = self._copy_tree(snap.tree, packer, pool)
                except IntegrityError as exc:  # say which snapshot (those before it are copied)
                    raise IntegrityError(f"snapshot {snap.short_id}: {exc}; the snapshots before it are "
                                         "copied ('vault verify' names the damage)") from None
                packer.flush()
                self._checkpoint()
                new = Snapshot(time=snap.time, host=snap.host, paths=list(snap.paths), tree=root,
                               tags=list(snap.tags), username=snap.username, parent=None,
                               summary={**moved_summary(snap.summary, snap.tree, root), "copied_from": snap.id,
                                        "copied_from_repo": self.src.id,
                                        "origin": snap.origin})
                if self._copied_meanwhile(snap.copy_keys()):  # (its data stays unused: prune removes it)
                    self.report.skipped.append(snap.id)
                    continue
                sid = self.dst.commit_snapshot(new, before_commit, "copy")
                if self._copied_meanwhile(snap.copy_keys(), sid, root):
                    self.report.skipped.append(snap.id)
                    continue
                self._dst_ids.add(sid)
                self.dst_cat.add_snapshot(new)
                self.dst_cat.copy_tree_put(self.dst, self._tree_pairs, self._epoch)  # every block below them indexed now
                self._tree_pairs = []
                self.report.copied.append((snap.id, new.id))
        except KeyboardInterrupt:  # (Ctrl-C, SIGTERM)
            stopped = True
            raise
        finally:
            # stopped: a read or upload that gets no answer (a stalled store: minutes of retries) is not waited
            # for -- a pack that lands names nothing and is adopted by the next copy; the CLI exits without it
            pool.shutdown(wait=not stopped, cancel_futures=True)
            settled = packer.settled()
            packer.close(wait=not stopped)
            if stopped and settled:  # (as a backup does: the packs stored since the last checkpoint are named,
                try:                 # so the next copy need not read each one back whole to adopt it)
                    self._checkpoint()
                except (Exception, KeyboardInterrupt):  # noqa: BLE001 - stopping; they are adopted instead
                    pass
        self.report.duration_s = time.monotonic() - t0
        return self.report
