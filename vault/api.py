"""The library facade: one function per command. Opens and locks the repository, returns result dataclasses.

Every function takes a resolved ``Settings`` and a password getter; nothing here prints, exits or reads the
environment (``vault.config`` does). Results are dataclasses (``BackupResult``, ``ForgetResult``...) or the
engines' reports, with the requests the command made; the CLI renders them as text or ``--json``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import stopsignals
from .archiver import Archiver, BackupOptions
from .backup_workers import BackupWorkers
from .backend.counting import sum_stats
from .catalog import Catalog
from .checker import Checker, Damage, VerifyReport, parse_subset, whole_below
from .chunker import ChunkerParams
from .config import DEFAULT_LOCK_WAIT, Settings
from .crypto import KdfParams, MasterKeys
from .dumper import Dumper
from .copier import Copier, CopyReport
from .errors import (CacheUnavailable, CatalogBusy, CatalogError, CatalogInUse, IntegrityError, SnapshotNotFound,
                     UsageError, VaultError, VaultWarning, is_damage)
from .excludes import Matcher, compile_glob
from .ids import resolve_prefix
from .locks import remove_locks
from .model import DIR, FILE, Node, Snapshot, format_time, replaced_by_repair
from .pruner import PruneOptions, PruneReport, Pruner
from .repairer import RepairReport, Repairer
from . import forkpool, retention
from .retention import Decision, Group, Policy
from .repository import Repository
from .restorer import RestoreOptions, RestoreResult, Restorer
from .session import (PasswordFn, Session, cache_key, local_repo_path, naming, open_store, other_session,
                      prefetch_width, session)
from .timespec import parse_time

# --- init ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitResult:
    repository_id: str
    location: str

    def to_json(self) -> dict:
        return {"repository_id": self.repository_id, "location": self.location}


def init(settings: Settings, password: bytes | PasswordFn, kdf: KdfParams | None = None, chunker: ChunkerParams | None = None,
         compression_level: int = 1, pack_size: int = 16 * 1024 * 1024,
         chunker_from: tuple[Settings, PasswordFn] | None = None) -> InitResult:
    """Create a repository. ``chunker_from`` (settings, password) of another repository: use its chunker
    parameters and secret seed, so copies between the two cut data identically and deduplicate."""
    keys = None
    if chunker_from is not None:
        with naming("the repository of --copy-chunker-params-from"):
            other = Repository.open(open_store(chunker_from[0]), chunker_from[1])
        chunker = other.config.chunker
        keys = dataclasses.replace(MasterKeys.generate(), chunker_seed=other.keys.chunker_seed)
    backend = open_store(settings)
    repo = Repository.create(backend, password, kdf=kdf or KdfParams(), chunker=chunker or ChunkerParams(),
                             compression_level=compression_level, pack_size=pack_size, keys=keys)
    root = local_repo_path(settings)
    with contextlib.suppress(OSError):
        mode = os.stat(root).st_mode if root else 0
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:  # (a directory made beforehand: followed as it is)
            warnings.warn(f"{root} is writable by every local user (mode {stat.S_IMODE(mode):04o}): anyone here "
                          f"can delete the repository's files; chmod o-rwx {root}", VaultWarning, stacklevel=2)
    return InitResult(repo.id, backend.location)


# --- snapshots ----------------------------------------------------------------------------------------
@dataclass
class SnapshotFilter:
    hosts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # each item "a,b" = all of a and b; items are alternatives
    paths: list[str] = field(default_factory=list)

    def matches(self, s: Snapshot) -> bool:
        if self.hosts and s.host not in self.hosts:
            return False
        if self.tags and not any(_matches_tag_filter(t, s.tags) for t in self.tags):
            return False
        if self.paths:
            want = {os.fsdecode(_normalize(p)) for p in self.paths}  # ("//x" is "/x", as backup stored it)
            if not want <= set(s.paths):
                return False
        return True


def _matches_tag_filter(spec: str, tags: list[str]) -> bool:
    """``--tag a,b``: the snapshot has both (or the one tag "a,b" an older vault stored); ``--tag ''`` (as
    restic): it has no tags at all."""
    wanted = {t for t in spec.split(",") if t}
    return (wanted <= set(tags) or spec in tags) if wanted else not tags


def list_snapshots(sess: Session, flt: SnapshotFilter | None = None, latest: int | None = None) -> list[Snapshot]:
    """The snapshots that match ``flt``, oldest first; with ``latest``, only the newest ``latest`` of each
    (host, paths) group (``snapshots --latest N``, as restic's), the order kept."""
    snaps = [s for s in sess.catalog.snapshots() if flt is None or flt.matches(s)]
    if latest is not None:
        kept, seen = [], collections.Counter()
        for s in reversed(snaps):
            group = s.group_key()
            if seen[group] < latest:
                seen[group] += 1
                kept.append(s)
        snaps = kept[::-1]
    return snaps


def find_snapshot(sess: Session, spec: str | None, at: str | None = None, flt: SnapshotFilter | None = None,
                  now: datetime | None = None) -> Snapshot:
    """Resolve a full id, unique prefix, ``latest``, or ``--at TIME`` (newest at or before TIME). For
    ``latest`` and ``--at``, a snapshot that 'vault repair' replaced yields to its replacement."""
    every = list_snapshots(sess, flt)
    replaced = replaced_by_repair(every)
    snaps = [s for s in every if s.id not in replaced]
    unreadable = sess.sync.unreadable
    if at is not None:
        when = parse_time(at, now or datetime.now(timezone.utc), whole=True)
        older = [s for s in snaps if s.time <= when]
        if not older:
            filtered = flt is not None and bool(flt.hosts or flt.tags or flt.paths)
            what = f"no snapshot taken at or before {format_time(when)}" + (" matching the filters" if filtered else "")
            if unreadable:  # one of them may be it: damage (exit 20), not "none"
                raise IntegrityError(f"{what} can be read ({_unreadable_ids(unreadable)} cannot: run 'vault verify')")
            raise SnapshotNotFound(what)
        return _whole_original(sess, older[-1], every)
    if spec is None:
        raise UsageError("name a snapshot (id, prefix or 'latest') or use --at TIME")
    if spec == "latest":
        if not snaps:
            filtered = flt is not None and bool(flt.hosts or flt.tags or flt.paths)
            what = "the repository has no snapshots" + (" matching the filters" if filtered else "")
            if unreadable:
                raise IntegrityError(f"{what} that can be read ({_unreadable_ids(unreadable)} cannot: run "
                                     "'vault verify')")
            raise SnapshotNotFound(what)
        return _whole_original(sess, snaps[-1], every)
    sid = resolve_prefix(spec, [s.id for s in list_snapshots(sess)] + list(unreadable))
    if sid in unreadable:  # named, but its manifest is damaged or lost: damage, not "no such snapshot"
        lost = unreadable[sid].startswith("manifest missing")  # (the advice is in the reason)
        raise IntegrityError(f"snapshot {sid[:8]} cannot be read: {unreadable[sid]}" + ("" if lost else
                             " (run 'vault verify'; 'vault repair' removes it, or heals it with --from-repo and a copy)"))
    snap = next(s for s in sess.catalog.snapshots() if s.id == sid)
    if flt is not None and not flt.matches(snap):  # (a full id or prefix the filters leave out: never taken)
        raise SnapshotNotFound(f"snapshot {snap.short_id} does not match the --host/--tag/--path given")
    return snap


def _whole_original(sess: Session, snap: Snapshot, every: list[Snapshot], seen: frozenset = frozenset()) -> Snapshot:
    """``latest`` and ``--at`` take repair's replacement of a snapshot (it lacks the files whose data was lost),
    unless the original restores whole again -- a later backup, a copy or ``repair --from-repo`` stored what it
    lacked: then the original, with a warning (the replacement would leave those files out for nothing)."""
    original = next((s for s in every if s.id == snap.repaired_from and s.id not in seen | {snap.id}), None)
    if original is None or (original.time, original.host, original.paths) != (snap.time, snap.host, snap.paths):
        return snap  # (seen: manifests naming each other in a ring -- only a key holder can write them -- end here)
    if not _restores_whole(sess, original):
        return snap
    warnings.warn(f"snapshot {original.short_id} was repaired as {snap.short_id}, but the data it lost has been "
                  f"stored again since: {original.short_id} restores whole, and is the one used (forget whichever "
                  "of the two you do not need)", VaultWarning, stacklevel=2)
    return _whole_original(sess, original, every, seen | {snap.id})  # (repaired twice: the one before)


def _restores_whole(sess: Session, snap: Snapshot) -> bool:
    """Whether every tree and file block ``snap`` references is in the index (``checker.whole_below``)."""
    def read(tid: bytes) -> tuple[list | None, str | None]:
        try:
            return sess.catalog.tree_entries(sess.repo, tid), None
        except VaultError as exc:
            if isinstance(exc, CatalogError) or not is_damage(exc):
                raise
            return None, str(exc)

    return whole_below(sess.catalog, sess.repo, snap.tree, read)


def _unreadable_ids(unreadable: dict[str, str]) -> str:
    ids = sorted(unreadable)
    return (f"snapshot {ids[0][:8]}" if len(ids) == 1 else
            f"{len(ids)} snapshots ({', '.join(i[:8] for i in ids[:5])}{', ...' if len(ids) > 5 else ''})")


def passed_over(sess: Session, spec: str | None, at: str | None = None,
                chosen: Snapshot | None = None) -> dict[str, str]:
    """The snapshots whose manifests could not be read (id -> why) when ``latest`` or ``--at`` chose among the
    rest: one of them may be the snapshot that was meant (their times are unknown) -- except a lost manifest
    this machine's catalog had read (its time is known) older than ``chosen``."""
    if not (spec == "latest" or at is not None):
        return {}
    out = dict(sess.sync.unreadable)
    if chosen is not None and out:
        for snap in sess.catalog.lost_snapshots():
            if (snap.time, snap.id) < (chosen.time, chosen.id):
                out.pop(snap.id, None)
    return out


# --- backup -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str | None
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs: int
    bytes_processed: int
    bytes_added: int
    duration_s: float
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]
    dry_run: bool
    requests: dict
    packs_adopted: int = 0

    def to_json(self) -> dict:
        return {"snapshot_id": self.snapshot_id, "files_new": self.files_new, "files_changed": self.files_changed,
                "files_unmodified": self.files_unmodified, "dirs": self.dirs,
                "bytes_processed": self.bytes_processed, "bytes_added": self.bytes_added,
                "duration_s": round(self.duration_s, 3), "dry_run": self.dry_run, "packs_adopted": self.packs_adopted,
                "errors": [{"path": p, "error": m} for p, m in self.errors],
                "warnings": [{"path": p, "warning": m} for p, m in self.warnings], **self.requests}


def backup(settings: Settings, password: PasswordFn, opts: BackupOptions,
           progress: Callable[[object], None] | None = None) -> BackupResult:
    skip = [settings.cache_dir]
    local = local_repo_path(settings)
    if local:
        skip.append(local)
    remote = local is None
    opts = BackupOptions(**{**opts.__dict__, "skip_paths": [*opts.skip_paths, *skip],
                            "jobs": opts.jobs or settings.jobs,
                            "uploaders": settings.connection_count() if remote else opts.uploaders})
    workers: list[BackupWorkers] = []

    def fork_workers(repo: Repository) -> None:
        """A local repository: files are read by worker processes, forked before the catalog is opened."""
        processes = min(opts.jobs or _default_processes(), forkpool.fd_room(per=8))
        if remote or opts.dry_run or opts.stdin_name is not None or processes < 2 or not forkpool.available():
            return
        try:
            workers.append(BackupWorkers(repo, processes, Catalog.file_path(settings.cache_dir,
                                                                         cache_key(settings, repo.id))))
        except (OSError, forkpool.ForkFailed):  # (no anonymous file for the claims lock, no fork): threads do it
            pass

    try:
        with session(settings, password, lock=None if opts.dry_run else "shared", operation="backup",
                     before_catalog=fork_workers) as sess:
            opts = dataclasses.replace(opts, before_commit=sess.check_lock,
                                       adopt_leftovers=not opts.dry_run and sess.begin_storing())
            arch = Archiver(sess.repo, sess.catalog, opts, progress=progress, workers=workers[0] if workers else None)
            if opts.stdin_name is not None:
                snap = arch.run_stream(opts.stdin_name, opts.stdin_fd, opts.stdin_check)
            else:
                snap = arch.run()
            if not opts.dry_run:
                sess.end_storing()  # (reached only when the run named every pack it stored: an error raised)
            s = arch.stats
            requests = sum_stats([sess.requests(), *(workers[0].requests if workers else [])])
            return BackupResult(snap.id if snap else None, s.files_new, s.files_changed, s.files_unmodified, s.dirs,
                                s.bytes_processed, s.bytes_added, arch.stats_duration, s.errors, s.warnings,
                                opts.dry_run, requests, s.packs_adopted)
    finally:
        for w in workers:
            w.close()


# --- restore ------------------------------------------------------------------------------------------
def _default_processes() -> int:
    """Worker processes for a local repository's restore or verify: one per usable core, at most 4 (each
    adds its own memory)."""
    return min(forkpool.cores(), 4)


def _capped(jobs: int, processes: int) -> tuple[int, int]:
    """Threads and processes within what the descriptor limit leaves room for (a tiny `ulimit -n`: fewer
    workers, not "Too many open files" half way through)."""
    jobs = min(jobs, forkpool.fd_room())
    return jobs, min(processes, jobs)


def restore(settings: Settings, password: PasswordFn, spec: str | None, opts: RestoreOptions, at: str | None = None,
            flt: SnapshotFilter | None = None) -> tuple[Snapshot, RestoreResult]:
    sub = None
    if spec is not None and ":" in spec:  # SNAPSHOT:PATH (restic's): that directory's content into the target
        spec, sub = spec.split(":", 1)
        if not spec or not sub:
            raise UsageError("SNAPSHOT:PATH needs both: e.g. latest:/srv/www")
    with session(settings, password, lock="shared", operation="restore") as sess:
        snap = find_snapshot(sess, spec, at, flt)
        root = snap
        found = _entry_at(sess, snap, sub) if sub is not None else None  # (None: "latest:/", the whole snapshot)
        if found is not None:
            _, node = found
            if node.type != DIR or node.subtree is None:
                raise VaultError(f"{sub} is a {node.type} in snapshot {snap.short_id}: SNAPSHOT:PATH restores a "
                                 "directory's content (one file: 'vault dump SNAPSHOT PATH > FILE')")
            root = dataclasses.replace(snap, tree=node.subtree)
        jobs, fetches = opts.jobs or settings.jobs or 0, 0
        if local_repo_path(settings) is None:  # remote: threads, one range fetch per connection (the network
            processes = 1                       # is the wait: all connections can serve one big file), and a
            fetches = settings.connection_count()  # thread per core more, working on what was fetched
            jobs = max(jobs, fetches + min(os.cpu_count() or 2, 4))
        else:  # local: worker processes (see forkpool)
            processes = jobs = opts.processes or jobs or _default_processes()
        jobs, processes = _capped(jobs, processes)
        opts = RestoreOptions(**{**opts.__dict__, "jobs": jobs, "processes": processes, "fetches": fetches})
        result = Restorer(sess.repo, sess.catalog, root, opts, fresh_backend=lambda: open_store(settings)).run()
        if found is not None:  # (named by their paths in the snapshot, as a whole restore names them: "/sub/b"
            base = os.fsdecode(found[0])  # looked like a path on this machine)
            for named in (result.damaged, result.errors, result.warnings):
                named[:] = [(base + p if p.startswith("/") else f"{base}/{p}", why) for p, why in named]
        # every damaged file failed a block check in a pack no index segment confirms: the catalog's doing
        if (result.failed and all(why.startswith("damaged: block") for _, why in result.damaged)
                and sess.catalog.unconfirmed(sess.repo, result.failed) == set(result.failed)):
            wrong = sorted(result.failed)
            result.catalog_problem = (f"this machine's catalog disagrees with the repository's index about pack "
                                      f"{wrong[0].hex()[:16]}: the damage above may be the catalog's, not the "
                                      "repository's; run 'vault catalog rebuild', then restore again")
        result.requests = sum_stats([sess.requests(), result.requests])
        result.passed_over = passed_over(sess, spec, at, snap)
        return snap, result


def dump(settings: Settings, password: PasswordFn, spec: str | None, path: str, out, at: str | None = None,
         flt: SnapshotFilter | None = None, warn: Callable[[str], None] = lambda _m: None
         ) -> tuple[Snapshot, Dumper, dict[str, str]]:
    """``vault dump``: PATH of the snapshot to ``out`` -- a regular file's bytes, anything else (a directory,
    ``/``: the whole snapshot) as a tar stream. Returns the snapshot, the dumper (its counts) and the unreadable
    snapshots ``latest``/``--at`` passed over."""
    with session(settings, password, lock="shared", operation="dump") as sess:
        snap = find_snapshot(sess, spec, at, flt)
        window = 4 if local_repo_path(settings) is not None else settings.connection_count()
        dumper = Dumper(sess.repo, sess.catalog, out, window, warn)
        found = _entry_at(sess, snap, path)
        if found is None:  # (/: the whole snapshot)
            dumper.tar(dumper.preorder(b"", snap.tree))
        else:
            base, node = found  # (its content is walked in tar's order, not as ``ls`` walks it)
            if node.type == FILE and not path.endswith("/"):
                dumper.file(base, node)
            else:
                below = dumper.preorder(base, node.subtree) if node.type == DIR and node.subtree else iter(())
                dumper.tar(itertools.chain([(base, node)], below))
        return snap, dumper, passed_over(sess, spec, at, snap)


# --- ls / find / diff ---------------------------------------------------------------------------------
def _normalize(path: str) -> bytes:
    """A PATH in a snapshot: absolute as given, or relative to the working directory (as backup took it)."""
    if not path:  # (abspath would make it the working directory: `ls latest "$DIR"` with DIR unset)
        raise UsageError("PATH is empty: name a path in the snapshot ('/' for all of it)")
    b = os.path.abspath(os.fsencode(path))
    b = b"/" + b.strip(b"/")
    return os.path.normpath(b) if b != b"/" else b


def _entry_at(sess: Session, snap: Snapshot, path: str) -> tuple[bytes, Node] | None:
    """PATH's entry in the snapshot, (its path, its node); None for ``/``, the root, which is no entry. VaultError
    when it is not there, or when a trailing ``/`` names something other than a directory."""
    want = _normalize(path)
    if want == b"/":
        return None
    tree_id, base, node = snap.tree, b"", None
    for part in want.strip(b"/").split(b"/"):
        if node is not None:
            if node.type != DIR or node.subtree is None:
                node = None
                break
            tree_id = node.subtree
        node = next((n for n in sess.catalog.tree(sess.repo, tree_id) if n.name == part), None)
        if node is None:
            break
        base = base + b"/" + part
    if node is None:
        raise VaultError(f"{os.fsdecode(want)} is not in snapshot {snap.short_id}")
    if path.endswith(("/", "/.")) and node.type != DIR:  # (as a shell: `ls file/` is "Not a directory")
        raise VaultError(f"{path}: not a directory in snapshot {snap.short_id} (it is a {node.type})")
    return base, node


def ls(sess: Session, snap: Snapshot, path: str | None = None) -> Iterator[tuple[bytes, Node]]:
    """Every entry below ``path`` (default: the whole snapshot), recursively; ``path`` itself first."""
    found = _entry_at(sess, snap, path) if path is not None else None
    if found is None:
        yield from sess.catalog.walk(sess.repo, snap.tree)
        return
    base, node = found
    yield base, node
    if node.type == DIR and node.subtree is not None:
        yield from sess.catalog.walk(sess.repo, node.subtree, base)


BARREN_CAP = 500_000  # (path, tree) pairs find remembers as matching nothing (about 150 bytes each)


def find(sess: Session, pattern: str, flt: SnapshotFilter | None = None,
         ignore_case: bool = False) -> Iterator[tuple[Snapshot, bytes, Node]]:
    """Every (snapshot, path, node) matching ``pattern``, snapshot by snapshot, each depth-first in name order.
    A directory tree found at some path with nothing matching below it is not walked again when a later
    snapshot holds the same tree at the same path (a match depends on the path only): nightly snapshots of
    mostly unchanged data cost about their changes each, not a whole walk."""
    m = Matcher([compile_glob(pattern, fold=ignore_case)])
    barren: set[tuple[bytes, bytes]] = set()
    for snap in list_snapshots(sess, flt):
        yield from _find_in(sess, m, snap, barren)


def _find_in(sess: Session, m: Matcher, snap: Snapshot,
             barren: set[tuple[bytes, bytes]]) -> Iterator[tuple[Snapshot, bytes, Node]]:
    # a frame: [path, tree id, matches below, subdirectories not finished, parent frame]
    stack: list[list] = [[b"", snap.tree, 0, 0, None]]
    while stack:
        frame = stack.pop()
        base, tid = frame[0], frame[1]
        subs: list[list] = []
        if (base, tid) not in barren:
            for n in sess.catalog.tree(sess.repo, tid):
                path = base + b"/" + n.name
                if m.matches(path, n.type == DIR):
                    frame[2] += 1
                    yield snap, path, n
                if n.type == DIR and n.subtree is not None:
                    subs.append([path, n.subtree, 0, 0, frame])
        frame[3] = len(subs)
        stack.extend(reversed(subs))
        while frame is not None and frame[3] == 0:  # finished: its count goes up; barren ones are remembered
            if frame[2] == 0 and len(barren) < BARREN_CAP:
                barren.add((frame[0], frame[1]))
            parent = frame[4]
            if parent is not None:
                parent[2] += frame[2]
                parent[3] -= 1
            frame = parent


@dataclass
class DiffResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"added": self.added, "removed": self.removed, "modified": self.modified}


def diff(sess: Session, a: Snapshot, b: Snapshot) -> DiffResult:
    out = DiffResult()

    def content(n: Node) -> tuple:
        return (n.type, n.size, n.blocks, n.target, n.rdev, n.mode, n.mtime_ns, n.uid, n.gid, n.xattrs)

    def meta(n: Node) -> tuple:
        return (n.mode, n.mtime_ns, n.uid, n.gid, n.xattrs)

    def all_below(tid: bytes | None, base: bytes, into: list[str]) -> None:
        if tid is not None:
            into.extend(os.fsdecode(p) for p, _ in sess.catalog.walk(sess.repo, tid, base))

    stack: list[tuple[bytes | None, bytes | None, bytes]] = [(a.tree, b.tree, b"")]
    while stack:  # a stack, not recursion: any depth
        ta, tb, base = stack.pop()
        if ta == tb:
            continue
        na = {n.name: n for n in sess.catalog.tree(sess.repo, ta)} if ta else {}
        nb = {n.name: n for n in sess.catalog.tree(sess.repo, tb)} if tb else {}
        subdirs = []
        for name in sorted(set(na) | set(nb)):
            path = base + b"/" + name
            x, y = na.get(name), nb.get(name)
            if x is None:
                out.added.append(os.fsdecode(path))
                if y.type == DIR:
                    all_below(y.subtree, path, out.added)
            elif y is None:
                out.removed.append(os.fsdecode(path))
                if x.type == DIR:
                    all_below(x.subtree, path, out.removed)
            elif x.type == DIR and y.type == DIR:
                if meta(x) != meta(y):
                    out.modified.append(os.fsdecode(path))
                subdirs.append((x.subtree, y.subtree, path))
            elif content(x) != content(y):
                out.modified.append(os.fsdecode(path))
                if x.type == DIR:  # a directory that became something else: what was in it is gone
                    all_below(x.subtree, path, out.removed)
                if y.type == DIR:
                    all_below(y.subtree, path, out.added)
        stack.extend(reversed(subdirs))
    return out


# --- forget / prune -----------------------------------------------------------------------------------
@dataclass
class ForgetResult:
    groups: list[Group]
    removed: list[str]
    dry_run: bool
    prune: PruneReport | None
    requests: dict
    still_listed: list[str] = dataclasses.field(default_factory=list)  # deleted, yet listed again after
    prune_failed: BaseException | None = None  # why the prune asked for did not run to its end (raised by the CLI
    #                                             once the forget's report is out)

    def to_json(self) -> dict:
        return {"dry_run": self.dry_run, "removed": self.removed, "still_listed": self.still_listed,
                "groups": [{"key": g.key, "keep": [d.snapshot.id for d in g.decisions if d.keep],
                            "remove": [d.snapshot.id for d in g.decisions if not d.keep],
                            "decisions": [{"id": d.snapshot.id, "short_id": d.snapshot.short_id,
                                           "time": format_time(d.snapshot.time), "keep": d.keep,
                                           "reasons": d.reasons} for d in g.decisions]}
                           for g in self.groups],
                "prune": self.prune.to_json() if self.prune is not None else None,
                **({"prune_error": str(self.prune_failed) or "interrupted"} if self.prune_failed is not None else {}),
                **self.requests}


def _prune_in_session(sess: Session, settings: Settings, opts: PruneOptions,
                      log: Callable[[str], None]) -> PruneReport:
    remote = local_repo_path(settings) is None
    if remote:
        opts = PruneOptions(**{**opts.__dict__, "workers": max(opts.workers, min(settings.connection_count(), 8))})
    pruner = Pruner(sess.repo, sess.catalog, opts, log=log, uploaders=settings.connection_count() if remote else 0,
                    before_delete=sess.check_lock)
    pruner.sync_problems = list(sess.sync.problems)
    report = pruner.run()
    if not opts.dry_run:
        try:
            sess.sync = sess.catalog.sync(sess.repo)  # the index changed under the catalog: reload what moved
        except CacheUnavailable as exc:  # (a full cache disk: the repository's work is done, the cache waits)
            report.warnings.append(f"prune is done, but this machine's catalog could not be brought up to date "
                                   f"({exc}); the next command does it")
    return report


def forget(settings: Settings, password: PasswordFn, ids: list[str], policy: Policy | None,
           flt: SnapshotFilter, group_by: tuple[str, ...], dry_run: bool, prune: PruneOptions | None,
           log: Callable[[str], None] = lambda _m: None) -> ForgetResult:
    """Forget snapshots named by id or by a retention policy; then prune if asked. Forgetting only deletes
    snapshot manifests (each delete atomic), so it runs beside backups under a shared lock; pruning takes
    the exclusive lock afterwards."""
    if policy is None and not ids:
        raise UsageError("no policy and no snapshot given: refusing to forget anything "
                         "(e.g. --keep-daily 7 --keep-weekly 5, or name snapshots)")
    if policy is not None and policy.is_empty() and not ids:
        raise UsageError("no --keep-* option that keeps anything (none given, or all 0): refusing to forget all but "
                         "the newest snapshot of each group (e.g. --keep-daily 7)")
    still: list[str] = []
    with session(settings, password, lock=None if dry_run else "shared", operation="forget") as sess:
        snaps = [s for s in sess.catalog.snapshots() if flt.matches(s)]
        if ids:
            # (`latest` among the snapshots --host/--tag/--path select; an id they leave out: refused, none forgotten)
            chosen = {find_snapshot(sess, spec, flt=flt).id for spec in ids}
            named = sorted((s for s in sess.catalog.snapshots() if s.id in chosen), key=lambda s: (s.time, s.id),
                           reverse=True)
            groups = [Group({"snapshots": "named"}, [Decision(s, False, ["named"]) for s in named])]
        else:
            assert policy is not None
            groups = retention.plan(snaps, policy, group_by, tz=None)  # (local time, summer time and all)
        removed = [d.snapshot.id for g in groups for d in g.decisions if not d.keep]
        if not dry_run and removed:
            # the decision is recorded before anything is deleted: a kill leaves the record and a partial forget
            sess.repo.save_log("forget", policy.describe() if policy else "named",
                               [{"id": d.snapshot.id, "tree": d.snapshot.tree.hex(), "keep": d.keep,
                                 "reasons": d.reasons} for g in groups for d in g.decisions])
            # (side by side from a remote repository: --keep-last 1 over a year of nightly snapshots was 364
            # round trips one after another)
            with ThreadPoolExecutor(max_workers=max(1, sess.catalog.prefetch)) as pool:
                list(pool.map(sess.repo.delete_snapshot, removed))
            if removed:
                sess.catalog.sync(sess.repo)
                # (a store that acknowledges a DELETE and keeps the object: said, not reported as forgotten)
                still = sorted(set(removed) & {s.id for s in sess.catalog.snapshots()})
        requests = sess.requests()
    report, failed = None, None
    if prune is not None:
        extra = {"dry_run": dry_run, "ignore_snapshots": tuple(removed) if dry_run else ()}
        try:
            report, requests = prune_repository(settings, password, PruneOptions(**{**prune.__dict__, **extra}), log)
        except (VaultError, KeyboardInterrupt) as exc:  # (the forget is done: its report must still come out --
            failed = exc  # a locked repository's exit 11 alone said nothing happened, and --json printed nothing)
    return ForgetResult(groups, [s for s in removed if s not in still], dry_run, report, requests, still, failed)


@dataclass
class TagResult:
    changed: list[tuple[str, str, list[str]]]  # (old id, new id, tags)
    unchanged: list[str]
    requests: dict

    def to_json(self) -> dict:
        return {"changed": [{"old": o, "new": n, "tags": t} for o, n, t in self.changed], "unchanged": self.unchanged,
                **self.requests}


def tag(settings: Settings, password: PasswordFn, specs: list[str], add: list[str], remove: list[str],
        set_: list[str] | None, flt: SnapshotFilter) -> TagResult:
    """Change the tags of snapshots (restic's ``tag``): a manifest is immutable (its id is its hash), so each
    changed one is written anew -- same time, host, paths and tree, its origin kept, so that ``copy`` still
    knows it -- and the old one let go with a ``logs/`` record (forgotten, not lost), then deleted. Under the
    exclusive lock: two runs retagging one snapshot at once would leave two."""
    with session(settings, password, lock="exclusive", operation="tag") as sess:
        if specs:
            chosen = {find_snapshot(sess, spec, flt=flt).id for spec in specs}
        else:  # (restic: every snapshot the filters select, all of them with none)
            chosen = {s.id for s in list_snapshots(sess, flt)}
        live = {s.id: s for s in sess.catalog.snapshots()}
        # a manifest an earlier run wrote anew and could not let the old one go (a full disk, a kill): the pair is
        # one snapshot -- naming either (``latest`` may name either: the same time) names both; the old one is
        # let go, never written anew a second time (two of one state, counted twice by retention), and the change
        # asked for applies to the new one
        successor: dict[str, Snapshot] = {}
        for s in live.values():
            old = s.summary.get("retagged_from")
            if isinstance(old, str) and old in live and live[old].tree == s.tree and live[old].time == s.time:
                successor.setdefault(old, s)
        for old, s in successor.items():
            if old in chosen or s.id in chosen:
                chosen |= {old, s.id}
        snaps = sorted((s for s in live.values() if s.id in chosen and s.id not in successor),
                       key=lambda s: (s.time, s.id))
        res = TagResult([], [], {})
        now: dict[str, tuple[str, list[str]]] = {}  # snapshot -> (its id after this run, its tags)
        for snap in snaps:
            tags = set(snap.tags) if set_ is None else set(set_)
            tags = sorted((tags | set(add)) - set(remove))
            if tags == sorted(snap.tags):
                res.unchanged.append(snap.id)
                now[snap.id] = (snap.id, tags)
                continue
            new = Snapshot(time=snap.time, host=snap.host, paths=list(snap.paths), tree=snap.tree, tags=tags,
                           username=snap.username, parent=snap.parent,
                           summary={**snap.summary, "origin": snap.origin, "retagged_from": snap.id})
            with stopsignals.held():  # (a Ctrl-C between the new manifest and the old one's delete left both:
                #                         it takes effect between two snapshots)
                sid = sess.repo.commit_snapshot(new, sess.check_lock, "tag")
                _let_go_retagged(sess, snap, sid)
                res.changed.append((snap.id, sid, tags))
                now[snap.id] = (sid, tags)
        for old, s in sorted(successor.items()):
            if old in chosen:
                sid, tags = now.get(s.id, (s.id, sorted(s.tags)))
                with stopsignals.held():
                    _let_go_retagged(sess, live[old], sid)
                res.changed.append((old, sid, tags))
        if res.changed:
            sess.catalog.sync(sess.repo)
        res.requests = sess.requests()
        return res


def _let_go_retagged(sess: Session, snap: Snapshot, sid: str) -> None:
    """Let ``snap`` go for its retagged manifest ``sid`` (written): a ``logs/`` record, then the delete. A failure
    says that the new one is there, and which old one a second run lets go."""
    try:
        sess.repo.save_log("tag", "tags changed", [{"id": snap.id, "tree": snap.tree.hex(), "keep": False,
                                                     "reasons": [f"tags changed: now {sid}"]}])
        sess.repo.delete_snapshot(snap.id)
    except VaultError as exc:
        exc.args = (f"{exc}; snapshot {snap.short_id} is already written anew with its new tags as {sid[:8]}, but "
                    f"the old one could not be let go: run the same 'vault tag' again",)
        raise


def prune_repository(settings: Settings, password: PasswordFn, opts: PruneOptions,
                     log: Callable[[str], None] = lambda _m: None) -> tuple[PruneReport, dict]:
    """Delete unreferenced data under the exclusive lock (a dry run takes no lock and changes nothing)."""
    with session(settings, password, lock=None if opts.dry_run else "exclusive", operation="prune") as sess:
        report = _prune_in_session(sess, settings, opts, log)
        return report, sess.requests()


# --- copy ---------------------------------------------------------------------------------------------
def second_settings(settings: Settings, url: str) -> Settings:
    """Settings for a second repository: same cache dir, endpoint, connections and lock wait."""
    return dataclasses.replace(settings, repo=url, password_file=None, password_command=None)


def copy(settings: Settings, password: PasswordFn, specs: list[str], to: Settings, to_password: PasswordFn,
         flt: SnapshotFilter | None = None, log: Callable[[str], None] = lambda _m: None) -> tuple[CopyReport, dict]:
    """Copy snapshots (all matching ``flt`` when ``specs`` is empty) into the repository ``to``."""
    with session(settings, password, lock="shared", operation="copy (source)") as src:
        if specs:
            snaps = list({(s := find_snapshot(src, spec, flt=flt)).id: s for spec in specs}.values())
        else:
            snaps = list_snapshots(src, flt)
        with other_session("the destination (--to)", to, to_password, lock="shared", operation="copy",
                           not_id=(src.repo.id, "source and destination are the same repository (the same id: "
                                                          "the same store, or a byte copy of it -- cp -a, rsync -- "
                                                          "which holds the same objects already)")) as dst:
            remote = local_repo_path(to) is None
            workers = max(settings.jobs or 0, min(settings.connection_count(), 8)) if (
                remote or local_repo_path(settings) is None) else max(settings.jobs or 0, 2)
            report = Copier(src.repo, src.catalog, dst.repo, dst.catalog, workers=workers,
                            uploaders=to.connection_count() if remote else 0, log=log).run(
                                snaps, dst.check_lock, adopt=bool(snaps) and dst.begin_storing())
            if snaps:
                dst.end_storing()
            requests = {"source": src.requests(), "destination": dst.requests()}
    return report, requests


# --- repair -------------------------------------------------------------------------------------------
def repair(settings: Settings, password: PasswordFn, what: str = "all", read_data: bool = False,
           from_repo: tuple[Settings, PasswordFn] | None = None, dry_run: bool = False,
           log: Callable[[str], None] = lambda _m: None) -> tuple[RepairReport, VerifyReport | None, dict]:
    """``what``: "index", "snapshots" or "all"; ``from_repo`` heals lost blocks from a second repository.
    Ends with a verify (with data when ``read_data``) unless ``dry_run``."""
    remote = local_repo_path(settings) is None
    with contextlib.ExitStack() as stack:
        sess = stack.enter_context(session(settings, password, lock=None if dry_run else "exclusive",
                                           operation="repair"))
        other = None
        if from_repo is not None:  # opened (its password checked) before anything here is changed
            other = stack.enter_context(other_session("the repository of --from-repo", from_repo[0], from_repo[1],
                                                      lock="shared", operation="repair (source)",
                                                      not_id=(sess.repo.id, "--from-repo names this same repository (the same "
                                                              "id: this store, or a byte copy of it -- to heal from "
                                                              "a byte copy, copy the objects verify names back by "
                                                              "hand: docs/operations.md)")))
        if sess.repo.keys_open_nothing():  # (before anything is called damaged: the keys must be this repository's)
            raise IntegrityError("none of the repository's snapshots and index segments opens with the keys in use, "
                                 "though they are intact: the key slot that opened it is another repository's (was "
                                 "config's id changed?); repair changes nothing (see docs/operations.md)")
        rep = Repairer(sess.repo, sess.catalog, read_data=read_data, dry_run=dry_run,
                       uploaders=settings.connection_count() if remote else 0, log=log,
                       before_delete=sess.check_lock)
        try:
            if what in ("index", "all"):
                log("repair: rebuilding the index from the packs")
                rep.repair_index()
                rep.repair_keys()
            if what in ("snapshots", "all"):  # (first: their trees are then healed and checked like all others)
                rep.restore_lost()
            if other is not None:
                log(f"repair: healing lost blocks from {other.repo.backend.location}")
                rep.heal_from(other.repo, other.catalog)
                if what in ("snapshots", "all"):
                    rep.repair_manifests(other.repo, other.catalog)
            elif what in ("snapshots", "all"):
                rep.repair_manifests()
            if what in ("snapshots", "all"):
                log("repair: rewriting snapshots that still reference lost data")
                rep.repair_snapshots()
                rep.settle_logs()
            rep.still_missing()
        except KeyboardInterrupt:  # (Ctrl-C, SIGTERM: an upload that gets no answer is not waited for)
            rep.close(wait=False)
            raise
        finally:
            rep.close()
        verify_report = None
        if not dry_run:  # (the sync's problems as they are now, after the repair: what `vault verify` would say)
            verify_report = _with_sync_problems(Checker(sess.repo, sess.catalog, read_data, None).run(),
                                                sess.catalog.sync(sess.repo).problems)
        return rep.report, verify_report, sess.requests()


def _with_sync_problems(report: VerifyReport, problems: list[str]) -> VerifyReport:
    """The damage the catalog's sync found (a manifest or index segment that cannot be read, a manifest lost)
    added to a verify report, unless its own checks named that object already."""
    for p in problems:
        obj, _, why = p.partition(": ")
        obj = obj.replace("index segment ", "index/").replace("snapshot ", "snapshots/")
        if not any(d.object.startswith(obj) for d in report.damage):  # (verify's own check found it: full id)
            report.damage.insert(0, Damage(obj, why))
    return report


# --- verify / stats / keys / locks / catalog ----------------------------------------------------------
def verify(settings: Settings, password: PasswordFn, read_data: bool = False,
           subset: str | None = None, max_bytes: int | None = None,
           progress: Callable[[VerifyReport], None] | None = None) -> tuple[VerifyReport, dict]:
    with session(settings, password, lock="shared", operation="verify") as sess:
        jobs, processes = settings.jobs or 0, 0
        if local_repo_path(settings) is None:  # remote: threads (the network is the wait)
            jobs = max(jobs, min(settings.connection_count(), 8))
        else:  # local: packs read by worker processes (see forkpool)
            processes = jobs = jobs or _default_processes()
        jobs, processes = _capped(jobs, processes)
        checker = Checker(sess.repo, sess.catalog, read_data or max_bytes is not None, parse_subset(subset),
                          jobs=jobs, max_bytes=max_bytes, processes=processes,
                          fresh_backend=lambda: open_store(settings), piecewise=processes > 0)
        checker.progress = progress
        report = _with_sync_problems(checker.run(), sess.sync.problems)
        return report, sum_stats([sess.requests(), checker.requests])


def stats(sess: Session) -> dict:
    d = sess.catalog.stats()
    # what the snapshots hold (each snapshot's files at their size when backed up: what restoring every
    # snapshot would write) against what is stored for them: deduplication and compression together
    held = 0
    for snap in sess.catalog.snapshots():
        n = snap.summary.get("bytes_processed")
        held += n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
    d["snapshots_bytes"] = held
    d["compression_ratio"] = round(d["raw_bytes"] / d["stored_bytes"], 3) if d["stored_bytes"] else None
    d["dedup_ratio"] = round(held / d["stored_bytes"], 3) if d["stored_bytes"] else None
    total = count = 0
    for _name, size in sess.repo.backend.list(""):
        total += size
        count += 1
    d["repository_bytes"] = total
    d["repository_objects"] = count
    return d


def unlock(settings: Settings, password: PasswordFn, remove_all: bool = False) -> list[str]:
    counter = open_store(settings)
    Repository.open(counter, password)
    return [lk.describe() for lk in remove_locks(counter, remove_all)]


def catalog_rebuild(settings: Settings, password: PasswordFn) -> dict:
    counter = open_store(settings)
    repo = Repository.open(counter, password)
    # the others sharing the cache (cron jobs) are waited for, up to --lock-wait, as for a repository lock
    deadline = time.monotonic() + (settings.lock_wait if settings.lock_wait is not None else DEFAULT_LOCK_WAIT)
    while True:
        try:
            catalog = Catalog.open(settings.cache_dir, cache_key(settings, repo.id), fresh=True)
            break
        except CatalogInUse:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    catalog.prefetch = prefetch_width(settings)
    try:
        report = catalog.sync(repo)
        for snap in catalog.snapshots():  # cache every tree (verified as it is read)
            try:
                for _ in catalog.walk(repo, snap.tree):
                    pass
            except (CacheUnavailable, CatalogBusy):  # (this machine's trouble, not damage: the rebuild failed)
                raise
            except VaultError as exc:  # damage is verify's to report in full: note it, go on
                report.problems.append(f"snapshot {snap.short_id}: {exc}")
        st = catalog.stats()
    finally:
        catalog.close()
    return {"snapshots": st["snapshots"], "packs": st["packs"], "blocks": st["blocks"],
            "problems": report.problems}


# --- keys ---------------------------------------------------------------------------------------------
def new_slot_kdf(sess: Session, name: str | None = None, memory_kib: int | None = None,
                 iterations: int | None = None) -> KdfParams:
    """The KDF of a new key slot: what is given, the rest as the slot in use has it (a repository made with a
    costlier KDF than the default must not get a cheaper slot from ``key passwd``), else the defaults."""
    cur = sess.repo.slot_kdf() or KdfParams()
    base = cur if (name or cur.name) == cur.name else KdfParams(name=name)
    if base.name != "argon2id" and (memory_kib is not None or iterations is not None):
        raise UsageError(f"--kdf-memory and --kdf-iterations apply to argon2id only (the new slot's KDF: {base.name})")
    return dataclasses.replace(base, iterations=iterations or base.iterations, memory_kib=memory_kib or base.memory_kib)


def key_add(sess: Session, new_password: bytes, kdf: KdfParams | None = None) -> str:
    return sess.repo.add_key(new_password, kdf or KdfParams()).rsplit("/", 1)[-1]


def key_list(sess: Session) -> list[dict]:
    out = []
    for name, info in sess.repo.list_keys():
        kid = name.rsplit("/", 1)[-1]
        d = {"id": kid, "current": name == sess.repo.key_name, "damaged": info is None}
        if info:
            kdf = info.get("kdf")
            d.update(created=info.get("created"), host=info.get("host"), username=info.get("username"),
                     kdf=kdf.get("name") if isinstance(kdf, dict) else None)
            if "unsupported" in info:
                d["unsupported"] = info["unsupported"]
        out.append(d)
    return out


def key_remove(sess: Session, key_id: str) -> str:
    names = [n.rsplit("/", 1)[-1] for n, _ in sess.repo.list_keys()]
    kid = resolve_prefix(key_id, names, what="key")
    if f"keys/{kid}" == sess.repo.key_name:
        raise VaultError("refusing to remove the key in use; open the repository with another key to remove it")
    sess.repo.backend.delete(f"keys/{kid}")
    return kid


def key_passwd(sess: Session, new_password: bytes, kdf: KdfParams | None = None,
               old_password: bytes | None = None) -> str:
    """Add a slot for the new password, then remove the slot the old password opened -- and, given the old
    password, every other slot it opens too (a ``key add`` of the same password), so that afterwards it
    opens nothing."""
    new, slot = sess.repo.make_key(new_password, kdf or KdfParams())
    try:  # (the upload and the key derivations: interruptible, and then as if never run)
        sess.repo.backend.put(new, slot)
        old = {sess.repo.key_name}
        if old_password is not None and old_password != new_password:
            old.update(sess.repo.slots_opened_by(old_password))
        old.discard(new)
    except BaseException:
        # (stopped while the upload was retried, it may be stored already: it must not stay, or both passwords
        # would open the repository after a command that said it changed nothing)
        with contextlib.suppress(Exception):
            sess.repo.backend.delete(new)
        raise
    # the point of no return: stopped now, it would say "aborted" of a password that no longer opens anything
    stopsignals.committed()
    for name in sorted(old, key=lambda n: n != sess.repo.key_name):  # (the slot in use first, as before)
        sess.repo.backend.delete(name)
    return new.rsplit("/", 1)[-1]
