"""Repair: rebuild the index from the packs, heal lost blocks from a second repository, and rewrite snapshots
that still lack data. Runs under the exclusive lock; each step is crash-safe like prune.

* index: every pack's header is read (``--read-data``: every pack whole, checked against its name). A pack
  whose header or bytes are damaged is salvaged: each block that still authenticates is stored again in a new
  pack, the rest is lost, and the damaged pack is deleted at the end. New index segments list every good pack
  and the salvaged blocks; a last, empty segment supersedes all the old ones, which are then deleted. A crash
  before that last segment leaves old and new segments side by side (both valid); after it, the old ones are
  ignored.
* heal (``--from-repo URL``): blocks the snapshots reference but no index locates are looked for in the copy
  of each snapshot in the second repository (``copy`` records ``copied_from``; snapshots with the same time,
  host and paths also pair). The two trees are walked side by side; a block is taken only when its plaintext,
  hashed with this repository's key, gives exactly the id that is missing -- so a wrong pairing can never
  store wrong data. Lost trees are rebuilt the same way and checked against their id.
* snapshots: a snapshot that still references lost data is written again without the files whose blocks are
  lost (an unreadable directory becomes empty); the new snapshot has the tag ``repaired`` and
  ``summary.repaired_from``; the old one is kept until forgotten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import index as index_mod
from .backend.base import confirmed_size
from .catalog import Catalog
from .errors import IntegrityError, ObjectNotFound, VaultError, is_damage
from . import entries as entries_mod
from .model import DEEPEST, DIR, FILE, Node, Snapshot, Tree, format_time, moved_summary, replaced_by_repair
from .pack import DATA, TREE, PackEntry, pack_name, parse_pack
from .packwriter import PackWriter
from .repository import Repository

SEGMENT_PACKS = 64


@dataclass
class RepairReport:
    dry_run: bool = False
    packs_checked: int = 0
    packs_damaged: list[str] = field(default_factory=list)
    packs_missing: int = 0  # indexed but absent
    blocks_salvaged: int = 0
    blocks_lost: int = 0
    blocks_healed: int = 0
    trees_healed: int = 0
    trees_from_cache: int = 0  # lost directory listings stored again from this machine's catalog
    segments_written: int = 0
    segments_deleted: int = 0
    index_rewritten: bool = True  # False: the index was found intact and left as it was
    packs_deleted: int = 0
    snapshots_rewritten: list[dict] = field(default_factory=list)
    files_dropped: list[str] = field(default_factory=list)
    still_missing: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class _Ranges:
    """A stored object too big to read whole, sliced like bytes: ``r[a:b]`` reads that range (never more than
    one block at a time in memory); a range it does not hold reads short (the block then fails its check)."""

    def __init__(self, backend, name: str, size: int):
        self.backend, self.name, self.size = backend, name, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> bytes:
        try:
            return self.backend.get(self.name, part.start, part.stop - part.start)
        except (ObjectNotFound, IntegrityError):
            return b""


class Repairer:
    def __init__(self, repo: Repository, catalog: Catalog, *, read_data: bool = False, dry_run: bool = False,
                 uploaders: int = 0, log: Callable[[str], None] = lambda _m: None,
                 before_delete: Callable[[], None] = lambda: None):
        self.repo, self.catalog = repo, catalog
        self.read_data, self.dry_run, self.log = read_data, dry_run, log
        self._before_delete = before_delete
        self._uploaders = uploaders
        self.report = RepairReport(dry_run=dry_run)
        self._new: list[tuple[bytes, int, list[PackEntry]]] = []
        self._unindexed: set[bytes] = set()
        self._kept: list[tuple[bytes, list[PackEntry] | None]] = []  # damaged packs kept, with their header
        self._packer: PackWriter | None = None
        self._written: set[str] = set()  # index segments this run wrote
        # a dry run writes no new index, so the catalog still lists what the real run's index would not: the
        # packs that are missing or damaged (their blocks count as lost unless salvaged or healed)
        self._gone: set[bytes] = set()
        self._planned = False  # ... and the blocks of intact packs that it would list: catalog table "planned"
        # healing from a second repository: our lost trees whose copy could not be rebuilt whole (our id -> their
        # tree and repository), the blocks of theirs it could not supply, and those found here under our own ids
        self._lost_mates: dict[bytes, tuple[bytes, Repository, Catalog]] = {}
        self._untaken: set[bytes] = set()
        self._scanned: set[bytes] = set()
        self._ours_of: dict[bytes, bytes] = {}

    # --- storing (new packs, indexed at the end of each step) -----------------------------------------
    def _on_pack(self, pid: bytes, size: int, entries: list[PackEntry]) -> None:
        self._new.append((pid, size, entries))

    def _store(self, kind: str, bid: bytes, plain: bytes, force: bool = False) -> None:
        """Store a block unless the repository has it (``force``: unless this run stored it already -- for
        salvage, where the catalog still lists the damaged pack)."""
        if bid in self._unindexed or (not force and self._indexed(bid)):
            return
        if self._packer is None:
            self._packer = PackWriter(self.repo, self._on_pack, uploaders=self._uploaders)
        if not self.dry_run:
            self._packer.add(kind, bid, plain)
        elif kind == TREE:  # a dry run stores nothing: the catalog keeps the (validated) tree for the next steps
            self.catalog.add_tree(self.repo, bid, Tree.decode(plain).nodes)
        self._unindexed.add(bid)

    def _flush_new(self) -> None:
        """Store the open packs and index everything stored so far."""
        if self._packer is not None:
            self._packer.flush()
        new, self._new = self._new, []
        for i in range(0, len(new), SEGMENT_PACKS):
            seg = index_mod.from_packs(new[i : i + SEGMENT_PACKS])
            sid = self.repo.save_index(seg)
            self._written.add(sid)
            self.catalog.add_segment(sid, seg)
            self.report.segments_written += 1
        self._unindexed.clear()

    def _save_segment(self, packs: list[tuple[bytes, int, list[PackEntry]]], supersedes: list[bytes] = ()) -> None:
        self._written.add(self.repo.save_index(index_mod.from_packs(packs, supersedes)))
        self.report.segments_written += 1

    def close(self, wait: bool = True) -> None:
        """Stop the uploads; ``wait=False`` (the command was stopped): those under way are not waited for (a
        pack that lands names nothing: adopted or removed later). Idempotent."""
        if self._packer is not None:
            packer, self._packer = self._packer, None
            packer.close(wait=wait)

    # --- index ----------------------------------------------------------------------------------------
    def repair_index(self) -> None:
        rep = self.report
        stored = dict(self.repo.list_packs())
        indexed = {pid: size for pid, _kind, size in self.catalog.packs()}
        for pid in [p for p in indexed if p not in stored]:  # asked one by one before the index drops them: a
            try:                                             # listing that misses packs must not lose them
                stored[pid] = confirmed_size(self.repo.backend, pack_name(pid), indexed[pid])
            except ObjectNotFound:
                pass
        rep.packs_missing = len([p for p in indexed if p not in stored])
        good: list[tuple[bytes, int, list[PackEntry]]] = []  # listed in new segments, SEGMENT_PACKS at a time
        damaged: list[bytes] = []
        old = set(self.repo.list_index())
        # While the index is found intact (every segment whole, none superseded, every pack it lists stored with
        # the header it records, no pack left out) nothing is written: the packs that agree are only counted,
        # and listed again (from the catalog, which matched them) once something is found that does not agree.
        # A repair run on a healthy repository (by habit, from cron) rewrote the whole index every time, and
        # every machine's catalog then reloaded all of it.
        agreeing: list[tuple[bytes, int]] | None = [] if (not rep.packs_missing
                                                          and self._segments_intact(old, indexed)) else None
        if self.dry_run:  # the blocks the new index would list, kept on disk (a dry run writes no index)
            self.catalog.planned_begin()
        for pid, size in sorted(stored.items()):
            rep.packs_checked += 1
            if len(good) >= SEGMENT_PACKS:
                self._list_packs(good)
                good = []
            try:
                entries: list[PackEntry] | None = self.repo.read_pack_header(pid, size)
            except (IntegrityError, ObjectNotFound):
                entries = None
            if agreeing is not None:
                if (entries is not None and indexed.get(pid) == size and _one_kind(entries)
                        and (not self.read_data or self._hash_matches(pid, size))
                        and entries == self.catalog.pack_blocks(pid)):
                    agreeing.append((pid, size))
                    continue
                good += self._relist(agreeing)
                agreeing = None
            if entries is not None and not self.read_data and _one_kind(entries):
                good.append((pid, size, entries))
                continue
            if size > _largest_pack(self.repo):  # (no pack vault writes is this big: damaged or not vault's)
                rep.packs_damaged.append(pid.hex())
                if self._salvage(pid, _Ranges(self.repo.backend, pack_name(pid), size), entries):
                    damaged.append(pid)
                else:
                    rep.warnings.append(f"pack {pid.hex()[:16]} is {size:,} bytes, larger than any pack vault "
                                        "writes, and not every block it should hold could be salvaged; it is kept")
                    self._kept.append((pid, entries))
                continue
            data = self._read_pack_twice(pid, size)
            if data is None:
                continue
            if hashlib.sha256(data).digest() == pid:  # intact: its header is what was written
                try:
                    found = entries if entries is not None else parse_pack(data, self.repo.cipher)
                    if _one_kind(found):
                        good.append((pid, size, found))
                        continue
                    entries = found  # (mixed kinds: salvaged below)
                except IntegrityError:
                    pass
            rep.packs_damaged.append(pid.hex())
            if self._salvage(pid, data, entries):
                damaged.append(pid)  # every block it may hold is stored again: the pack can go
            else:
                rep.warnings.append(f"pack {pid.hex()[:16]} is damaged and not every block could be salvaged; "
                                    "it is kept (a copy may still heal it: repair --from-repo)")
                self._kept.append((pid, entries))
        if agreeing is not None:  # (every pack agreed: the index already lists exactly these, as they are)
            rep.index_rewritten = False
            return
        self._list_packs(good)
        if self.dry_run:
            self._planned = True
            self._gone = {p for p in indexed if p not in stored} | {bytes.fromhex(h) for h in rep.packs_damaged}
            return
        self._flush_new()
        # last: one segment superseding every old one (the new ones are complete by then), then deletions
        retire = []
        for s in sorted(s for s in old if s not in self._written):
            if self.repo.foreign("index", s):
                rep.warnings.append(_FOREIGN.format(f"index/{s}"))
            else:
                retire.append(s)
        self._save_segment([], [bytes.fromhex(s) for s in retire])
        self._before_delete()
        for s in retire:
            self.repo.backend.delete(f"index/{s}")
        rep.segments_deleted = len(retire)
        for pid in damaged:
            self.repo.backend.delete(pack_name(pid))
        rep.packs_deleted = len(damaged)
        self.catalog.sync(self.repo)

    def _segments_intact(self, old: set[str], indexed: dict[bytes, int]) -> bool:
        """Every index segment in the store is loaded in the catalog, none is superseded or another key's, each
        one is read again and still opens (one damaged since the catalog loaded it must go), and every pack is
        listed exactly once, as the catalog has it: the catalog keeps a pack's first listing only, so a second
        one (another size, other entries) was invisible here -- left in place, it failed every other machine's
        verify while this one's repair called the index intact."""
        if old != self.catalog.live_segments() or any(self.repo.foreign("index", s) for s in old):
            return False
        listed = 0
        for sid in sorted(old):
            try:
                seg = self.repo.load_index(sid)
            except (IntegrityError, ObjectNotFound):
                return False
            for pid, entries in seg.packs.items():
                listed += 1
                if (seg.sizes.get(pid) != indexed.get(pid)
                        or sorted(entries, key=lambda e: e.offset) != self.catalog.pack_blocks(pid)):
                    return False
        return listed == len(indexed)

    def _hash_matches(self, pid: bytes, size: int) -> bool:
        """``--read-data``: the pack's bytes match its name (read a piece at a time, never whole)."""
        try:
            self.repo.check_stored(pack_name(pid), pid.hex(), size)
        except (IntegrityError, ObjectNotFound):
            return False
        return True

    def _relist(self, agreeing: list[tuple[bytes, int]]) -> list[tuple[bytes, int, list[PackEntry]]]:
        """The packs found agreeing with the index so far, with their entries (the catalog's, which matched
        their headers), listed in new segments as the index is rewritten after all; the last part is returned
        to go on filling."""
        out = [(pid, size, self.catalog.pack_blocks(pid)) for pid, size in agreeing]
        while len(out) >= SEGMENT_PACKS:  # (the rest, with the pack that did not agree, fills one at most)
            self._list_packs(out[:SEGMENT_PACKS])
            out = out[SEGMENT_PACKS:]
        return out

    def _list_packs(self, packs: list[tuple[bytes, int, list[PackEntry]]]) -> None:
        """Packs the new index lists: written as a segment -- or, in a dry run, kept in the plan table."""
        if self.dry_run:
            self.catalog.planned_add(packs)
        elif packs:
            self._save_segment(packs)

    def _read_pack_twice(self, pid: bytes, size: int) -> bytes | None:
        """The pack's bytes; read again when they do not match its name (a read can fail once). Read as the
        ``size`` bytes listed: a store that sends a shorter body, even with a Content-Length that agrees, is
        caught (TruncatedResponse: retried, never damage) -- its blocks past the cut were counted lost."""
        data = None
        for _ in range(2):
            try:
                data = None  # (one copy in memory at a time)
                data = self.repo.backend.get(pack_name(pid), 0, size)
            except ObjectNotFound:
                return None
            if hashlib.sha256(data).digest() == pid:
                break
        return data

    def _salvage(self, pid: bytes, data: "bytes | _Ranges", entries: list[PackEntry] | None) -> bool:
        """Store again every block of a damaged pack that still authenticates. True when the pack's block list
        was known (from its header or the old index) and every block in it was salvaged. ``data``: the pack's
        bytes, or ``_Ranges`` reading each block on its own."""
        candidates = entries if entries is not None else self.catalog.pack_blocks(pid)
        view = memoryview(data) if isinstance(data, (bytes, bytearray)) else data
        complete = bool(candidates)
        for e in candidates:
            if e.offset + e.length > len(data):
                self.report.blocks_lost += 1
                complete = False
                continue
            try:
                plain = self.repo.open_block(e, view[e.offset : e.offset + e.length])
            except IntegrityError:
                self.report.blocks_lost += 1
                complete = False
                continue
            loc = self.catalog.lookup(e.block_id)
            # stored again unless the index already locates it in another pack (e.g. salvaged by an earlier run)
            self._store(e.kind, e.block_id, plain, force=loc is None or loc[0] == pid)
            self.report.blocks_salvaged += 1
        return complete

    # --- what the snapshots need that the index lacks ----------------------------------------------------
    def _missing(self, ids: list[bytes]) -> set[bytes]:
        found = self.catalog.lookup_many(ids)
        out = {b for b in ids if (b not in found or found[b][0] in self._gone) and b not in self._unindexed}
        if out and self._planned:
            out -= self.catalog.planned_among(out)
        return out

    def _indexed(self, bid: bytes) -> bool:
        """The index (as the run leaves it) locates the block."""
        loc = self.catalog.lookup(bid)
        if loc is not None and loc[0] not in self._gone:
            return True
        return self._planned and bool(self.catalog.planned_among([bid]))

    def _tree(self, cat: Catalog, repo: Repository, tid: bytes) -> list[Node] | None:
        try:
            return cat.tree(repo, tid)
        except VaultError as exc:  # damaged or missing: "not usable here"; unreadable now: repair stops
            _unless_damage(exc)
        loc = cat.planned_lookup(tid) if self._planned and cat is self.catalog else None
        if loc is not None:  # a dry run: where the new index would find it
            try:
                return Tree.decode(repo.load_block(*loc)).nodes
            except VaultError as exc:
                _unless_damage(exc)
        return None

    # --- heal from a second repository --------------------------------------------------------------------
    def heal_from(self, other: Repository, other_cat: Catalog) -> None:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), DEEPEST + 1000))
        theirs = other_cat.snapshots()
        by_origin = {s.summary.get("copied_from"): s for s in theirs if s.summary.get("copied_from")}
        by_id = {s.id: s for s in theirs}
        by_key = {(s.time, s.host, tuple(s.paths)): s for s in theirs}
        for snap in self.catalog.snapshots():
            mate = (by_origin.get(snap.id) or by_origin.get(snap.origin) or by_id.get(snap.summary.get("copied_from") or "")
                    or by_key.get((snap.time, snap.host, tuple(snap.paths))))
            if mate is None:
                continue
            self._heal_tree(snap.tree, mate.tree, other, other_cat, set())
        self._heal_by_scan(other, other_cat)
        if not self.dry_run:
            self._flush_new()
            self._drop_healed()
        # (the advice to heal from a copy was given before this very run healed from one)
        self.report.warnings = [w.replace(" (a copy may still heal it: repair --from-repo)",
                                          ": what snapshots need of it was sought in the copy (the verify after repair names "
                                          "anything still missing)")
                                for w in self.report.warnings]

    def _heal_by_scan(self, other: Repository, other_cat: Catalog) -> None:
        """The last resort, when pairing each snapshot with its copy left blocks missing -- the copy lost the
        directory listing that pairs them, or holds them only under other snapshots: every block of the second
        repository is read (pack by pack, each pack whole) and hashed with this repository's key, and one whose
        id is a missing one is stored. Reads the whole copy, only when something is still missing."""
        missing = self._missing_refs()
        if not missing:
            return
        self.log(f"repair: {len(missing)} block(s) still missing: looking for them in every pack of "
                 f"{other.backend.location}")
        for e, plain in _every_block(other, other_cat, lambda: bool(missing)):
            ours = self.repo.block_id(plain)
            if ours in missing:
                missing.discard(ours)
                self._store(e.kind, ours, plain)
                self.report.blocks_healed += 1

    def _drop_healed(self) -> None:
        """Delete the damaged packs repair kept whose every block is now stored in another pack (healed from the
        copy): kept, one would come back into the index with a later 'repair index' (which lists every pack by
        its header, without --read-data unread) and shadow the healed blocks."""
        healed = [pid for pid, entries in self._kept if entries and all(self._indexed(e.block_id) for e in entries)]
        if not healed:
            return
        self._before_delete()
        for pid in healed:
            self.repo.backend.delete(pack_name(pid))
            tag = f"pack {pid.hex()[:16]} is damaged"
            self.report.warnings = [w for w in self.report.warnings if not w.startswith(tag)]
            self.report.packs_deleted += 1
        self._kept = [k for k in self._kept if k[0] not in healed]

    def _have(self, bid: bytes) -> bool:
        return bid in self._unindexed or self._indexed(bid)

    def _heal_tree(self, ours: bytes, theirs: bytes, other: Repository, other_cat: Catalog, seen: set) -> bool:
        """Make tree ``ours`` and everything below it complete, from their tree; True when it is."""
        if (ours, theirs) in seen:
            return True
        seen.add((ours, theirs))
        their_nodes = self._tree(other_cat, other, theirs)
        if their_nodes is None:
            return False
        nodes = self._tree(self.catalog, self.repo, ours) if self._have(ours) else None
        if nodes is None:  # our tree is lost: rebuild it from theirs, it must hash to our id
            built = self._rebuild(their_nodes, other, other_cat)
            if built is None or built[0] != ours:
                self._lost_mates.setdefault(ours, (theirs, other, other_cat))  # (rebuilt in part by repair_snapshots)
                return False
            self._store(TREE, ours, built[1])
            self.report.trees_healed += 1
            return True
        mates = {n.name: n for n in their_nodes}
        ok = True
        for n in nodes:
            m = mates.get(n.name)
            if n.type == FILE:
                missing = self._missing(n.blocks)
                if not missing:
                    continue
                if m is None or m.type != FILE or len(m.blocks) != len(n.blocks):
                    ok = False
                    continue
                for mine, theirs_b in zip(n.blocks, m.blocks):
                    if mine in missing and self._take(theirs_b, other, other_cat, mine) is None:
                        ok = False
            elif n.type == DIR and n.subtree is not None and m is not None and m.type == DIR and m.subtree:
                ok = self._heal_tree(n.subtree, m.subtree, other, other_cat, seen) and ok
        return ok

    def _rebuild_tree(self, theirs: bytes, other: Repository, other_cat: Catalog) -> bytes | None:
        """Store their tree (and what it needs) here, with our ids; our tree id, or None if incomplete."""
        nodes = self._tree(other_cat, other, theirs)
        built = None if nodes is None else self._rebuild(nodes, other, other_cat)
        if built is None:
            return None
        self._store(TREE, *built)
        return built[0]

    def _rebuild(self, their_nodes: list[Node], other: Repository, other_cat: Catalog) -> tuple[bytes, bytes] | None:
        """(our tree id, its bytes) for their tree's entries, storing the blocks and subtrees it needs."""
        out = []
        for n in their_nodes:
            if n.type == FILE:
                ids = [self._take(b, other, other_cat, None) for b in n.blocks]
                if None in ids:
                    return None
                n = dataclasses.replace(n, blocks=ids)
            elif n.type == DIR and n.subtree is not None:
                sub = self._rebuild_tree(n.subtree, other, other_cat)
                if sub is None:
                    return None
                n = dataclasses.replace(n, subtree=sub)
            out.append(n)
        data = Tree(out).encode()
        return self.repo.block_id(data), data

    def _take(self, their_id: bytes, other: Repository, other_cat: Catalog, want: bytes | None) -> bytes | None:
        """Read their block; store it here under our id (which must be ``want`` when given)."""
        mine = self._ours_of.get(their_id)  # (held here already, found by _scan_own)
        if mine is not None and (want is None or mine == want):
            return mine
        loc = other_cat.lookup(their_id)
        if loc is None:
            self._untaken.add(their_id)
            return None
        try:
            plain = other.load_block(*loc)
        except VaultError as exc:
            _unless_damage(exc)
            self._untaken.add(their_id)
            return None
        ours = self.repo.block_id(plain)
        if want is not None and ours != want:
            return None
        if not self._have(ours):
            self._store(DATA, ours, plain)
            self.report.blocks_healed += 1
        return ours

    # --- manifests and key slots ---------------------------------------------------------------------------
    def repair_manifests(self, other: Repository | None = None, other_cat: Catalog | None = None) -> None:
        """Remove snapshot manifests that cannot be read; with a second repository, first write them again
        from its copy (same time, host, paths and tags; the tree rebuilt and checked block by block)."""
        mates = {}
        if other_cat is not None:
            mates = {s.summary.get("copied_from"): s for s in other_cat.snapshots() if s.summary.get("copied_from")}
        unreadable = []
        for sid in self.repo.list_snapshots():
            if self._readable(sid):
                continue
            if self.repo.foreign("snapshots", sid):
                self.report.warnings.append(_FOREIGN.format(f"snapshots/{sid}"))
                continue
            unreadable.append(sid)
        entries = []
        for sid in unreadable:
            entry = {"old": sid, "new": None, "files_dropped": 0, "manifest": "unreadable"}
            mate = mates.get(sid)
            if mate is not None and other is not None:
                self._write_from_copy(mate, other, other_cat, entry)
            entries.append(entry)
        self.report.snapshots_rewritten += entries
        if other is not None:
            self._restore_deleted_from_copy(other, other_cat, set(unreadable))
        if self.dry_run or not unreadable:
            return
        if any(e["new"] is None for e in entries):
            # before any manifest is deleted: a kill in between must not leave a root tree nothing names
            self._recover_orphan_roots(set(unreadable))
        self._before_delete()
        known = {snap.id: snap.tree for snap in self.catalog.snapshots()}  # (read before it became unreadable)
        self._record([(sid, known.get(sid), "unreadable manifest") for sid in unreadable])
        for sid in unreadable:
            self.repo.backend.delete(f"snapshots/{sid}")
        self.catalog.sync(self.repo)

    def _write_from_copy(self, mate: Snapshot, other: Repository, other_cat: Catalog, entry: dict) -> None:
        """Write snapshot ``mate`` of the second repository here again (same time, host, paths and tags; its tree
        rebuilt and checked block by block), noting it in ``entry``; nothing when the tree cannot be."""
        root = self._rebuild_tree(mate.tree, other, other_cat)
        if root is not None and self.dry_run:
            entry["healed_from_copy"] = mate.id
        elif root is not None:
            self._flush_new()
            new = Snapshot(time=mate.time, host=mate.host, paths=list(mate.paths), tree=root,
                           tags=list(mate.tags), username=mate.username, parent=None,
                           summary={**{k: v for k, v in moved_summary(mate.summary, mate.tree, root).items()
                                       if k not in ("copied_from", "copied_from_repo")},
                                    "restored_from_copy": mate.id, "origin": mate.origin})
            self.repo.save_snapshot(new)
            self.catalog.add_snapshot(new)
            entry["new"], entry["healed_from_copy"] = new.id, mate.id

    def _restore_deleted_from_copy(self, other: Repository, other_cat: Catalog, unreadable: set[str]) -> None:
        """A manifest deleted from this repository without a forget, that no catalog here had read (a new
        machine): the second repository's copy of it says it was here (``copied_from``, of a copy made from this
        very repository: ``copied_from_repo``), and no ``logs/`` record here lets it go -- it is written again
        from the copy. Otherwise nothing here knew of it: repair and verify said clean, and the next prune
        deleted its data."""
        listed = set(self.repo.list_snapshots())
        held = set().union(*(s.copy_keys() for s in self.catalog.snapshots()), *(s.copy_keys() for s in
                                                                                  self.catalog.lost_snapshots()))
        candidates = [m for m in other_cat.snapshots()
                      if m.summary.get("copied_from_repo") == self.repo.id and isinstance(m.summary.get("copied_from"), str)
                      and m.summary["copied_from"] not in listed | unreadable and not (m.copy_keys() & held)]
        if not candidates:
            return
        let_go: set[str] = set()  # ids let go for good (forget, tag, repair)
        written_as: dict[str, list[str]] = {}  # ids an earlier run wrote back from the copy -> as which
        for lid in self.repo.list_logs():
            try:
                doc = self.repo.load_log(lid)
                if doc.get("replaces_unreadable"):  # (standing for a record repair found unreadable: as that one)
                    raise ValueError(f"it stands for logs/{str(doc['replaces_unreadable'])[:16]}, which could not "
                                     "be read")
                for d in doc.get("decisions", []):
                    if d.get("keep") or not isinstance(d.get("id"), str):
                        continue
                    if isinstance(d.get("written_as"), str):
                        written_as.setdefault(d["id"], []).append(d["written_as"])
                    else:
                        let_go.add(d["id"])
            except (VaultError, ValueError, TypeError, AttributeError, KeyError) as exc:
                # the forgets are not all known: one of these may have been forgotten -- none is written back
                if isinstance(exc, VaultError):
                    _unless_damage(exc)
                self.report.warnings.append(
                    f"logs/{lid} cannot be read ({exc}): the snapshots this repository forgot are not all known, so "
                    f"{len(candidates)} snapshot(s) of the copy that are not here are not written back (restore them "
                    "from the copy, or copy them back with 'vault copy')")
                return
        written = []
        for mate in sorted(candidates, key=lambda s: (s.time, s.id)):
            old = mate.summary["copied_from"]
            # forgotten: the id itself, or the one an earlier repair wrote it back as (that forget is final); one
            # written back whose new manifest is gone again without a forget is written back again
            if old in let_go or any(n in let_go for n in written_as.get(old, ())) or mate.copy_keys() & held:
                continue
            entry = {"old": old, "new": None, "files_dropped": 0,
                     "manifest": "missing (deleted without a forget; the copy holds it)"}
            self._write_from_copy(mate, other, other_cat, entry)
            if entry.get("healed_from_copy"):
                held |= mate.copy_keys()
                self.report.snapshots_rewritten.append(entry)
                if entry["new"]:
                    written.append({"id": old, "keep": False, "written_as": entry["new"],
                                    "reasons": [f"manifest missing: written again from the copy as {entry['new']}"]})
        if written:  # (the old id is let go as written back, not forgotten: a forget of the new one is then final)
            self.repo.save_log("repair", "repair", written)

    def _record(self, gone: list[tuple[str, bytes | None, str]]) -> None:
        """A ``logs/`` record of the manifests repair lets go, (id, root tree or None, why) each, written before
        they are deleted (as forget's): a catalog that had read one knows it was not lost."""
        self.repo.save_log("repair", "repair", [{"id": sid, **({"tree": tree.hex()} if tree else {}), "keep": False,
                                                 "reasons": [why]} for sid, tree, why in gone])

    def restore_lost(self) -> None:
        """Write again each snapshot whose manifest vanished without a forget, from what this machine's catalog
        read of it (same time, host, paths, tags and root tree; a new id, ``summary.restored_from_catalog``), and
        record that the old id is let go (``_record``). Runs before healing and before the snapshots are
        checked: a root tree that is lost too is then healed from a copy, stored again from this machine's
        catalog, or dropped file by file like any snapshot's (``repair_snapshots``) -- never let go whole."""
        lost = self.catalog.lost_snapshots()  # (as of this run's sync, under its exclusive lock: settled by then)
        if not lost:
            return
        unsealed = self.catalog.unsealed_lost()
        done = []
        for snap in lost:
            if snap.id in unsealed:  # (let go, said: a forged record must never become a real snapshot)
                self.report.warnings.append(
                    f"snapshot {snap.short_id} ({snap.host}, {', '.join(snap.paths)[:200]}, {format_time(snap.time)}): "
                    "manifest missing, and this machine's record of it is not sealed (read by an earlier vault, or "
                    "edited): not written back from it; let go")
                done.append((snap.id, snap.tree, "manifest missing; this machine's record of it not sealed"))
                continue
            entry = {"old": snap.id, "new": None, "files_dropped": 0, "manifest": "missing (deleted without a forget)",
                     "restored_from_catalog": True}
            if not self.dry_run:
                new = Snapshot(time=snap.time, host=snap.host, paths=list(snap.paths), tree=snap.tree,
                               tags=list(snap.tags), username=snap.username, parent=snap.parent,
                               summary={**snap.summary, "restored_from_catalog": snap.id, "origin": snap.origin})
                self.repo.save_snapshot(new)
                self.catalog.add_snapshot(new)
                entry["new"] = new.id
            self.report.snapshots_rewritten.append(entry)
            done.append((snap.id, snap.tree, entry["manifest"]))
        if not self.dry_run:
            self._record(done)
            self.catalog.drop_lost([sid for sid, _, _ in done])

    def _readable(self, sid: str) -> bool:
        """False only when the manifest fails to load twice (a read can fail once) for a reason of its own."""
        for _ in range(2):
            try:
                self.repo.load_snapshot(sid)
                return True
            except (IntegrityError, ObjectNotFound):
                continue
            except VaultError:
                return True  # not the manifest's fault (e.g. the store is down): never delete on that
        return False

    def _recover_orphan_roots(self, unreadable: set[str]) -> None:
        """A lost manifest leaves its directory trees behind: every tree that no other tree, no snapshot and no
        forget record names becomes a snapshot tagged ``recovered`` (host ``recovered``, time of the repair), so
        its files can be restored. (A root left by an interrupted backup is recovered too: forget it if
        unwanted.)"""
        from datetime import datetime, timezone

        trees = self.catalog.tree_block_ids()
        cached = self.catalog.snapshots()  # (cached before the damage, when this machine synced it then)
        named = {s.tree for s in cached if s.id not in unreadable}
        lost = {s.tree for s in cached if s.id in unreadable}  # the roots the unreadable manifests named
        unknown = unreadable - {s.id for s in cached}  # unreadable ones this catalog never read: roots unknown
        forgotten: set[bytes] = set()
        for lid in self.repo.list_logs():  # the roots of forgotten snapshots stay forgotten...
            try:
                log = self.repo.load_log(lid)
                forgotten.update(bytes.fromhex(d["tree"]) for d in log.get("decisions", []) if not d.get("keep")
                                 and isinstance(d.get("tree"), str) and len(d["tree"]) == 64)
            except (VaultError, ValueError, TypeError, AttributeError):
                continue
        # ...unless a lost manifest named the same tree (nightly backups of unchanged data share one), or may
        # have: with a manifest whose root is unknown, a forgotten root is recovered too (forget it again)
        if not unknown:
            named |= forgotten - lost
        for tid in trees:
            nodes = self._tree(self.catalog, self.repo, tid)
            for n in nodes or []:
                if n.type == DIR and n.subtree is not None:
                    named.add(n.subtree)
        for tid in trees:
            if tid in named:
                continue
            new = Snapshot(time=datetime.now(timezone.utc), host="recovered", paths=["/recovered"], tree=tid,
                           tags=["recovered"], summary={"recovered_tree": tid.hex()})
            self.repo.save_snapshot(new)
            self.catalog.add_snapshot(new)
            self.report.snapshots_rewritten.append({"old": None, "new": new.id, "files_dropped": 0,
                                                    "manifest": "recovered from an orphan tree"})

    def settle_logs(self) -> None:
        """A ``logs/`` record that no longer opens (verify calls it damage) is replaced by one that says so
        (``replaces_unreadable``), then deleted: what it let go stays unknown, so ``repair --from-repo`` keeps
        writing no deleted manifest back from a copy, as with the damaged record; verify is clean again."""
        for lid in self.repo.list_logs():
            problem = self.repo.log_problem(lid)
            if problem is None:
                continue
            if self.dry_run:
                self.report.warnings.append(f"logs/{lid} cannot be read ({problem}): would be replaced by a record "
                                            "that it was lost")
                continue
            new = self.repo.save_log("repair", "an unreadable record replaced", [], replaces=lid)
            self._before_delete()  # (still our exclusive lock)
            self.repo.backend.delete(f"logs/{lid}")
            self.report.warnings.append(
                f"logs/{lid} cannot be read ({problem}): replaced by logs/{new[:16]}, a record that it was lost; the "
                "snapshots it let go are not known, so repair --from-repo writes no deleted manifest back from a copy "
                "(copy them back with 'vault copy')")

    def repair_keys(self) -> None:
        """Put back a ``config`` changed since init (from the copy sealed in the key slot that opened it); delete
        key slots that no longer parse (never the one this run opened with): they open nothing."""
        if self.repo.config_problem:
            self.report.warnings.append(("config: would be written back" if self.dry_run else "config: written back")
                                        + " from the copy sealed in the key slot")
            if not self.dry_run:
                self.repo.backend.put("config", self.repo.config.encode(), overwrite=True)
                self.repo.config_problem = None
        for name, info in self.repo.list_keys():
            if info is None and name != self.repo.key_name and self.repo.slot_malformed(name):
                self.report.warnings.append(f"{name}: damaged or malformed key slot " + ("would be removed" if self.dry_run
                                                                             else "removed"))
                if not self.dry_run:
                    self.repo.backend.delete(name)

    # --- snapshots -------------------------------------------------------------------------------------
    def repair_snapshots(self) -> None:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), DEEPEST + 1000))
        snaps = self.catalog.snapshots()
        replaced = replaced_by_repair(snaps)
        for snap in snaps:
            if snap.id in replaced:
                continue  # an earlier repair wrote its replacement already
            memo: dict[bytes, bytes | None] = {}
            dropped: list[str] = []
            new_root = self._clean_tree(snap.tree, b"", memo, dropped)
            if new_root == snap.tree:
                continue
            self.report.files_dropped += dropped
            if self.dry_run:
                self.report.snapshots_rewritten.append({"old": snap.id, "new": None, "files_dropped": len(dropped)})
                continue
            self._flush_new()
            new = Snapshot(time=snap.time, host=snap.host, paths=list(snap.paths), tree=new_root,
                           tags=sorted(set(snap.tags) | {"repaired"}), username=snap.username, parent=snap.id,
                           summary={**moved_summary(snap.summary, snap.tree, new_root), "repaired_from": snap.id,
                                    "files_dropped": len(dropped)})
            self.repo.save_snapshot(new)
            self.catalog.add_snapshot(new)
            self.report.snapshots_rewritten.append({"old": snap.id, "new": new.id, "files_dropped": len(dropped)})
        if not self.dry_run:  # (listings stored again from the catalog, for snapshots that needed nothing else)
            self._flush_new()

    def _clean_tree(self, tid: bytes, base: bytes, memo: dict, dropped: list[str]) -> bytes:
        """The id of ``tid`` without the entries whose data is lost (itself when nothing is lost)."""
        if tid in memo:
            return memo[tid]
        nodes = self._tree(self.catalog, self.repo, tid) if self._have(tid) else self._from_cache(tid)
        if nodes is None and tid in self._lost_mates:
            new = self._from_copy_in_part(tid, base, dropped, memo)
            if new is not None:
                memo[tid] = new
                return new
        if nodes is None:
            dropped.append(os.fsdecode(base) + "/ (directory listing lost)")
            out_nodes: list[Node] = []
        else:
            out_nodes = []
            for n in nodes:
                path = base + b"/" + n.name
                if n.type == FILE and self._missing(n.blocks):
                    dropped.append(os.fsdecode(path))
                    continue
                if n.type == DIR and n.subtree is not None:
                    sub = self._clean_tree(n.subtree, path, memo, dropped)
                    if sub != n.subtree:
                        n = dataclasses.replace(n, subtree=sub)
                out_nodes.append(n)
            if len(out_nodes) == len(nodes) and all(a is b for a, b in zip(out_nodes, nodes)):
                memo[tid] = tid
                return tid
        data = Tree(out_nodes).encode()
        new = self.repo.block_id(data)
        self._store(TREE, new, data)
        memo[tid] = new
        return new

    def _from_copy_in_part(self, tid: bytes, base: bytes, dropped: list[str], memo: dict) -> bytes | None:
        """Our lost tree ``tid`` whose copy could not be rebuilt whole (the copy lost some of its data too): a new
        tree from the copy's, with the files whose data neither repository holds left out (named in
        ``dropped``) -- not the whole listing dropped. The blocks the copy lacks are first looked for here, under
        our own ids (``_scan_own``): only the listing may be lost here, and only the data there."""
        theirs, other, other_cat = self._lost_mates[tid]
        lost: list[str] = []
        nodes = self._nodes_from_copy(theirs, other, other_cat, base, lost)
        if self._untaken - self._scanned:
            self._scan_own(other, self._untaken - self._scanned)
            lost = []
            nodes = self._nodes_from_copy(theirs, other, other_cat, base, lost)
        if nodes is None:
            return None
        dropped += lost
        data = Tree(nodes).encode()
        new = self.repo.block_id(data)
        self._store(TREE, new, data)
        if new == tid:  # (rebuilt whole after all: the lost listing itself, healed)
            self.report.trees_healed += 1
        memo[new] = new
        return new

    def _nodes_from_copy(self, theirs: bytes, other: Repository, other_cat: Catalog, base: bytes,
                         lost: list[str]) -> list[Node] | None:
        their_nodes = self._tree(other_cat, other, theirs)
        if their_nodes is None:
            return None
        out = []
        for n in their_nodes:
            path = base + b"/" + n.name
            if n.type == FILE:
                ids = [self._take(b, other, other_cat, None) for b in n.blocks]
                if None in ids:
                    lost.append(os.fsdecode(path))
                    continue
                n = dataclasses.replace(n, blocks=ids)
            elif n.type == DIR and n.subtree is not None:
                sub = self._nodes_from_copy(n.subtree, other, other_cat, path, lost)
                if sub is None:
                    lost.append(os.fsdecode(path) + "/ (directory listing lost)")
                    sub = []
                data = Tree(sub).encode()
                sid = self.repo.block_id(data)
                self._store(TREE, sid, data)
                n = dataclasses.replace(n, subtree=sid)
            out.append(n)
        return out

    def _scan_own(self, other: Repository, wanted: set[bytes]) -> None:
        """Every block of this repository, hashed with the second one's key: those whose id there is one of
        ``wanted`` (blocks the copy could not supply) are held here already -- under which id of ours."""
        self._scanned |= wanted
        self.log(f"repair: {len(wanted)} block(s) the second repository lacks: looking for them in every pack here")
        for e, plain in _every_block(self.repo, self.catalog, lambda: len(self._ours_of) < len(self._scanned)):
            t = other.block_id(plain)
            if t in wanted:
                self._ours_of[t] = e.block_id

    def _from_cache(self, tid: bytes) -> list[Node] | None:
        """A lost directory listing that this machine's catalog still holds (sealed when it was validated): stored
        again when its canonical encoding gives back exactly ``tid`` -- then it is that very tree -- and its
        nodes returned; None otherwise (lost)."""
        try:
            entries = self.catalog.cached_entries(self.repo, tid)
        except VaultError:
            return None
        if entries is None:
            return None
        nodes = [entries_mod.node(e) for e in entries]
        data = Tree(nodes).encode()
        if self.repo.block_id(data) != tid:
            return None
        self._store(TREE, tid, data)
        self.report.trees_from_cache += 1
        return nodes

    def still_missing(self) -> int:
        """Referenced blocks no index locates (after the steps run), over every snapshot."""
        self.report.still_missing = len(self._missing_refs())
        return self.report.still_missing

    def _missing_refs(self) -> set[bytes]:
        """The blocks and trees the snapshots reference that neither the index nor this run locates."""
        missing: set[bytes] = set()
        seen: set[bytes] = set()
        for snap in self.catalog.snapshots():
            stack = [snap.tree]
            while stack:
                tid = stack.pop()
                if tid in seen:
                    continue
                seen.add(tid)
                nodes = self._tree(self.catalog, self.repo, tid) if self._have(tid) else None
                if nodes is None:
                    missing.add(tid)
                    continue
                missing |= self._missing([b for n in nodes if n.type == FILE for b in n.blocks])
                stack.extend(n.subtree for n in nodes if n.type == DIR and n.subtree is not None)
        return missing


_FOREIGN = ("{} is intact (its bytes match its name) but the keys in use do not open it: written with other keys "
            "(a key slot copied in from another repository, or planted); left alone -- delete it by hand only if "
            "it is not this repository's")


def _largest_pack(repo: Repository) -> int:
    """Beyond this size an object in data/ is no pack vault wrote (one is at most ``pack_size`` plus one block
    and its header; tree blocks given room): it is never read whole into memory (``_Ranges``)."""
    return repo.config.pack_size + repo.config.chunker.max_size + (256 << 20)


def _every_block(repo: Repository, cat: Catalog, more: Callable[[], bool]) -> Iterator[tuple[PackEntry, bytes]]:
    """(entry, plaintext) of every block of ``repo`` that authenticates, pack by pack (each pack read whole,
    none larger than any pack vault writes), while ``more()``; packs that cannot be read are passed over."""
    largest = _largest_pack(repo)
    for pid, _kind, size in cat.packs():
        if not more():
            return
        if size > largest:
            continue
        try:
            data = repo.backend.get(pack_name(pid), 0, size)
        except VaultError as exc:
            _unless_damage(exc)
            continue
        view = memoryview(data)
        for e in cat.pack_blocks(pid):
            if e.offset + e.length > len(data):
                continue
            try:
                plain = repo.open_block(e, view[e.offset : e.offset + e.length])
            except IntegrityError:
                continue
            yield e, plain
        del view, data


def _one_kind(entries: list[PackEntry]) -> bool:
    """No writer mixes block kinds in a pack, and no index segment can list a pack that does: its blocks are
    salvaged (stored again in proper packs) instead."""
    return len({e.kind for e in entries}) <= 1


def _unless_damage(exc: VaultError) -> None:
    """Re-raise a read failure that says nothing against the data (permissions, descriptors, a store that
    stayed unreachable): repair must never drop or rewrite what it merely could not read just now."""
    if not is_damage(exc):
        raise exc
