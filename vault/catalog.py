"""The catalog: a local SQLite database (sqlite-utils) indexing one repository. A cache, never the truth.

Tables (schema version ``SCHEMA_VERSION``; any mismatch or damage makes it be rebuilt from the repository):

* ``meta``       key/value: schema version, repository id.
* ``segments``   index segments already loaded.
* ``packs``      pack id, kind, size, the segment that lists it, when it was last verified.
* ``blocks``     block id -> pack (rowid in packs), offset, length, raw length, kind. 56-ish bytes a row.
* ``snapshots``  the decrypted manifests.
* ``trees``      the files table, deduplicated by tree: each tree's entries (name, type, mode, owner, size,
                 times, inode, block list / subtree / target), sealed with a keyed MAC checked on every read
                 (``entries.py``). A path is a chain of trees from a snapshot root.

Tables that grow by the million are rowid tables filled in rowid order, indexed by small keys: random
32-byte keys as the primary key of wide rows would make every insert rewrite pages all over the file.

Block lookups are SQL (no in-memory index), so memory does not grow with the repository. All methods are
thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import hmac
import itertools
import json
import os
import resource
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import entries as entries_mod
from . import index as index_mod
from .cachedir import private_dir, read_small, write_small
from .cachelock import FileLock
from .errors import (CacheUnavailable, CatalogBusy, CatalogError, CatalogInUse, IntegrityError, ObjectNotFound,
                     VaultError, is_damage)
from .entries import split_ids
from .ids import ID_LEN
from .model import DIR, FILE, Node, Snapshot, Tree, parse_stored_time, format_time, storable_text
from .pack import KINDS, PackEntry, pack_name

_SNAPSHOT_COLUMNS = "id, time, host, paths, tags, tree, username, parent, summary"  # (snapshots, lost_snapshots)
_LOST_TABLE = ("CREATE TABLE IF NOT EXISTS lost_snapshots (id TEXT PRIMARY KEY, time TEXT NOT NULL, host TEXT NOT NULL, "
               "paths TEXT NOT NULL, tags TEXT NOT NULL, tree BLOB NOT NULL, username TEXT, parent TEXT, summary TEXT, "
               "seal BLOB, seal2 BLOB)")
# seal: written by vault before 0.1.1 (a key anyone could learn: see entries.cache_key), NULL since -- so that an
# earlier vault sharing the cache takes 0.1.1's rows for unsealed ones (kept, read again) rather than forged
# ones (deleted: a record of a lost manifest was gone with them); seal2: 0.1.1's
_SEALED_COLUMNS = _SNAPSHOT_COLUMNS + ", seal, seal2"


def _snapshot_seal(key: bytes, row: tuple) -> bytes:
    """A keyed MAC over a snapshot row as stored (the catalog's key: derived from the repository's)."""
    i, t, h, p, tg, tree, u, par, s = row
    text = json.dumps([i, t, h, p, tg, bytes(tree).hex(), u, par, s], separators=(",", ":"))
    return hmac.digest(key, b"vault catalog snapshot v1\0" + text.encode("utf-8", "surrogateescape"), "sha256")


def _seal_holds(key: bytes, row: tuple, seal: object) -> bool:
    try:
        return type(seal) is bytes and hmac.compare_digest(_snapshot_seal(key, row), seal)
    except (TypeError, ValueError):  # (a damaged row: another SQLite type in a column)
        return False


_SUPERSEDED_TABLE = "CREATE TABLE IF NOT EXISTS superseded (id TEXT PRIMARY KEY) WITHOUT ROWID"
# packs' verification times across an index reset (every prune causes one): ``verify --read-data-subset``'s
# rotation went back to the same lowest pack ids each night, and most packs were never read
_VERIFIED_TABLE = "CREATE TABLE IF NOT EXISTS verified (id BLOB PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID"
ROWS_AHEAD, ROW_AHEAD_MAX, ROWS_AHEAD_BYTES = 512, 16384, 2 << 20  # ``Catalog._read_rows_ahead``
AHEAD = 256  # trees a walk of a remote repository's cold cache fetches ahead at most (``Catalog._fetch_ahead``)
OPEN_WAIT = 60.0  # seconds to wait for the catalog's opening lock (another process holds it for milliseconds)
SCHEMA_VERSION = 5  # 5: trees.checked (4 is migrated in place)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS segments (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS packs (
    rowid INTEGER PRIMARY KEY, id BLOB UNIQUE NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    segment TEXT NOT NULL, verified_at REAL);
CREATE TABLE IF NOT EXISTS blocks (
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL, kind TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_pack ON blocks(pack);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, time TEXT NOT NULL, host TEXT NOT NULL, paths TEXT NOT NULL, tags TEXT NOT NULL,
    tree BLOB NOT NULL, username TEXT, parent TEXT, summary TEXT, seal BLOB, seal2 BLOB);
CREATE TABLE IF NOT EXISTS trees (rowid INTEGER PRIMARY KEY, id BLOB UNIQUE NOT NULL, entries BLOB NOT NULL,
    checked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS trees_pending ON trees(checked) WHERE checked < 0;
"""


@dataclass
class SyncReport:
    segments_loaded: int = 0
    snapshots_loaded: int = 0
    snapshots_removed: int = 0
    rebuilt_index: bool = False
    problems: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # snapshot id -> why its manifest cannot be read


_SQLITE_IOERR_SHMSIZE = sqlite3.SQLITE_IOERR | (19 << 8)  # the shared-memory file cannot grow: a full disk


# errors of the place, not of the catalog's contents: never a reason to delete it
_ENVIRONMENT = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
                sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_INTERRUPT}


def _out_of_descriptors(room: int = 4) -> bool:
    """Whether this process cannot open ``room`` more files (SQLite says only "unable to open database file";
    a catalog in WAL mode needs three at once -- with one or two left the probe of a single file passed, and a
    full descriptor table was blamed on the cache directory)."""
    fds: list[int] = []
    try:
        for _ in range(room):
            fds.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    finally:
        for fd in fds:
            os.close(fd)
    return False


def _file_size_limited() -> bool:
    """Whether ``ulimit -f`` caps the size of the files this process writes (SQLite says only "disk I/O error")."""
    try:
        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (OSError, ValueError):
        return False


WAL_INDEX_ROOM = 64 << 10  # bytes the cache's file system must give at once before SQLite maps the WAL index
# (it needs 32 KiB of it; what is written later fails with ENOSPC as it should, said as a full disk)


def _disk_full(path: str) -> CacheUnavailable:
    if _file_size_limited():  # (SQLite and posix_fallocate say "full" for EFBIG too)
        return CacheUnavailable(f"the catalog {path} cannot grow: the disk under the cache directory is full, or "
                                "this process's file-size limit (`ulimit -f`) is reached")
    return CacheUnavailable(f"the disk under the cache directory is full (catalog {path}); free some space, or give "
                            "--cache-dir another place")


def _uri(path: str, create: bool = False) -> str:
    """The catalog's SQLite URI; the file made 0600 first when ``create`` (SQLite gives the -wal and -shm files
    the database's mode: they were 0644, the names readable by all). SQLite itself follows symlinks (its
    no-follow flag cannot be passed from Python): ``Catalog.open`` replaces a catalog that is not a regular file
    before it gets here."""
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600))
        except OSError:
            pass  # (SQLite's own open says what is wrong)
    return "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))  # (any bytes)


def _room_for_wal_index(path: str) -> None:
    """Refuse (CacheUnavailable) when the catalog's file system cannot give WAL_INDEX_ROOM bytes now. SQLite
    maps the WAL index (``catalog.db-shm``) and extends it by writing a byte per page, which ext4 takes on
    credit; the first store into such a page of the mapping that then cannot get a block is a SIGBUS: vault
    died with exit 135 and not a word. The room is asked for, not guessed from statvfs (ext4 keeps blocks back
    that it counts as free): a file made and unlinked at once, its blocks allocated (posix_fallocate)."""
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vault-room-", dir=directory)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path) from None
        return  # (the open that follows says what is wrong: read-only, no permission, ...)
    try:
        os.unlink(tmp)
        os.posix_fallocate(fd, 0, WAL_INDEX_ROOM)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path) from None
        # (EOPNOTSUPP and the like: a file system that cannot say; SQLite's own errors remain)
    finally:
        os.close(fd)


def _db_error(exc: sqlite3.DatabaseError, path: str) -> CatalogError:
    """vault's error for a failed catalog query. A full, failing, read-only or busy place is not damage: said
    as such, and the catalog is kept (CacheUnavailable); anything else (corrupt pages, a file that is not a
    database, a table missing) is damage, and the catalog is rebuilt."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    if code & 0xFF == sqlite3.SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE or "disk is full" in str(exc):
        return _disk_full(path)
    if code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return CatalogBusy(f"the catalog {path} is held by another vault process that has not let go in the "
                           "time given (--lock-wait; stopped or hung?): try again later, or use another --cache-dir")
    if code & 0xFF == sqlite3.SQLITE_CANTOPEN and _out_of_descriptors():
        return CacheUnavailable(f"cannot open the catalog {path}: too many open files (raise the limit: `ulimit -n`)")
    if code & 0xFF == sqlite3.SQLITE_IOERR and _file_size_limited():
        return CacheUnavailable(f"cannot use the catalog {path} ({exc}): this process may write files only up to "
                                "the size `ulimit -f` allows; raise the limit (or check the cache directory's disk)")
    if code & 0xFF in _ENVIRONMENT:
        return CacheUnavailable(f"cannot use the catalog {path} ({exc}); check the cache directory and its disk, "
                                "or give --cache-dir another place")
    return CatalogError(f"catalog damaged ({exc}); run 'vault catalog rebuild'")


_U32 = 1 << 32


def _entry(kind, bid: bytes, off, length, raw, pid=b"\0" * ID_LEN) -> PackEntry:
    """A block's location as a row of this catalog gives it: what no index segment can hold (a negative or
    over-long offset or length, a value that is not a number, a pack id of another length: a damaged page, an
    edited row) is the catalog's damage, said as such -- a range read at it was an internal error, a pack id cut
    short an object 'not found' blamed on the repository (exit 20)."""
    if not (type(off) is int and type(length) is int and type(raw) is int and 0 <= off < _U32 and 0 < length < _U32
            and 0 <= raw < _U32 and kind in KINDS and type(pid) is bytes and len(pid) == ID_LEN):
        name = bid.hex()[:16] if isinstance(bid, bytes) else repr(bid)[:16]
        raise CatalogError(f"this machine's catalog is damaged (block {name} has an impossible location); run "
                           "'vault catalog rebuild'")
    return PackEntry(kind, bid, off, length, raw)


def _unopenable(path: str) -> CacheUnavailable | None:
    """What is wrong with the catalog's files when this user cannot both read and write one (a mode 0400 or 0000
    file, one another user owns): SQLite says only "unable to open database file" or "readonly database"."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.lexists(path + suffix) and not os.access(path + suffix, os.R_OK | os.W_OK):
            return CacheUnavailable(f"the catalog file {path}{suffix} cannot be both read and written by this user "
                                    "(its mode or owner): fix that, or run 'vault catalog rebuild' (it makes a new "
                                    "catalog)")
    return None


def _unusable(directory: str, exc: OSError) -> CatalogError:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return CatalogError(f"cannot use the cache directory {directory}: {exc.strerror or exc}{where} (see --cache-dir)")


class Catalog:
    def __init__(self, path: str, repo_id: str, in_use: FileLock, wait: float = OPEN_WAIT):
        self.path = path
        self.repo_id = repo_id
        self._wait = wait  # how long a query waits for another process's write (SQLite's busy timeout)
        self._lock = threading.RLock()
        self._in_use = in_use  # held shared while open: nobody removes the catalog under us
        self._conn = self._connect()
        self._sealing: tuple[bytes, bytes] = (b"", b"")  # (MAC key, the trees' sealing key derived from it)
        self.trees_unusable = False  # reading the cached trees failed (damage): trees come from the repository
        self.prefetch = 0  # a remote repository: trees fetched this many at a time ahead of a walk (0/1: off)
        self._ahead: dict[bytes, Future] = {}  # tree id -> its fetch into the cache, under way
        self._rows_ahead: dict[bytes, tuple] = {}  # tree id -> its cached row, read with its parent's siblings
        self._rows_ahead_bytes = 0
        self._index_asked = False  # a tree the catalog's index lacks was looked for in the repository's index
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._made: set[str] = set()  # the tables made on first use (``_table``) this process has made sure of

    # --- opening, damage, rebuild -------------------------------------------------------------------
    @classmethod
    def open(cls, cache_dir: str, repo_id: str, fresh: bool = False, wait: float = OPEN_WAIT) -> "Catalog":
        """Open (or create) the catalog for a repository. A damaged or outdated one, or any one when ``fresh``,
        is replaced by an empty one, unless another process has it open (CatalogError then).

        Processes sharing a cache directory open it one at a time (``catalog.open.lock``: held for
        milliseconds, unless its holder is stopped or hung -- then CatalogBusy after ``wait`` seconds) and hold
        ``catalog.lock`` shared while it is open."""
        path = cls.file_path(cache_dir, repo_id)
        directory = os.path.dirname(path)
        try:
            private_dir(cache_dir, repo_id)  # (0700, this user's; CatalogError: someone else could write there)
            opening = FileLock(os.path.join(directory, "catalog.open.lock"), wait=wait)
            in_use = None
            try:
                in_use = FileLock(os.path.join(directory, "catalog.lock"), shared=True, wait=wait)
            finally:
                if in_use is None:
                    opening.release()
        except BlockingIOError:
            raise CatalogBusy(f"the catalog in {directory} is held by another vault process that has not let go "
                              f"in {wait:g} s (stopped or hung?): try again later, or use another --cache-dir") from None
        except OSError as exc:  # a read-only or full cache directory, a lock file that is a directory
            raise _unusable(directory, exc) from None
        with opening:
            try:
                reason = "a rebuild was asked for"
                odd = None if fresh else cls._not_regular(path)
                if odd is not None:  # (SQLite would open through a symlink, and wait on a fifo for ever)
                    reason = odd
                elif not fresh:
                    try:
                        return cls(path, repo_id, in_use, wait)
                    except (sqlite3.DatabaseError, CatalogError, ValueError) as exc:
                        err = _db_error(exc, path) if isinstance(exc, sqlite3.DatabaseError) else exc
                        if isinstance(err, CacheUnavailable):
                            raise _unopenable(path) or err from None  # not damage: never delete a catalog for that
                        reason = str(exc)
                if not in_use.try_exclusive():
                    raise CatalogInUse(f"catalog {path} cannot be replaced ({reason}): another vault process has "
                                       f"it open (or another user in this one); run this command again when "
                                       f"that one has finished")
                try:
                    cls.remove_files(path)
                except OSError as exc:  # e.g. a directory where the catalog file goes
                    raise _unusable(directory, exc) from None
                try:
                    cat = cls(path, repo_id, in_use, wait)
                except sqlite3.DatabaseError as exc:
                    raise _db_error(exc, path) from None
                in_use.share()
                return cat
            except BaseException:
                in_use.release()
                raise

    @staticmethod
    def file_path(cache_dir: str, repo_id: str) -> str:
        return os.path.join(cache_dir, repo_id, "catalog.db")

    @staticmethod
    def _not_regular(path: str) -> str | None:
        """Why the catalog's files are no catalog -- one is a symlink (SQLite has no way to refuse to follow it:
        the file it leads to, anywhere, was written), a fifo (its open waited for ever), a directory or a device
        -- or None. Such a catalog is replaced like a damaged one."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                st = os.lstat(path + suffix)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else \
                    "not a regular file"
                return f"{path}{suffix} is {what}"
        return None

    @staticmethod
    def remove_files(path: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # (an empty one goes; one with something in it is not vault's to remove)
                try:
                    os.rmdir(path + suffix)
                except OSError:
                    raise CatalogError(f"{path}{suffix} is a directory, where vault's catalog file goes: move it "
                                       "away, then try again") from None

    def _connect(self) -> sqlite3.Connection:
        _room_for_wal_index(self.path)
        conn = sqlite3.connect(_uri(self.path, create=True), uri=True, check_same_thread=False, timeout=self._wait,
                               isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # temporary tables (prune's and verify's marks): no rollback journal, and up to 8 MiB of them kept
            # in memory before they spill to a temp file (bounded, but no I/O for most repositories)
            conn.execute("PRAGMA temp.journal_mode=OFF")
            conn.execute("PRAGMA temp.cache_size=-8192")
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if has_meta else {}
            if not meta:
                self._create_schema(conn)
            elif meta.get("schema_version") == "4" and meta.get("repository") == self.repo_id:
                self._migrate_4(conn)
            elif meta.get("schema_version") != str(SCHEMA_VERSION) or meta.get("repository") != self.repo_id:
                raise CatalogError("catalog belongs to another schema or repository")
            self._add_seal_columns(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables with sqlite-utils (imported only here: it costs 0.1 s and ~20 MiB to import)."""
        import sqlite_utils

        db = sqlite_utils.Database(conn)
        db.executescript(SCHEMA)
        db["meta"].insert_all([{"key": "schema_version", "value": str(SCHEMA_VERSION)},
                               {"key": "repository", "value": self.repo_id}], replace=True)

    @staticmethod
    def _add_seal_columns(conn: sqlite3.Connection) -> None:
        """Snapshot rows carry a seal (``_snapshot_seal``) since schema 5 was first released without one: the
        column is added in place; rows without a seal are read again from the repository (``_check_seals``)."""
        for table in ("snapshots", "lost_snapshots"):
            cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for col in ("seal", "seal2"):
                if cols and col not in cols:
                    with contextlib.suppress(sqlite3.OperationalError):  # (another process added it just now)
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} BLOB")

    @staticmethod
    def _migrate_4(conn: sqlite3.Connection) -> None:
        """Schema 4 -> 5: trees.checked (every cached tree unchecked: the next backup checks each once)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            if "checked" not in {r[1] for r in conn.execute("PRAGMA table_info(trees)")}:
                conn.execute("ALTER TABLE trees ADD COLUMN checked INTEGER NOT NULL DEFAULT 0")
            conn.execute("CREATE INDEX IF NOT EXISTS trees_pending ON trees(checked) WHERE checked < 0")
            conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True  # (a fetch still under way caches nothing now)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._conn.close()
            self._in_use.release()

    def _q(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise _db_error(exc, self.path) from None

    def _iter(self, sql: str, params: Iterable = (), batch: int = 2000) -> Iterator[tuple]:
        """Rows of a query, fetched ``batch`` at a time (memory does not grow with the result)."""
        with self._lock:
            try:
                cur = self._conn.execute(sql, tuple(params))
            except sqlite3.DatabaseError as exc:
                raise _db_error(exc, self.path) from None
        while True:
            with self._lock:
                try:
                    rows = cur.fetchmany(batch)
                except sqlite3.DatabaseError as exc:
                    raise _db_error(exc, self.path) from None
            if not rows:
                return
            yield from rows

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write transaction at most the wait given -- in short
        tries, so that Ctrl-C or SIGTERM is acted on meanwhile: SQLite's own wait sleeps in C, where Python's
        signal handlers do not run (a stopped backup holding the catalog kept a Ctrl-C waiting for minutes)."""
        c = self._conn
        deadline = time.monotonic() + self._wait
        c.execute("PRAGMA busy_timeout=100")
        try:
            while True:
                try:
                    c.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF != sqlite3.SQLITE_BUSY
                            or time.monotonic() >= deadline):
                        raise
        finally:
            c.execute(f"PRAGMA busy_timeout={int(self._wait * 1000)}")

    def _tx(self, fn) -> None:
        with self._lock:
            try:
                self._begin()
                try:
                    fn(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.DatabaseError as exc:  # the original error, not the rollback's
                raise _db_error(exc, self.path) from None

    def _rollback(self) -> None:
        """Undo an open transaction, if SQLite has not already (it does itself on a full disk or an I/O error:
        a second ROLLBACK would fail and hide why)."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass

    # --- sync from the repository ---------------------------------------------------------------------
    def sync(self, repo) -> SyncReport:
        """Bring the catalog in line with the repository: new/removed index segments and snapshots.

        Index segments that another present segment supersedes (left by an interrupted prune) are ignored."""
        rep = SyncReport()
        # what this catalog knows is read before the repository is listed: another process sharing it (a backup)
        # adds its segment and snapshot here only after writing them there, so whatever is known and not listed
        # is really gone -- read after the listing, another's new ones looked gone: a snapshot was called lost
        # and the whole index dropped and reloaded, under a restore running from the same catalog
        unsealed = self._check_seals(repo)
        known = {r[0] for r in self._q("SELECT id FROM segments")}
        snaps_known = {r[0] for r in self._q("SELECT id FROM snapshots")}
        # snapshots listed first: a backup writes its index segment before its snapshot, so every snapshot
        # listed here has its segment in the index listing below (the other order let a snapshot in without
        # its index, and its trees were reported missing)
        snaps_repo = set(repo.list_snapshots())
        reread = unsealed & snaps_repo & snaps_known  # (an earlier vault's rows: read again, sealed this time)
        if reread:
            self._tx(lambda c: c.executemany("DELETE FROM snapshots WHERE id=?", [(i,) for i in sorted(reread)]))
            snaps_known -= reread
        in_repo = set(repo.list_index())
        rebuild = bool(known - in_repo)  # a segment was superseded (prune) or lost
        superseding = None
        if not rebuild:
            passed = self._superseded() & in_repo  # (named by a segment this catalog holds: never loaded)
            todo = sorted(in_repo - known)
            self._know_segments(sorted(passed.intersection(todo)))
            fetched = self._fetched(repo.load_index, [s for s in todo if s not in passed], min(self.prefetch, 4))
            for sid, seg, exc in fetched:
                seg = self._segment_or_problem(sid, seg, exc, rep)
                if seg is None:
                    continue
                if set(s.hex() for s in seg.supersedes) & in_repo:
                    rebuild, superseding = True, sid  # an interrupted prune: reload all, minus what is superseded
                    break
                self.add_segment(sid, seg)
                rep.segments_loaded += 1
            fetched.close()  # (after a break: the fetches ahead are not waited for)
        if rebuild:
            # (False: another process sharing this catalog has reset it since this one looked, and reloads it:
            # resetting it again would empty the index under that one's reader; what it lacks is loaded below)
            rep.rebuilt_index = self._reset_index(in_repo, superseding)
            rep.segments_loaded = self._reload(repo, in_repo, rep)
        if self._holds_superseded(in_repo):
            # a segment an interrupted prune replaced was loaded before the one replacing it was known here (by a
            # sync that was itself stopped, or ran beside another): its blocks may lie in packs prune deletes next
            self._reset_index(None, None)
            rep.rebuilt_index = True
            rep.segments_loaded = self._reload(repo, in_repo, rep)
        gone = snaps_known - snaps_repo
        if gone:
            lost = gone - self._forgotten(repo, gone)

            def run(c: sqlite3.Connection) -> None:
                c.execute(_LOST_TABLE)
                c.executemany(f"INSERT OR REPLACE INTO lost_snapshots ({_SEALED_COLUMNS}) SELECT {_SEALED_COLUMNS} "
                              "FROM snapshots WHERE id=?",
                              [(s,) for s in sorted(lost)])
                c.executemany("DELETE FROM snapshots WHERE id=?", [(s,) for s in gone])
            self._tx(run)
            rep.snapshots_removed = len(gone)
        for sid, snap, exc in self._fetched(repo.load_snapshot, sorted(snaps_repo - snaps_known), self.prefetch):
            if exc is not None:
                if not isinstance(exc, (IntegrityError, ObjectNotFound)):
                    raise exc
                if isinstance(exc, ObjectNotFound) and self._forgotten(repo, {sid}):
                    continue  # (forgotten since the listing, by a forget elsewhere: its record lets it go)
                rep.problems.append(f"snapshot {sid[:8]}: {exc}")
                if isinstance(exc, IntegrityError):  # (not found: deleted since the listing, by a forget)
                    rep.unreadable[sid] = str(exc)
                continue
            self.add_snapshot(snap)
            rep.snapshots_loaded += 1
        self._note_lost(repo, snaps_repo, rep)  # (last: a snapshot loaded just now may hold a lost one's state)
        return rep

    def _reload(self, repo, in_repo: set[str], rep: SyncReport) -> int:
        """Load every segment of ``in_repo`` not known yet, except those another one supersedes -- which are
        recorded as known first (``superseded`` too), so that no sync (a later one, or one beside this) takes
        them for new and loads what an interrupted prune replaced: blocks in packs it is about to delete."""
        superseded: set[str] = set()
        window = min(self.prefetch, 4)
        for sid, seg, exc in self._fetched(repo.load_index, sorted(in_repo), window):  # pass 1: which segments
            seg = self._segment_or_problem(sid, seg, exc, SyncReport())               # others replace
            if seg is not None:
                superseded.update(s.hex() for s in seg.supersedes)
        self._know_segments(sorted(superseded & in_repo), superseded=True)
        loaded = {r[0] for r in self._q("SELECT id FROM segments")}
        n = 0
        for sid, seg, exc in self._fetched(repo.load_index, sorted(in_repo - superseded - loaded), window):
            seg = self._segment_or_problem(sid, seg, exc, rep)
            if seg is not None:
                self.add_segment(sid, seg)
                n += 1
        if self._has_table("verified"):  # (every pack indexed has its time back: the rest left the index)
            self._tx(lambda c: c.execute("DELETE FROM verified WHERE id NOT IN (SELECT id FROM packs)"))
        return n

    def _know_segments(self, ids: list[str], superseded: bool = False) -> None:
        """Record segments as known without loading them (superseded ones)."""
        def run(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR IGNORE INTO segments (id) VALUES (?)", [(s,) for s in ids])
            if superseded:
                c.execute(_SUPERSEDED_TABLE)
                c.executemany("INSERT OR IGNORE INTO superseded (id) VALUES (?)", [(s,) for s in ids])
        if ids:
            self._tx(run)

    def _superseded(self) -> set[str]:
        """The ids of segments that a segment this catalog loaded supersedes (``add_segment`` records them)."""
        if not self._has_table("superseded"):
            return set()
        return {r[0] for r in self._q("SELECT id FROM superseded")}

    def live_segments(self) -> set[str]:
        """The index segments loaded into this catalog that no loaded segment supersedes."""
        return {r[0] for r in self._q("SELECT id FROM segments")} - self._superseded()

    def _holds_superseded(self, in_repo: set[str]) -> bool:
        """Whether a pack was loaded from a segment that another present one supersedes. Superseded ids stay
        known after prune deleted their segments (32 bytes each): one put back later (a copy of an old store,
        or by anyone who can write it) is never loaded again -- its packs are gone, and a backup deduplicating
        against it stored no data while it said it did."""
        superseded = self._superseded() & in_repo
        return any(self._q("SELECT 1 FROM packs WHERE segment=? LIMIT 1", (sid,)) for sid in sorted(superseded))

    @staticmethod
    def _segment_or_problem(sid: str, seg, exc: BaseException | None, rep: SyncReport):
        """A segment ``_fetched`` tried: it, or None with its damage in ``rep.problems`` (else its error raised)."""
        if exc is None:
            return seg
        if not isinstance(exc, (IntegrityError, ObjectNotFound)):
            raise exc
        rep.problems.append(f"index segment {sid[:16]}: {exc}")
        return None

    @staticmethod
    def _fetched(fn: Callable, ids: list[str], window: int) -> Iterator[tuple[str, object, BaseException | None]]:
        """(id, fn(id), None) or (id, None, the exception it raised) for each of ``ids``, in order. With ``window``
        > 1 (a remote repository) up to that many are fetched ahead in threads: a new machine's first sync read
        each manifest and index segment one round trip after another -- 2 a snapshot, 90 s for 1,000 snapshots
        at 25 ms a request."""
        if window < 2 or len(ids) < 2:
            for i in ids:
                try:
                    yield i, fn(i), None
                except Exception as exc:  # (not KeyboardInterrupt: that stops the sync)
                    yield i, None, exc
            return
        pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="vault-sync")
        ahead: collections.deque = collections.deque()
        rest = iter(ids)
        try:
            for i in itertools.islice(rest, window):
                ahead.append((i, pool.submit(fn, i)))
            while ahead:
                i, fut = ahead.popleft()
                nxt = next(rest, None)
                if nxt is not None:
                    ahead.append((nxt, pool.submit(fn, nxt)))
                try:
                    yield i, fut.result(), None
                except Exception as exc:
                    yield i, None, exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _reset_index(self, in_repo: set[str] | None, superseding: str | None) -> bool:
        """Forget every loaded index segment (the next sync reloads them all) when (in the same transaction) the
        catalog still knows a segment not in ``in_repo``, or does not know ``superseding`` yet; False when another
        process sharing the catalog has reloaded it since this one looked (two resets would empty the index under
        the first one's reader). The only place blocks leave the catalog's index: so no tree stays 'checked'
        (see ``add_trees``)."""
        done = [False]

        def run(c: sqlite3.Connection) -> None:
            if in_repo is not None:
                known = {r[0] for r in c.execute("SELECT id FROM segments")}
                if not (known - in_repo) and (superseding is None or superseding in known):
                    return
            c.execute("DELETE FROM segments")
            c.execute(_VERIFIED_TABLE)
            c.execute("INSERT OR REPLACE INTO verified (id, at) SELECT id, verified_at FROM packs "
                      "WHERE verified_at IS NOT NULL")
            c.execute("DELETE FROM packs")
            c.execute("DELETE FROM blocks")
            c.execute("UPDATE trees SET checked=0 WHERE checked != 0")
            c.execute("INSERT INTO meta (key, value) VALUES ('index_epoch', '1') ON CONFLICT(key) "
                      "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
            done[0] = True
        self._tx(run)
        return done[0]

    def index_epoch(self) -> int:
        """How many times the index was reset (``_reset_index``): what was known to be indexed under another
        epoch may have left the index since (a repair dropped lost blocks, a prune deleted packs)."""
        rows = self._q("SELECT value FROM meta WHERE key='index_epoch'")
        try:
            return int(rows[0][0]) if rows else 0
        except (TypeError, ValueError):
            return -1

    def add_segment(self, sid: str, seg: index_mod.IndexSegment) -> None:
        carried = self._has_table("verified")

        def run(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO segments (id) VALUES (?)", (sid,))
            if seg.supersedes:  # (in the same transaction: whoever sees this segment sees what it replaces)
                c.execute(_SUPERSEDED_TABLE)
                c.executemany("INSERT OR IGNORE INTO superseded (id) VALUES (?)", [(x.hex(),) for x in seg.supersedes])
            rows = []
            for pid, entries in seg.packs.items():
                kind = entries[0].kind if entries else "D"
                c.execute("INSERT OR IGNORE INTO packs (id, kind, size, segment) VALUES (?, ?, ?, ?)",
                          (pid, kind, seg.sizes.get(pid, 0), sid))
                (rowid,) = c.execute("SELECT rowid FROM packs WHERE id=?", (pid,)).fetchone()
                rows += [(e.block_id, rowid, e.offset, e.length, e.raw_length, e.kind) for e in entries]
            if carried:  # (verification times kept over an index reset: given back)
                c.executemany("UPDATE packs SET verified_at = (SELECT v.at FROM verified v WHERE v.id = packs.id) "
                              "WHERE id = ? AND verified_at IS NULL", [(pid,) for pid in seg.packs])
            rows.sort()  # in key order: ~30 % faster into the B-tree than random ids (60,000 rows: 0.39 -> 0.27 s)
            c.executemany("INSERT OR IGNORE INTO blocks (id, pack, offset, length, raw_length, kind) "
                          "VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._tx(run)

    # --- blocks -------------------------------------------------------------------------------------
    def has_any_block(self) -> bool:
        return bool(self._q("SELECT 1 FROM blocks LIMIT 1"))

    def has_block(self, bid: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM blocks WHERE id=?", (bid,)))

    def lookup(self, bid: bytes) -> tuple[bytes, PackEntry] | None:
        rows = self._q("SELECT p.id, b.kind, b.offset, b.length, b.raw_length FROM blocks b "
                       "JOIN packs p ON p.rowid = b.pack WHERE b.id=?", (bid,))
        if not rows:
            return None
        pid, kind, off, length, raw = rows[0]
        return bytes(pid), _entry(kind, bid, off, length, raw, pid)

    def load_block(self, repo, loc: tuple[bytes, PackEntry]) -> bytes:
        """``repo.load_block`` at a location this catalog gave; a block that fails its check there is first
        looked up in the repository's own index: when no segment places it there, the catalog (a cache) is what
        is wrong -- CatalogError (exit 1: rebuild it), not damage blamed on an intact repository (exit 20, and
        the documented way out, 'vault repair', rewrote its index for nothing)."""
        try:
            return repo.load_block(*loc)
        except IntegrityError:
            pid, entry = loc
            if self.unconfirmed(repo, {pid: {entry.block_id}}):
                raise CatalogError(f"this machine's catalog disagrees with the repository's index about block "
                                   f"{entry.block_id.hex()[:16]} in pack {pid.hex()[:16]} (the catalog is damaged, "
                                   "not the repository): run 'vault catalog rebuild', then try again") from None
            raise

    def lookup_many(self, ids: Iterable[bytes], batch: int = 500) -> dict[bytes, tuple[bytes, PackEntry]]:
        out: dict[bytes, tuple[bytes, PackEntry]] = {}
        todo = list(dict.fromkeys(ids))
        for i in range(0, len(todo), batch):
            part = todo[i : i + batch]
            marks = ",".join("?" * len(part))
            for bid, pid, kind, off, length, raw in self._q(
                    f"SELECT b.id, p.id, b.kind, b.offset, b.length, b.raw_length FROM blocks b "
                    f"JOIN packs p ON p.rowid = b.pack WHERE b.id IN ({marks})", part):
                out[bytes(bid)] = (pid, _entry(kind, bid, off, length, raw, pid))
        return out

    def indexed_after_all(self, repo, ids: set[bytes]) -> set[bytes]:
        """Of ``ids`` (blocks this catalog's index lacks), those an index segment of the repository lists -- one
        no other segment supersedes, for a pack the store holds: the catalog (a cache: rows deleted, a damaged
        page) is then what is wrong, not the repository. Reads every segment: for verify's rare case only."""
        gone: set[str] = set()
        found: list[tuple[str, bytes, bytes]] = []  # (segment, pack, block): one segment in memory at a time
        for sid in repo.list_index():
            try:
                seg = repo.load_index(sid)
            except VaultError:
                continue
            gone.update(x.hex() for x in seg.supersedes)
            found.extend((sid, pid, e.block_id) for pid, entries in seg.packs.items() for e in entries
                         if e.block_id in ids)
        packs = {pid for sid, pid, _ in found if sid not in gone}
        held = {pid for pid in packs if repo.backend.exists(pack_name(pid))}
        return {bid for sid, pid, bid in found if sid not in gone and pid in held}

    def check_not_lacking(self, repo, ids: set[bytes], then: str) -> None:
        """CatalogError (exit 1: rebuild it, then ``then``) when the repository's index lists some of ``ids``,
        blocks or trees this catalog lacks: the cache is damaged, not the repository (``indexed_after_all``)."""
        wrong = self.indexed_after_all(repo, ids)
        if wrong:
            raise CatalogError(f"this machine's catalog lacks {len(wrong)} block(s) the repository's index lists "
                               f"(e.g. {min(wrong).hex()[:16]}; the catalog is damaged, not the repository): run "
                               f"'vault catalog rebuild', then {then}")

    def unconfirmed(self, repo, failed: dict[bytes, set[bytes]]) -> set[bytes]:
        """Of ``failed`` (pack id -> ids of its blocks that failed their check when read at this catalog's
        location), the packs none of whose failures an index segment of the repository confirms -- every
        failing entry of the catalog is listed by no segment: the damage there may be the catalog's (a cache:
        a flipped bit, an edited row), not the repository's. Each pack's own segment is read first, the
        others only for what is left unconfirmed; a segment that cannot be read is skipped."""
        todo: dict[bytes, set[tuple]] = {}
        for pid, bids in failed.items():
            mine = {(e.block_id, e.offset, e.length, e.raw_length, e.kind) for e in self.pack_blocks(pid)
                    if e.block_id in bids}
            if mine:
                todo[pid] = mine
        first = {r[0] for pid in todo for r in self._q("SELECT segment FROM packs WHERE id=?", (pid,))}
        others = (sid for sid in repo.list_index() if sid not in first)
        confirmed: set[bytes] = set()
        for sid in itertools.chain(sorted(first), others):
            if len(confirmed) == len(todo):
                break
            try:
                seg = repo.load_index(sid)
            except VaultError:
                continue
            for pid in set(todo).intersection(seg.packs) - confirmed:
                if any((e.block_id, e.offset, e.length, e.raw_length, e.kind) in todo[pid] for e in seg.packs[pid]):
                    confirmed.add(pid)
        return set(todo) - confirmed

    def not_in_index(self, repo, entries: dict[bytes, set[tuple]] | None = None,
                     sizes: dict[bytes, int] | None = None) -> set[bytes]:
        """Of the packs named -- ``entries``: pack id -> this catalog's rows of some of its blocks, as (id, offset,
        length, raw length, kind); ``sizes``: pack id -> this catalog's size of it -- those for which no index
        segment of the repository lists one of those rows, or that size: what this catalog says there is its
        own (a cache: a flipped bit, an edited row), not the repository's. Each pack's own segment is read
        first, the others only for what is left. When the segment this catalog says lists one of them cannot be
        read, nothing is called the catalog's (empty set): the repository's index is damaged itself, and the
        check's report of the damage stands; another segment that cannot be read is passed over. For the rare
        case where a check is about to blame the repository on this catalog's word."""
        left = {pid: set(rows) for pid, rows in (entries or {}).items() if rows}
        size_left = dict(sizes or {})
        todo = set(left) | set(size_left)
        first = {r[0] for pid in todo for r in self._q("SELECT segment FROM packs WHERE id=?", (pid,))}
        for sid in itertools.chain(sorted(first), (sid for sid in repo.list_index() if sid not in first)):
            if not left and not size_left:
                break
            try:
                seg = repo.load_index(sid)
            except VaultError as exc:
                if not is_damage(exc):  # (the store, not the data: the check cannot be made now)
                    raise
                if sid in first:  # the very segment that lists them is damaged: the repository's damage, not ours
                    return set()
                continue  # (another one: it says nothing of these packs)
            for pid in todo.intersection(seg.packs):
                if pid in left:
                    left[pid] -= {(e.block_id, e.offset, e.length, e.raw_length, e.kind) for e in seg.packs[pid]}
                    if not left[pid]:
                        del left[pid]
                if pid in size_left and seg.sizes.get(pid) == size_left[pid]:
                    del size_left[pid]
        return set(left) | set(size_left)

    def check_in_index(self, repo, then: str, entries: dict[bytes, set[tuple]] | None = None,
                       sizes: dict[bytes, int] | None = None) -> None:
        """CatalogError (exit 1: rebuild it, then ``then``) when ``not_in_index`` finds any of these rows or sizes
        this catalog's own: a check must not blame the repository for them."""
        wrong = self.not_in_index(repo, entries, sizes)
        if wrong:
            raise CatalogError(f"this machine's catalog disagrees with the repository's index about pack "
                               f"{min(wrong).hex()[:16]} (the catalog is damaged, not the repository): run 'vault "
                               f"catalog rebuild', then {then}")

    def has_pack(self, pid: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM packs WHERE id=?", (pid,)))

    def packs(self) -> list[tuple[bytes, str, int]]:
        return [(bytes(p), k, s) for p, k, s in self._q("SELECT id, kind, size FROM packs")]

    def pack_blocks(self, pid: bytes) -> list[PackEntry]:
        return [PackEntry(*row) for row in self.pack_rows(pid)]

    def pack_rows(self, pid: bytes) -> list[tuple]:
        """``pack_blocks`` as plain (kind, id, offset, length, raw length) tuples: to send to a worker process
        (pickling thousands of dataclasses a pack cost the main process more than the query)."""
        return self._q("SELECT b.kind, b.id, b.offset, b.length, b.raw_length FROM blocks b JOIN packs p "
                       "ON p.rowid=b.pack WHERE p.id=? ORDER BY b.offset", (pid,))

    def tree_block_ids(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._q("SELECT id FROM blocks WHERE kind='T'")]

    def mark_verified(self, pids: Iterable[bytes], when: float) -> None:
        self._tx(lambda c: c.executemany("UPDATE packs SET verified_at=? WHERE id=?", [(when, p) for p in pids]))

    # --- snapshots ----------------------------------------------------------------------------------
    def add_snapshot(self, snap: Snapshot) -> None:
        row = (snap.id, format_time(snap.time), storable_text(snap.host), json.dumps(snap.paths), json.dumps(snap.tags),
               snap.tree, storable_text(snap.username), snap.parent, json.dumps(snap.summary))
        seal = _snapshot_seal(self._sealing[1], row) if self._sealing[1] else None  # (the key: known once synced)
        self._tx(lambda c: c.execute(f"INSERT OR REPLACE INTO snapshots ({_SEALED_COLUMNS}) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, None, seal)))

    def _check_seals(self, repo) -> set[str]:
        """Delete the snapshot rows whose seal does not hold (edited or damaged: the sync reads those manifests
        again from the repository -- one changed tree id made `restore latest` restore another snapshot's tree,
        exit 0, verify clean). Returns the ids of rows with no seal at all (written by an earlier vault): read
        again when their manifest is listed; kept when it is not, as the only record of a manifest lost."""
        key = self._key(repo)
        unsealed: set[str] = set()
        for table in ("snapshots", "lost_snapshots"):
            if table == "lost_snapshots" and not self._has_table(table):
                continue
            bad, moved = [], []
            for row in self._q(f"SELECT {_SEALED_COLUMNS} FROM {table}"):
                fields, old, seal = row[:-2], row[-2], row[-1]
                if seal is not None:
                    if not _seal_holds(key, fields, seal):
                        bad.append((row[0],))
                elif old is not None and _seal_holds(key, fields, old):
                    moved.append((row[0],))  # (this key's seal in the old column: a vault of this session, a2bceff)
                elif old is not None and not _seal_holds(self._legacy_key(repo), fields, old):
                    bad.append((row[0],))  # (as the earlier vault that wrote it would have it: damaged or edited)
                elif table == "snapshots":  # (no seal, or only the old one -- no better than none)
                    unsealed.add(row[0])
            if bad or moved:
                self._tx(lambda c: (c.executemany(f"DELETE FROM {table} WHERE id=?", bad),
                                    c.executemany(f"UPDATE {table} SET seal2=seal, seal=NULL WHERE id=?", moved)))
        return unsealed

    def snapshots(self, table: str = "snapshots") -> list[Snapshot]:
        rows = self._q(f"SELECT {_SNAPSHOT_COLUMNS} FROM {table}")
        out = [Snapshot(time=parse_stored_time(t), host=h, paths=json.loads(p), tags=json.loads(tg), tree=bytes(tr),
                        username=u or "", parent=par, summary=json.loads(s or "{}"), id=i)
               for i, t, h, p, tg, tr, u, par, s in rows]
        out.sort(key=lambda s: (s.time, s.id))
        return out

    # --- snapshots whose manifest vanished without a forget ----------------------------------------------
    def _has_table(self, name: str) -> bool:
        return bool(self._q("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def _forgotten(self, repo, ids: set[str]) -> set[str]:
        """Those of ``ids`` (snapshots whose manifests are gone) that a ``logs/`` record lets go: forget and
        repair record every manifest they delete before deleting it. Each record is read once (``logs_read``);
        one that cannot be read is tried again next time."""
        self._tx(lambda c: (c.execute("CREATE TABLE IF NOT EXISTS logs_read (id TEXT PRIMARY KEY)"),
                            c.execute("CREATE TABLE IF NOT EXISTS forgotten (id TEXT PRIMARY KEY)")))
        read = {r[0] for r in self._q("SELECT id FROM logs_read")}
        for lid in repo.list_logs():
            if lid in read:
                continue
            try:
                doc = repo.load_log(lid)
                let_go = [d["id"] for d in doc.get("decisions", [])
                          if isinstance(d, dict) and not d.get("keep") and isinstance(d.get("id"), str)]
            except (VaultError, ValueError, TypeError, AttributeError, KeyError):
                continue
            self._tx(lambda c: (c.executemany("INSERT OR IGNORE INTO forgotten (id) VALUES (?)",
                                              [(i,) for i in let_go]),
                                c.execute("INSERT OR IGNORE INTO logs_read (id) VALUES (?)", (lid,))))
        return set(self._present("main.forgotten", sorted(ids)))

    def _note_lost(self, repo, in_repo: set[str], rep: "SyncReport") -> None:
        """Each snapshot this catalog had read whose manifest is gone with no record letting it go is lost:
        damage (``rep.problems``, ``rep.unreadable``) until ``vault repair`` writes it again (``lost_snapshots``
        keeps what the catalog knew), the manifest comes back, or a record lets it go after all (another
        machine's repair wrote it again; a forget record that could not be read before) -- the new records are
        read at every sync while any is lost."""
        if not self._has_table("lost_snapshots"):
            return
        lost = {r[0] for r in self._q("SELECT id FROM lost_snapshots")}
        if not lost:
            return
        settled = (lost & in_repo) | self._forgotten(repo, lost) | self._taken_over(lost - in_repo)
        if settled:
            self.drop_lost(sorted(settled))
        for (sid,) in self._q("SELECT id FROM lost_snapshots ORDER BY id"):
            why = ("manifest missing: deleted without a forget ('vault repair snapshots' writes it again from "
                   "this machine's catalog)")
            rep.problems.append(f"snapshot {sid[:8]}: {why}")
            rep.unreadable[sid] = why

    def _taken_over(self, ids: set[str]) -> set[str]:
        """Those of the lost ``ids`` whose state a live snapshot holds already: the same root tree, recovered
        from it (``summary.recovered_tree``) or with the same time, host and paths (a manifest an older vault's
        repair removed without a record, after it recovered the tree or healed the manifest from a copy)."""
        out = set()
        for sid, t, h, p, tree in self._q("SELECT id, time, host, paths, tree FROM lost_snapshots"):
            if sid not in ids:
                continue
            for summary, t2, h2, p2 in self._q("SELECT summary, time, host, paths FROM snapshots WHERE tree=?", (tree,)):
                try:
                    recovered = json.loads(summary or "{}").get("recovered_tree") == bytes(tree).hex()
                except (ValueError, AttributeError):
                    recovered = False
                if recovered or (t2, h2, json.loads(p2) if p2 else None) == (t, h, json.loads(p) if p else None):
                    out.add(sid)
                    break
        return out

    def let_go(self, repo, sid: str) -> bool:
        """Whether a ``logs/`` record (forget, repair) lets snapshot ``sid`` go: its manifest may be deleted."""
        return bool(self._forgotten(repo, {sid}))

    def lost_snapshots(self) -> list[Snapshot]:
        return self.snapshots("lost_snapshots") if self._has_table("lost_snapshots") else []

    def unsealed_lost(self) -> set[str]:
        """The lost snapshots whose record here has no seal (read by an earlier vault, or a row set so by hand):
        still reported as lost, but never written back into the repository from this record -- a forged row
        would have become a real snapshot."""
        if not self._has_table("lost_snapshots"):
            return set()
        return {r[0] for r in self._q("SELECT id FROM lost_snapshots WHERE seal2 IS NULL")}

    def drop_lost(self, ids: list[str]) -> None:
        self._tx(lambda c: c.executemany("DELETE FROM lost_snapshots WHERE id=?", [(i,) for i in ids]))

    # --- trees --------------------------------------------------------------------------------------
    def _key(self, repo) -> bytes:
        mac_key = repo.keys.mac_key
        if self._sealing[0] != mac_key:
            self._sealing = (mac_key, entries_mod.cache_key(mac_key))
        return self._sealing[1]

    def _legacy_key(self, repo) -> bytes:
        return entries_mod.legacy_cache_key(repo.keys.mac_key)

    def add_tree(self, repo, tree_id: bytes, nodes: list[Node]) -> None:
        """Cache a tree's entries (validated: built by vault, or decoded from the repository)."""
        self.add_trees(repo, [(tree_id, nodes)])

    def add_trees(self, repo, trees: list[tuple[bytes, list[Node]]], pending: int = 0) -> None:
        """Cache many trees in one transaction.

        ``checked`` is 1 for a tree every block of whose files is known to be in the index: a backup then
        trusts a checked parent tree's blocks without asking the index for each one. Blocks leave the index
        only through ``_reset_index``, which unchecks every tree. A backup caches the trees it writes with
        ``pending`` (a negative token of its run: not checked) and ``confirm_pending`` marks them once its
        last index segment names their new blocks; a backup stopped before that leaves them unchecked."""
        key = self._key(repo)
        sealed = [(tid, entries_mod.seal(key, tid, nodes), pending) for tid, nodes in trees]
        self._tx(lambda c: c.executemany("INSERT INTO trees (id, entries, checked) VALUES (?, ?, ?) ON CONFLICT(id) "
                                         "DO UPDATE SET checked=CASE WHEN checked=1 OR excluded.checked=0 THEN "
                                         "checked ELSE excluded.checked END", sealed))

    def confirm_pending(self, pending: int) -> None:
        """The trees a backup cached with ``pending`` (``add_trees``) are checked: its blocks are indexed."""
        # ("checked < 0" lets SQLite use the partial index trees_pending: a scan read every tree's entries)
        self._tx(lambda c: c.execute("UPDATE trees SET checked=1 WHERE checked=? AND checked < 0", (pending,)))

    def mark_checked(self, tree_ids: list[bytes]) -> None:
        """Record that every block of these cached trees' files was found in the index (see ``add_trees``)."""
        self._tx(lambda c: c.executemany("UPDATE trees SET checked=1 WHERE id=?", [(t,) for t in tree_ids]))

    def blocks_missing(self, ids: list[bytes]) -> set[bytes]:
        """Those of ``ids`` the index does not list."""
        return set(ids).difference(self._present("main.blocks", ids))

    def _forget_tree(self, tree_id: bytes) -> None:
        self._take_row_ahead(tree_id)
        self._tx(lambda c: c.execute("DELETE FROM trees WHERE id=?", (tree_id,)))

    def tree(self, repo, tree_id: bytes) -> list[Node]:
        """The entries of a tree, verified: from the catalog when their seal (keyed MAC) holds, else loaded
        (verified, validated) from the repository and cached again."""
        entries, _, nodes, _ = self._tree(repo, tree_id)
        return nodes if nodes is not None else [entries_mod.node(e) for e in entries]

    def tree_entries(self, repo, tree_id: bytes) -> list[tuple]:
        """A tree's entries in the catalog's form (``entries.py``), from the cache or the repository."""
        return self.parent_entries(repo, tree_id)[0]

    def cached_entries(self, repo, tree_id: bytes, indexed: bool = False) -> list[tuple] | None:
        """A tree's entries if this catalog holds them (sealed, checked) -- and, with ``indexed``, the index
        lists the tree (the cache outlives index rebuilds); None otherwise. Never reads the repository."""
        return next((e for _, e in self.iter_cached_entries(repo, [tree_id], indexed)), None)

    def iter_cached_entries(self, repo, tree_ids: list[bytes], indexed: bool = False) -> Iterator[tuple[bytes, list]]:
        """``cached_entries`` for many trees (at most 500) in one query: (id, entries) of those the catalog
        holds, in no particular order, fetched one row at a time (one tree in memory, however many are asked)."""
        sql = f"SELECT id, entries FROM trees t WHERE t.id IN ({','.join('?' * len(tree_ids))})"
        if indexed:
            sql += " AND EXISTS(SELECT 1 FROM blocks b WHERE b.id = t.id)"
        damaged = []
        for tid, sealed in self._iter(sql, tree_ids, batch=1):
            tid = bytes(tid)
            entries = self._unseal(repo, tid, sealed, forget=False)
            if entries is None:
                damaged.append(tid)
                continue
            yield tid, entries
        for tid in damaged:
            self._forget_tree(tid)

    def iter_cached_or(self, repo, tree_ids: list[bytes], load: Callable[[bytes], list | None],
                       indexed: bool = False) -> Iterator[tuple[bytes, list | None]]:
        """(id, entries) of each of ``tree_ids`` (at most 500): one query for those cached (see
        ``iter_cached_entries``), ``load(id)`` for the rest; one tree in memory at a time."""
        done = set()
        for tid, entries in self.iter_cached_entries(repo, tree_ids, indexed):
            done.add(tid)
            yield tid, entries
        for tid in tree_ids:
            if tid not in done:
                yield tid, load(tid)

    def iter_tree_entries(self, repo, tree_ids: list[bytes]) -> Iterator[tuple[bytes, list[tuple]]]:
        """(id, ``tree_entries``) of each of ``tree_ids`` (at most 500), cached or loaded from the repository."""
        return self.iter_cached_or(repo, tree_ids, lambda tid: self.tree_entries(repo, tid))

    def _unseal(self, repo, tree_id: bytes, sealed: object, forget: bool = True) -> list[tuple] | None:
        """A cached row's entries; None when its seal does not hold (never trust it: the row is dropped, now or,
        without ``forget``, by the caller once its query is done)."""
        try:
            return entries_mod.unseal(self._key(repo), tree_id, sealed)
        except IntegrityError:
            if forget:
                self._forget_tree(tree_id)
            return None

    def parent_entries(self, repo, tree_id: bytes) -> tuple[list[tuple], bool, bool]:
        """A tree's entries in the catalog's form (``entries.py``: plain tuples, validated), whether the index
        lists the tree and whether the tree is checked (``add_trees``), in one query."""
        entries, indexed, nodes, checked = self._tree(repo, tree_id)
        return (entries if nodes is None else [entries_mod.entry(n) for n in nodes]), indexed, checked

    def _cached_or_load(self, repo, tree_id: bytes) -> tuple[list[tuple], bool, list[Node] | None, bool]:
        row = self._take_row_ahead(tree_id)
        if row is not None:
            rows = [row]
        else:
            try:
                rows = self._q("SELECT entries, EXISTS(SELECT 1 FROM blocks b WHERE b.id = t.id), checked FROM trees "
                               "t WHERE t.id=?", (tree_id,))
            except CatalogError:  # the cached trees cannot be read (a damaged page): the repository has them all
                rows, self.trees_unusable = [], True
        if rows:
            entries = self._unseal(repo, tree_id, rows[0][0])
            if entries is not None:
                self._read_rows_ahead([e[2] for e in entries if e[1][0] == DIR and e[2] is not None])
                return entries, bool(rows[0][1]), None, rows[0][2] == 1
        loc = self.lookup(tree_id)  # not cached, or the cached copy was damaged: fetch it again
        if loc is None:
            if not self._index_asked:  # (once: a real loss must not cost a read of every segment per tree)
                self._index_asked = True
                self.check_not_lacking(repo, {tree_id}, "try again")
            raise IntegrityError(f"tree {tree_id.hex()[:16]} is not in the index (missing)")
        nodes = Tree.decode(self.load_block(repo, loc)).nodes
        if not self.trees_unusable:  # (not written into a table that failed to read)
            self.add_tree(repo, tree_id, nodes)
        self._fetch_ahead(repo, [n.subtree for n in nodes if n.type == DIR and n.subtree is not None])
        return [], True, nodes, False

    def _read_rows_ahead(self, tree_ids: list[bytes]) -> None:
        """Read the cached rows of a walked tree's subdirectories in one query (a walk asks for them next: one
        query per directory cost a re-run of an unchanged tree ~15 % of its time). At most ROWS_AHEAD rows of
        up to ROW_AHEAD_MAX bytes each are held (the oldest let go first); bigger ones are read when asked.
        Trees are immutable: a row held is the row the walk would read (its seal is checked when it is used)."""
        todo = [t for t in tree_ids if t not in self._rows_ahead][:ROWS_AHEAD]
        if len(todo) < 2 or self.trees_unusable:  # (one subdirectory: no query saved)
            return
        try:
            rows = self._q(f"SELECT id, entries, EXISTS(SELECT 1 FROM blocks b WHERE b.id = t.id), checked FROM "
                           f"trees t WHERE t.id IN ({','.join('?' * len(todo))}) AND length(entries) <= ?",
                           (*todo, ROW_AHEAD_MAX))
        except CatalogError:
            return  # (each read again on its own when asked, and the damage handled there)
        with self._lock:
            for tid, *row in rows:
                self._take_row_ahead(bytes(tid))
                self._rows_ahead[bytes(tid)] = tuple(row)
                self._rows_ahead_bytes += len(row[0])
            while len(self._rows_ahead) > ROWS_AHEAD or self._rows_ahead_bytes > ROWS_AHEAD_BYTES:
                self._take_row_ahead(next(iter(self._rows_ahead)))

    def _take_row_ahead(self, tree_id: bytes) -> tuple | None:
        """The row read ahead for ``tree_id`` (``_read_rows_ahead``), let go of; None when none is held."""
        with self._lock:
            row = self._rows_ahead.pop(tree_id, None)
            if row is not None:
                self._rows_ahead_bytes -= len(row[0])
            return row

    def _tree(self, repo, tree_id: bytes) -> tuple[list[tuple], bool, list[Node] | None, bool]:
        """``_cached_or_load``, after waiting for the tree's fetch when one is under way (``_fetch_ahead``): a
        tree fetched ahead is read from the cache like any other; the children of a tree the cache did not
        hold are fetched ahead in turn (a cold cache: its subtrees are likely not cached either)."""
        with self._lock:
            fetching = self._ahead.pop(tree_id, None)
        if fetching is None:
            return self._cached_or_load(repo, tree_id)
        try:
            fetching.result()
        except Exception:  # (CancelledError included) fetched again below: its error is reported there
            pass
        entries, indexed, nodes, checked = got = self._cached_or_load(repo, tree_id)
        if nodes is None:
            self._fetch_ahead(repo, [e[2] for e in entries if e[1][0] == DIR and e[2] is not None])
        return got

    def _fetch_ahead(self, repo, tree_ids: list[bytes]) -> None:
        """A remote repository (``prefetch`` > 1): fetch these trees into the cache in threads, ``prefetch``
        at a time, those not cached yet and at most ``AHEAD`` under way: a walk of a cold cache asks for them
        next, and would otherwise wait for one round trip after another."""
        if self.prefetch < 2 or self.trees_unusable or not tree_ids:
            return
        with self._lock:
            if len(self._ahead) >= AHEAD // 2:  # (fetched ahead, never asked for: ls of a sub-path, --include)
                for tid in [t for t, f in self._ahead.items() if f.done()]:
                    del self._ahead[tid]  # (it is in the cache: the walk reads it there if it comes)
            todo = [t for t in dict.fromkeys(tree_ids) if t not in self._ahead][: AHEAD - len(self._ahead)]
            if not todo or self._closed:
                return
            cached = set(self._present("main.trees", todo))
            todo = [t for t in todo if t not in cached]
            if self._pool is None and todo:
                self._pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="vault-trees")
            for tid in todo:
                self._ahead[tid] = self._pool.submit(self._fetch_into_cache, repo, tid)

    def _fetch_into_cache(self, repo, tree_id: bytes) -> None:
        loc = self.lookup(tree_id)
        if loc is None:
            return  # (the walk finds it missing and says so)
        nodes = Tree.decode(repo.load_block(*loc)).nodes  # (authenticated and validated, as any tree read)
        with self._lock:
            if not self._closed:
                self.add_tree(repo, tree_id, nodes)

    def walk(self, repo, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Every (path, node) below a tree, depth-first in name order; paths start with ``/``."""
        stack = [(prefix, tree_id)]
        while stack:
            base, tid = stack.pop()
            nodes = self.tree(repo, tid)
            subdirs = []
            for n in nodes:
                path = base + b"/" + n.name
                yield path, n
                if n.type == "dir" and n.subtree is not None:
                    subdirs.append((path, n.subtree))
            stack.extend(reversed(subdirs))

    # --- runs that store packs (backup, copy into this repository), marked while they run ------------------
    # A run that ends any other way than by naming every pack it stored in an index segment (an error, a worker
    # process killed, a kill whose lock someone removed since) leaves its mark: the next run then looks for
    # the packs no segment names (``packwriter.adopt_leftover_packs``: a listing of every pack).
    def _table(self, name: str, columns: str) -> None:
        """Make table ``name`` if it is not there yet (one created on first use: no schema change, so older
        versions open the catalog as before); asked once per process."""
        if name not in self._made:
            self._tx(lambda c: c.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns}) WITHOUT ROWID"))
            self._made.add(name)

    def _runs_init(self) -> None:
        self._table("run_marks", "token TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, boot TEXT NOT "
                                 "NULL, pid_ns TEXT NOT NULL, pid_start TEXT NOT NULL, started REAL NOT NULL")

    def run_marks(self) -> list[tuple[str, str, int, str, str, str, float]]:
        """(token, host, pid, boot id, PID namespace, the process's start, the run's start time) of each mark."""
        self._runs_init()
        return [tuple(r) for r in self._q("SELECT token, host, pid, boot, pid_ns, pid_start, started "
                                          "FROM run_marks")]

    def run_mark(self, token: str, who: tuple[str, int, str, str, str], started: float) -> None:
        self._runs_init()
        self._tx(lambda c: c.execute("INSERT OR REPLACE INTO run_marks (token, host, pid, boot, pid_ns, pid_start, "
                                     "started) VALUES (?, ?, ?, ?, ?, ?, ?)", (token, *who, started)))

    def run_unmark(self, tokens: list[str]) -> None:
        self._runs_init()
        self._tx(lambda c: c.executemany("DELETE FROM run_marks WHERE token=?", [(t,) for t in tokens]))

    # --- leftover packs a backup found damaged (never adopted; kept until prune deletes them) -------------
    def _rejected_init(self) -> None:
        self._table("rejected_packs", "id BLOB PRIMARY KEY, size INTEGER NOT NULL")

    def is_rejected(self, pid: bytes, size: int) -> bool:
        self._rejected_init()
        return bool(self._q("SELECT 1 FROM rejected_packs WHERE id=? AND size=?", (pid, size)))

    def reject(self, pid: bytes, size: int) -> None:
        self._rejected_init()
        self._tx(lambda c: c.execute("INSERT OR REPLACE INTO rejected_packs (id, size) VALUES (?, ?)", (pid, size)))

    # --- copy support: source block id -> destination block id (created on first use) -------------------
    # Each row is sealed (a keyed MAC with the destination's key, as cached trees are): an unsealed map was
    # trusted, and one edited row made copy write a file with another file's content into the destination,
    # where nothing could ever see it (the ids and sizes there are self-consistent).
    def copy_map_init(self) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("DROP TABLE IF EXISTS copy_map")  # (0.1.1's, unsealed)
            c.execute("DROP TABLE IF EXISTS copy_trees")
            c.execute("CREATE TABLE IF NOT EXISTS copy_map2 (src BLOB PRIMARY KEY, dst BLOB NOT NULL, seal BLOB NOT "
                      "NULL) WITHOUT ROWID")
            c.execute("CREATE TABLE IF NOT EXISTS copy_trees2 (src BLOB PRIMARY KEY, dst BLOB NOT NULL, "
                      "epoch INTEGER NOT NULL, seal BLOB NOT NULL) WITHOUT ROWID")
        self._tx(run)

    def _copy_seal(self, repo, what: bytes, src: bytes, dst: bytes, epoch: int = 0) -> bytes:
        return hmac.new(self._key(repo), b"%s %d %s %s" % (what, epoch, src, dst), hashlib.sha256).digest()[:16]

    def _copy_get(self, repo, table: str, what: bytes, src: bytes, epoch: int = 0) -> bytes | None:
        rows = self._q(f"SELECT dst, seal FROM {table} WHERE src=?" + (" AND epoch=?" if table == "copy_trees2" else ""),
                       (src, epoch) if table == "copy_trees2" else (src,))
        if not rows or not isinstance(rows[0][0], bytes) or not isinstance(rows[0][1], bytes):
            return None
        dst = bytes(rows[0][0])
        ok = hmac.compare_digest(bytes(rows[0][1]), self._copy_seal(repo, what, src, dst, epoch))
        return dst if ok else None  # (a row that fails its seal: as if absent -- the block is read and sent)

    def copy_map_get(self, repo, src: bytes) -> bytes | None:
        """The destination (``repo``) id of source block ``src``, when copied before."""
        return self._copy_get(repo, "copy_map2", b"block", src)

    def copy_map_put(self, repo, pairs: list[tuple[bytes, bytes]]) -> None:
        rows = [(s, d, self._copy_seal(repo, b"block", s, d)) for s, d in pairs]
        self._tx(lambda c: c.executemany("INSERT OR REPLACE INTO copy_map2 (src, dst, seal) VALUES (?, ?, ?)", rows))

    def copy_tree_get(self, repo, src: bytes, epoch: int) -> bytes | None:
        """The destination tree a source tree was copied to, when every block below it was indexed in this
        index epoch (``index_epoch``): a tree mapped before the index was last reset is walked again."""
        return self._copy_get(repo, "copy_trees2", b"tree", src, epoch)

    def copy_tree_put(self, repo, pairs: list[tuple[bytes, bytes]], epoch: int) -> None:
        rows = [(s, d, epoch, self._copy_seal(repo, b"tree", s, d, epoch)) for s, d in pairs]
        self._tx(lambda c: c.executemany("INSERT OR REPLACE INTO copy_trees2 (src, dst, epoch, seal) VALUES "
                                         "(?, ?, ?, ?)", rows))

    # --- prune support (temporary tables, on disk: memory stays flat however big the repository) ----------
    def marker(self, sizes: bool = False) -> "UsedMarker":
        """Empty sets of referenced block ids (``used``) and walked trees (``walked``), and a marker that fills
        them in batches: one transaction per ~20,000 ids, not one per tree. ``sizes``: each walked file's
        recorded size goes into ``fsizes`` too, for ``size_mismatches``."""
        def run(c: sqlite3.Connection) -> None:
            for table in ("used", "walked"):
                c.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id BLOB PRIMARY KEY) WITHOUT ROWID")
                c.execute(f"DELETE FROM temp.{table}")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS fsizes (blocks BLOB, size INTEGER)")
            c.execute("DELETE FROM temp.fsizes")
        self._tx(run)
        return UsedMarker(self, sizes=sizes)

    def _mark_flush(self, trees: Iterable[bytes], ids: Iterable[bytes], sizes: Iterable[tuple] = ()) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR IGNORE INTO temp.walked (id) VALUES (?)", ((t,) for t in trees))
            c.executemany("INSERT OR IGNORE INTO temp.used (id) VALUES (?)", ((i,) for i in ids))
            c.executemany("INSERT INTO temp.fsizes (blocks, size) VALUES (?, ?)", sizes)
        self._tx(run)

    def size_mismatches(self) -> Iterator[tuple[bytes, int, int]]:
        """(the file's joined block ids, recorded size, bytes its blocks hold) of each file the marker
        walked whose indexed blocks hold another number of bytes than the tree records (restore would call it
        damaged). Files with a block missing from the index are left out (reported as missing). A one-block
        file -- nearly all of them -- is checked in SQL, the others in batches of block lookups."""
        yield from ((bytes(b), s, raw) for b, s, raw in self._iter(
            "SELECT DISTINCT f.blocks, f.size, b.raw_length FROM temp.fsizes f JOIN blocks b ON b.id = f.blocks "
            "WHERE length(f.blocks) = ? AND b.raw_length != f.size", (ID_LEN,)))
        yield from ((b"", s, 0) for (s,) in self._iter(
            "SELECT DISTINCT size FROM temp.fsizes WHERE length(blocks) = 0 AND size != 0"))
        rows = self._iter(f"SELECT DISTINCT blocks, size FROM temp.fsizes WHERE length(blocks) > {ID_LEN}")
        while batch := list(itertools.islice(rows, 200)):
            where = self.lookup_many(b for blocks, _ in batch for b in split_ids(bytes(blocks)))
            for blocks, size in batch:
                locs = [where.get(b) for b in split_ids(bytes(blocks))]
                if all(locs) and (held := sum(loc[1].raw_length for loc in locs)) != size:
                    yield bytes(blocks), size, held

    def drop_unwalked_trees(self) -> None:
        """After prune's mark phase walked every snapshot: drop the cached trees none of them references (those
        of forgotten snapshots), so the cache does not grow night after night while the repository does not."""
        self._tx(lambda c: c.execute("DELETE FROM trees WHERE id NOT IN (SELECT id FROM temp.walked)"))

    def walked(self, tid: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM temp.walked WHERE id=?", (tid,)))

    def used_count(self) -> int:
        return self._q("SELECT count(*) FROM temp.used")[0][0]

    def _present(self, table: str, ids: Iterable, batch: int = 500) -> Iterator:
        """Those of ``ids`` (blob ids, or text ids for a table keyed by text) that ``table`` holds (a temporary
        table unless qualified), asked ``batch`` at a time."""
        table = table if "." in table else f"temp.{table}"
        todo = list(ids)
        for i in range(0, len(todo), batch):
            part = todo[i : i + batch]
            for (found,) in self._q(f"SELECT id FROM {table} WHERE id IN ({','.join('?' * len(part))})", part):
                yield found if type(found) is str else bytes(found)

    def used_contains(self, ids: Iterable[bytes]) -> bool:
        """Whether any of these block ids is in ``used``."""
        return next(self._present("used", ids), None) is not None

    def used_missing(self, limit: int = 10) -> tuple[int, list[bytes]]:
        """Referenced block ids that no index entry locates: (count, the first ``limit``; -1: all)."""
        q = "FROM temp.used u WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.id = u.id)"
        (n,), = self._q(f"SELECT count(*) {q}")
        return n, [bytes(r[0]) for r in self._q(f"SELECT u.id {q} LIMIT ?", (limit,))]

    def stored_begin(self) -> None:
        """An empty temporary table of the packs the store holds (filled by ``stored_add``)."""
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS stored (id BLOB PRIMARY KEY, size INTEGER) WITHOUT ROWID")
            c.execute("DELETE FROM temp.stored")
        self._tx(run)

    def pack_count(self) -> int:
        return self._q("SELECT count(*) FROM packs")[0][0]

    def stored_pack_count(self) -> int:
        """Indexed packs the store holds with their indexed size."""
        return self._q("SELECT count(*) FROM packs p JOIN temp.stored s ON s.id = p.id AND s.size = p.size")[0][0]

    def packs_not_stored(self) -> Iterator[tuple[bytes, int, int | None]]:
        """(id, indexed size, stored size or None) of indexed packs missing from the store or of another size."""
        for pid, size, stored in self._iter("SELECT p.id, p.size, s.size FROM packs p LEFT JOIN temp.stored s "
                                            "ON s.id = p.id WHERE s.size IS NULL OR s.size != p.size"):
            yield bytes(pid), size, stored

    def stored_packs_by_verification(self) -> Iterator[tuple[bytes, int]]:
        """(id, size) of the indexed packs the store holds intact in size, least recently verified first."""
        for pid, size in self._iter("SELECT p.id, p.size FROM packs p JOIN temp.stored s ON s.id = p.id AND "
                                    "s.size = p.size ORDER BY coalesce(p.verified_at, 0), p.id"):
            yield bytes(pid), size

    def verification_summary(self) -> tuple[int, int, float | None]:
        """(packs, packs never verified, oldest verification time)."""
        (total, never, oldest), = self._q("SELECT count(*), count(*) - count(verified_at), min(verified_at) "
                                          "FROM packs")
        return total, never, oldest

    def stored_add(self, packs: Iterable[tuple[bytes, int]]) -> None:
        self._tx(lambda c: c.executemany("INSERT OR REPLACE INTO temp.stored (id, size) VALUES (?, ?)", packs))

    def small_segments(self, below: int) -> int:
        """How many loaded index segments list fewer than ``below`` packs (prune merges them)."""
        (n,), = self._q("SELECT count(*) FROM (SELECT segment FROM packs WHERE segment IS NOT NULL GROUP BY segment "
                        "HAVING count(*) < ?)", (below,))
        return n

    def superseded_known(self) -> bool:
        """Whether the last sync met a segment that another one supersedes (an interrupted prune's, or merge's)."""
        return self._has_table("superseded") and bool(
            self._q("SELECT 1 FROM superseded JOIN segments USING (id) LIMIT 1"))

    def pack_usage(self) -> Iterator[tuple[bytes, str, int, int | None, int, int, int]]:
        """Per indexed pack: (id, kind, indexed size, stored size or None, blocks located here, of which
        referenced, referenced bytes)."""
        rows = self._iter(
            "SELECT p.id, p.kind, p.size, s.size, count(b.id), count(u.id), "
            "coalesce(sum(CASE WHEN u.id IS NOT NULL THEN b.length END), 0) "
            "FROM packs p LEFT JOIN temp.stored s ON s.id = p.id LEFT JOIN blocks b ON b.pack = p.rowid "
            "LEFT JOIN temp.used u ON u.id = b.id GROUP BY p.rowid ORDER BY p.rowid")
        for pid, kind, size, stored, nblocks, nused, used_bytes in rows:
            yield bytes(pid), kind, size, stored, nblocks, nused, used_bytes

    def planned_begin(self) -> None:
        """repair --dry-run: an empty temporary table of the block locations the new index would hold."""
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS planned (id BLOB PRIMARY KEY, pack BLOB NOT NULL, "
                      "offset INTEGER, length INTEGER, raw_length INTEGER, kind TEXT) WITHOUT ROWID")
            c.execute("DELETE FROM temp.planned")
        self._tx(run)

    def planned_add(self, packs: Iterable[tuple[bytes, int, list[PackEntry]]]) -> None:
        self._tx(lambda c: c.executemany(
            "INSERT OR IGNORE INTO temp.planned (id, pack, offset, length, raw_length, kind) VALUES (?,?,?,?,?,?)",
            ((e.block_id, pid, e.offset, e.length, e.raw_length, e.kind) for pid, _, es in packs for e in es)))

    def planned_lookup(self, bid: bytes) -> tuple[bytes, PackEntry] | None:
        rows = self._q("SELECT pack, kind, offset, length, raw_length FROM temp.planned WHERE id=?", (bid,))
        if not rows:
            return None
        pid, kind, off, length, raw = rows[0]
        return bytes(pid), PackEntry(kind, bid, off, length, raw)

    def planned_among(self, ids: Iterable[bytes]) -> set[bytes]:
        return set(self._present("planned", ids))

    def removed_begin(self, ids: Iterable[bytes]) -> None:
        """Prune: the packs it removes, in a temporary table (``removed_among`` asks it), not in memory."""
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS removed (id BLOB PRIMARY KEY) WITHOUT ROWID")
            c.execute("DELETE FROM temp.removed")
            c.executemany("INSERT OR IGNORE INTO temp.removed (id) VALUES (?)", ((i,) for i in ids))
        self._tx(run)

    def held_dirs_begin(self) -> None:
        """A temporary table of directories whose metadata a restore sets at the end, deepest first: on disk
        past the temp cache, so memory does not grow with the number or the depth of directories."""
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS held_dirs (depth INTEGER NOT NULL, path BLOB NOT NULL, "
                      "meta BLOB NOT NULL)")
            c.execute("DELETE FROM temp.held_dirs")
        self._tx(run)

    def held_dirs_add(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        self._tx(lambda c: c.executemany("INSERT INTO temp.held_dirs (depth, path, meta) VALUES (?, ?, ?)", rows))

    def held_dirs_deepest_first(self) -> Iterator[tuple[bytes, bytes]]:
        return ((bytes(p), bytes(m)) for p, m in self._iter("SELECT path, meta FROM temp.held_dirs ORDER BY depth DESC"))

    def removed_among(self, ids: Iterable[bytes]) -> set[bytes]:
        return set(self._present("removed", ids))

    def at_risk_begin(self) -> None:
        """Prune: an empty temporary table of referenced blocks that the index segments place in removed packs
        (``at_risk_add``); each must be found again in a pack that stays (``at_risk_found``)."""
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS at_risk (id BLOB PRIMARY KEY) WITHOUT ROWID")
            c.execute("DELETE FROM temp.at_risk")
        self._tx(run)

    def at_risk_add(self, ids: list[bytes], batch: int = 500) -> None:
        """Those of ``ids`` that a snapshot references (``used``) go into ``at_risk``."""
        for i in range(0, len(ids), batch):
            part = ids[i : i + batch]
            self._tx(lambda c, part=part: c.execute(
                f"INSERT OR IGNORE INTO temp.at_risk (id) SELECT id FROM temp.used WHERE id IN "
                f"({','.join('?' * len(part))})", part))

    def at_risk_found(self, ids: list[bytes], batch: int = 500) -> None:
        for i in range(0, len(ids), batch):
            part = ids[i : i + batch]
            self._tx(lambda c, part=part: c.execute(
                f"DELETE FROM temp.at_risk WHERE id IN ({','.join('?' * len(part))})", part))

    def at_risk_left(self) -> tuple[int, bytes | None]:
        (n,), = self._q("SELECT count(*) FROM temp.at_risk")
        rows = self._q("SELECT id FROM temp.at_risk LIMIT 1")
        return n, (bytes(rows[0][0]) if rows else None)

    def unindexed_packs(self) -> list[tuple[bytes, int]]:
        """Stored packs that no loaded index segment lists (leftovers of interrupted runs)."""
        return [(bytes(i), s) for i, s in self._q(
            "SELECT s.id, s.size FROM temp.stored s WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.id = s.id)")]

    def live_blocks(self, pid: bytes) -> list[PackEntry]:
        """The referenced blocks whose indexed location is this pack, by offset."""
        rows = self._q("SELECT b.id, b.kind, b.offset, b.length, b.raw_length FROM blocks b "
                       "JOIN packs p ON p.rowid = b.pack JOIN temp.used u ON u.id = b.id "
                       "WHERE p.id = ? ORDER BY b.offset", (pid,))
        return [_entry(k, bytes(i), o, n, r) for i, k, o, n, r in rows]

    # --- stats --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        (nblocks, stored, raw), = self._q("SELECT count(*), coalesce(sum(length),0), coalesce(sum(raw_length),0) "
                                          "FROM blocks")
        (npacks, pack_bytes), = self._q("SELECT count(*), coalesce(sum(size),0) FROM packs")
        (nsnaps,), = self._q("SELECT count(*) FROM snapshots")
        return {"snapshots": nsnaps, "packs": npacks, "pack_bytes": pack_bytes, "blocks": nblocks,
                "stored_bytes": stored, "raw_bytes": raw}


def block_lookup(path: str) -> Callable[[bytes], bool]:
    """``has_block`` for another process (a backup's worker) than the one holding the catalog open: its own
    connection, opened at the first question -- in the process that asks, never carried across a fork."""
    conn: list[sqlite3.Connection] = []

    def has_block(bid: bytes) -> bool:
        try:
            if not conn:
                conn.append(sqlite3.connect(_uri(path), uri=True, timeout=60, isolation_level=None))
            return conn[0].execute("SELECT 1 FROM blocks WHERE id=?", (bid,)).fetchone() is not None
        except sqlite3.DatabaseError as exc:
            raise _db_error(exc, path) from None

    return has_block


def store_key(cache_dir: str, repo_id: str, location: str) -> str:
    """The name of the catalog's directory under ``cache_dir``: the repository's id -- unless that directory
    belongs to another store with the same id (a byte copy of the repository: rsync, cp -a, a replicated
    bucket), then the id and a hash of this store's location. Sharing one catalog, the two took each other's
    snapshots for lost manifests: verify called the intact one damaged (exit 20), and the repair it advised
    wrote the other's snapshots into it. The first store to use the directory claims it (file ``store``).
    CatalogError when the cache directory is not private (``cachedir``)."""
    want = location.encode("utf-8", "surrogateescape")
    try:
        directory = private_dir(cache_dir, repo_id)
    except OSError:
        return repo_id  # (an unusable cache directory: the catalog's own open says so)
    mark = os.path.join(directory, "store")
    have = read_small(mark, len(want) + 1)
    if have is None:
        try:
            if write_small(mark, want, replace=False):
                return repo_id
        except OSError:
            return repo_id
        have = read_small(mark, len(want) + 1)  # (another process claimed it just now: whose?)
    if have is None or have == want:
        return repo_id
    if b" on file system " in want and have == want.split(b" on file system ")[0]:
        with contextlib.suppress(OSError):  # (claimed with the path alone, before the file system was named)
            write_small(mark, want)
        return repo_id
    return f"{repo_id}.{hashlib.sha256(want).hexdigest()[:16]}"


def open_synced(cache_dir: str, repo, wait: float = OPEN_WAIT, key: str | None = None,
                prefetch: int = 0) -> tuple[Catalog, SyncReport]:
    """Open the catalog (in directory ``key``, default the repository's id: see ``store_key``) and sync it; a
    catalog that fails mid-way is rebuilt once from scratch. ``prefetch``: ``Catalog.prefetch`` (a remote
    repository: manifests, index segments and trees fetched that many at a time)."""
    cat = Catalog.open(cache_dir, key or repo.id, wait=wait)
    cat.prefetch = prefetch
    try:
        return cat, cat.sync(repo)
    except CatalogError as exc:
        cat.close()
        if isinstance(exc, CacheUnavailable):
            raise
    except BaseException:  # a backend error, an interrupt: the catalog (and its lock) is closed, never leaked
        cat.close()
        raise
    cat = Catalog.open(cache_dir, key or repo.id, fresh=True, wait=wait)
    cat.prefetch = prefetch
    try:
        return cat, cat.sync(repo)
    except BaseException:
        cat.close()
        raise


__all__ = ["Catalog", "SyncReport", "open_synced", "store_key"]


class UsedMarker:
    """Marks walked trees and referenced block ids in the catalog's temporary tables, buffering at most
    ``limit`` block ids and ``tree_limit`` tree ids in memory. ``first_visit(tid)`` is True once per tree
    (the table is asked only once trees have spilled to it); ``flush()`` before querying ``used``."""

    def __init__(self, catalog: Catalog, limit: int = 20_000, tree_limit: int = 50_000, sizes: bool = False):
        self.catalog, self.limit, self.tree_limit, self.sizes = catalog, limit, tree_limit, sizes
        self._trees: set[bytes] = set()
        self._ids: list[bytes] = []
        self._sizes: list[tuple[bytes, int]] = []  # (joined block ids, recorded size) of files
        self._spilled = False  # some walked tree ids are only in the table

    def first_visit(self, tid: bytes) -> bool:
        if tid in self._trees or (self._spilled and self.catalog.walked(tid)):
            return False
        self._trees.add(tid)
        if len(self._trees) >= self.tree_limit:
            self.flush()
        return True

    def add(self, ids: Iterable[bytes]) -> None:
        self._ids.extend(ids)
        if len(self._ids) >= self.limit or len(self._sizes) >= self.limit:
            self.catalog._mark_flush((), self._ids, self._sizes)
            self._ids, self._sizes = [], []

    def walk(self, root: bytes, load: Callable[[list[bytes]], Iterator[tuple[bytes, list | None]]],
             with_trees: bool = False, batch: int = 64) -> int:
        """Mark every tree below ``root`` not walked yet, each once: ``load(tree ids)`` yields (id, entries)
        for each (``entries.py``; None: unreadable, skipped), asked ``batch`` trees at a time and handed over one
        at a time; their file block ids (and, ``with_trees``, the tree ids) go into ``used``. Returns how many
        trees were walked."""
        walked = 0
        stack = [root]
        while stack:
            todo: list[bytes] = []
            while stack and len(todo) < batch:
                tid = stack.pop()
                if self.first_visit(tid):  # a separate set from used: a chunk may equal a tree's bytes
                    todo.append(tid)
            walked += len(todo)
            for tid, entries in load(todo) if todo else ():
                if entries is None:
                    continue
                ids = [tid] if with_trees else []
                for e in entries:
                    t = e[1][0]
                    if t == FILE:
                        ids.extend(split_ids(e[2]))
                        if self.sizes:
                            self._sizes.append((e[2], e[1][4]))
                    elif t == DIR and e[2] is not None:
                        stack.append(e[2])
                self.add(ids)
        return walked

    def flush(self) -> None:
        if self._trees or self._ids or self._sizes:
            self.catalog._mark_flush(self._trees, self._ids, self._sizes)
            self._spilled = self._spilled or bool(self._trees)
            self._trees, self._ids, self._sizes = set(), [], []

