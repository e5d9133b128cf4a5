"""The catalog is a cache: a damaged cached tree is detected (keyed MAC) and fetched again, never trusted."""

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import assert_trees_equal, ext4, fill, make_tree, tmpfs


def _tamper_cached_trees(tmp_path, change) -> int:
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, entries FROM trees").fetchall()
    for tid, sealed in rows:
        conn.execute("UPDATE trees SET entries=? WHERE id=?", (change(tid, sealed, rows), tid))
    conn.commit()
    conn.close()
    return len(rows)


def _check_not_trusted(repo, tmp_path, src):
    out = repo("--json", "ls", "latest").json
    paths = [e["path"] for e in out["entries"]]
    assert any(p.endswith("/a.txt") for p in paths) and not any(p.endswith("/z.txt") for p in paths)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "a.txt").read_bytes() == b"the real content\n"


def test_tampered_cached_tree_is_not_trusted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"the real content\n", "d": {"b": b"x" * 5000}})
    repo("backup", src)
    # rename every entry in every cached tree (still valid marshal data): a lying cache
    assert _tamper_cached_trees(tmp_path, lambda tid, sealed, rows: sealed.replace(b"a.txt", b"z.txt")) >= 3
    _check_not_trusted(repo, tmp_path, src)


def test_cached_tree_moved_to_another_id_is_not_trusted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"the real content\n", "d": {"b": b"x" * 5000}})
    repo("backup", src)
    # give every row the next row's (validly sealed) entries: the seal binds them to their tree id
    _tamper_cached_trees(tmp_path, lambda tid, sealed, rows: rows[(rows.index((tid, sealed)) + 1) % len(rows)][1])
    _check_not_trusted(repo, tmp_path, src)
    # and a backup after it compares against the real parent: nothing is re-read, nothing is lost
    out = repo("--json", "backup", src).json
    assert out["files_unmodified"] == 2 and out["files_new"] == 0


def test_catalog_of_an_older_schema_is_rebuilt(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    assert len(repo("--json", "snapshots").json) == 1


def test_catalog_of_schema_4_is_migrated_in_place(repo, tmp_path):
    """Schema 4 (no trees.checked) gains the column, every tree unchecked: the cache is kept, not rebuilt, and
    the next backup checks each parent tree's blocks once, then marks it."""
    src = make_tree(tmp_path / "src", {"a": b"1", "d": {"b": b"2"}})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX trees_pending")
    conn.execute("ALTER TABLE trees DROP COLUMN checked")
    conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    conn.execute("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
    conn.commit()
    conn.close()
    assert repo("--json", "backup", src).json["files_unmodified"] == 2
    conn = sqlite3.connect(db)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    unchecked = conn.execute("SELECT count(*) FROM trees WHERE NOT checked").fetchone()[0]
    conn.close()
    assert meta["schema_version"] == "5" and meta["kept"] == "yes" and unchecked == 0


# --- a cache directory shared by concurrent processes ---------------------------------------------------------
def _open_and_mark(cache: str, barrier, i: int, errors) -> None:
    from vault.catalog import Catalog

    try:
        barrier.wait()
        cat = Catalog.open(cache, "rid")
        cat._tx(lambda c: c.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"opener-{i}",)))
        cat.close()
    except Exception as exc:  # reported to the test: every opener must succeed
        errors.put(f"{i}: {exc!r}")


def test_processes_creating_a_shared_catalog_at_once_neither_fail_nor_remove_it(tmp_path):
    """Four processes open the same new catalog at the same instant, 25 times: each opens it, and none removes
    the catalog another one created (every opener's mark survives). Before the open lock, a 'database is
    locked' while another process set the catalog up was taken for damage, and the catalog was deleted."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(25):
        cache = str(tmp_path / f"cache{round_}")
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_and_mark, args=(cache, barrier, i, errors)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert errors.empty(), errors.get()
        conn = sqlite3.connect(f"{cache}/rid/catalog.db")
        marks = {k for (k,) in conn.execute("SELECT key FROM meta WHERE key LIKE 'opener-%'")}
        conn.close()
        assert marks == {f"opener-{i}" for i in range(4)}, round_


def _make_outdated(tmp_path) -> Path:
    db = next((tmp_path / "cache").rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    return db


def test_a_catalog_another_process_has_open_is_never_replaced(repo, tmp_path):
    """Damage found while another process has the catalog open: a clear error, the catalog is left alone; once
    the other process has closed it, the next command replaces it and works."""
    from vault.catalog import Catalog

    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    holder = Catalog.open(str(tmp_path / "cache"), db.parent.name)  # another user of the same cache
    try:
        _make_outdated(tmp_path)
        for args in (("snapshots",), ("--lock-wait", "1", "catalog", "rebuild")):
            p = repo.proc(*args)
            err = p.stderr.decode()
            assert p.returncode == 1 and "another vault process has it open" in err, err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
            assert _schema_version(db) == "0"  # left alone
    finally:
        holder.close()
    assert len(repo("--json", "snapshots").json) == 1
    assert _schema_version(db) not in ("0", None)  # replaced, and synced again from the repository


def _schema_version(db: Path) -> str | None:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_a_cache_on_a_filesystem_without_flock_still_works(tmp_path, monkeypatch):
    """Some network and FUSE mounts refuse flock (ENOLCK): the catalog opens, and is replaced when damaged,
    as it would be for a single user."""
    import errno

    from vault import cachelock
    from vault.catalog import Catalog

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cachelock.fcntl, "flock", refuse)
    cat = Catalog.open(str(tmp_path), "rid")
    cat.close()
    conn = sqlite3.connect(tmp_path / "rid" / "catalog.db")
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    cat = Catalog.open(str(tmp_path), "rid")  # outdated: replaced
    assert dict(cat._q("SELECT key, value FROM meta"))["schema_version"] != "0"
    cat.close()


@pytest.mark.parametrize("limits", [(20_000, 50_000, 64), (3, 2, 2), (1, 1, 1)], ids=["default", "tiny", "one"])
def test_the_marker_walks_every_tree_once_whatever_spills(repo, tmp_path, limits):
    """The marker buffers ids and walked trees in memory up to limits and spills them to the catalog's
    temporary tables; whatever the limits and the batch size, it marks exactly the trees and file blocks the
    snapshots reference, and walks each shared subtree once."""
    from conftest import PASSWORD

    from vault import api
    from vault.config import Settings

    shared = {"s1": b"shared one" * 100, "deep": {"s2": b"shared two" * 100, "e": {}}}
    src = make_tree(tmp_path / "src", {"a": shared, "b": shared, "c": {"x": b"only c" * 50, "l": {"m": b"m" * 9}}})
    repo("backup", src)
    (src / "c" / "new").write_bytes(b"second snapshot only" * 30)
    repo("backup", src)
    settings = Settings(repo=str(repo.repo), cache_dir=str(repo.cache)).resolved()
    with api.session(settings, lambda: PASSWORD.encode()) as sess:
        cat, r = sess.catalog, sess.repo
        want_trees, want_ids = set(), set()
        for snap in cat.snapshots():
            want_trees.add(snap.tree)
            for _, node in cat.walk(r, snap.tree):
                if node.type == "dir" and node.subtree:
                    want_trees.add(node.subtree)
                want_ids.update(node.blocks or ())
        limit, tree_limit, batch = limits
        marker = cat.marker()
        marker.limit, marker.tree_limit = limit, tree_limit
        walked = sum(marker.walk(s.tree, lambda tids: cat.iter_tree_entries(r, tids), with_trees=True, batch=batch)
                     for s in cat.snapshots())
        marker.flush()
        assert walked == len(want_trees)
        assert all(cat.walked(t) for t in want_trees)
        used = {bytes(i) for (i,) in cat._q("SELECT id FROM temp.used")}
        assert used == want_ids | want_trees


def test_a_sync_that_fails_releases_the_catalog(repo, tmp_path, monkeypatch):
    """A backend error during the catalog's sync closes the catalog (and drops its lock): the next command
    in the same process -- a library user, a test -- can replace it."""
    from vault.errors import PermanentError
    from vault.repository import Repository

    repo("backup", make_tree(tmp_path / "src", {"a": b"1"}))
    real = Repository.list_index

    def fail(self):
        raise PermanentError("listing index/: connection reset")

    monkeypatch.setattr(Repository, "list_index", fail)
    assert "connection reset" in repo("snapshots", ok=1).err
    monkeypatch.setattr(Repository, "list_index", real)
    repo("catalog", "rebuild")


def test_an_unusable_cache_directory_is_a_one_line_error(repo, tmp_path):
    cache = tmp_path / "cache-file"
    cache.write_bytes(b"a file where the cache directory should be")
    res = repo("--cache-dir", cache, "snapshots", ok=1)
    assert res.err.startswith("vault: cannot use the cache directory") and "--cache-dir" in res.err
    assert len(res.err.strip().splitlines()) == 1 and "internal error" not in res.err


def test_the_batched_walk_holds_one_tree_at_a_time(repo, tmp_path):
    """Trees are asked for 64 at a time but handed over one by one: the walk's peak memory with 16 sibling
    directories of 1,000 files each is that of one of them, not of all 16 (Invariant 4)."""
    import tracemalloc

    from conftest import PASSWORD

    from vault import api
    from vault.config import Settings

    src = tmp_path / "src"
    for d in range(16):
        os.makedirs(src / f"d{d}")
        for f in range(1000):
            (src / f"d{d}" / f"file-with-a-longish-name-{f:05d}").write_bytes(b"%d/%d" % (d, f))
    repo("backup", src)
    settings = Settings(repo=str(repo.repo), cache_dir=str(repo.cache)).resolved()
    with api.session(settings, lambda: PASSWORD.encode()) as sess:
        cat, r = sess.catalog, sess.repo
        (snap,) = cat.snapshots()
        peaks = {}
        for batch in (1, 64):
            marker = cat.marker()
            marker.limit = 10 ** 9  # keep every id in memory alike: only the trees held at once differ
            tracemalloc.start()
            marker.walk(snap.tree, lambda tids: cat.iter_tree_entries(r, tids), batch=batch)
            peaks[batch] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peaks[64] < peaks[1] * 1.3, peaks


def test_a_full_cache_disk_is_said_and_the_catalog_kept(repo, tmp_path):
    """A full disk under the cache directory (a real 8 MiB tmpfs, filled): one clear line naming the cache,
    exit 1, and the catalog is not deleted (it is not damaged); with space again everything works."""
    with tmpfs(tmp_path / "small", "8m") as cache:
        src = make_tree(tmp_path / "src", {"a": os.urandom(100_000)})
        repo("--cache-dir", cache, "backup", src)
        db = next(cache.rglob("catalog.db"))
        size = db.stat().st_size
        filler = fill(cache)
        for args in (("snapshots",), ("backup", src)):
            res = repo("--cache-dir", cache, *args, ok=1)
            assert res.err.startswith("vault: the disk under the cache directory is full"), res.err
            assert len(res.err.strip().splitlines()) == 1
            assert db.stat().st_size == size  # kept, not replaced by an empty one
        filler.unlink()
        assert len(repo("--cache-dir", cache, "--json", "snapshots").json) == 1


@pytest.mark.parametrize("with_catalog", [False, True])
def test_a_cache_disk_full_to_the_last_block_is_said_not_a_bus_error(repo, tmp_path, with_catalog):
    """A cache disk with no block left: SQLite maps the catalog's shared-memory file (WAL) and the first store
    into a page that cannot be given a block killed vault with SIGBUS (exit 135, not a word), a new machine's
    first run or a verify. vault now looks for room before SQLite maps anything."""
    with ext4(tmp_path / "small", 16) as cache:  # (ext4: tmpfs says ENOSPC instead)
        src = make_tree(tmp_path / "src", {"a": os.urandom(100_000)})
        repo("--cache-dir", cache if with_catalog else tmp_path / "elsewhere", "backup", src)
        fill(cache)
        got = {}
        for args in (("snapshots",), ("verify",), ("forget", "--keep-last", "1", "--prune"), ("catalog", "rebuild")):
            p = repo.proc("--cache-dir", cache, *args)
            got[args[0]] = (p.returncode, p.stderr.decode()[:60])
        # (done, or the one line; a command that needs no new page of the catalog may well succeed)
        assert all(code == 0 or (code == 1 and err.startswith("vault: the disk under the cache directory is full"))
                   for code, err in got.values()), got
        assert with_catalog or got["snapshots"][0] == 1, got


def test_a_cache_disk_that_fills_in_the_middle_of_a_sync_keeps_the_catalog(repo, tmp_path):
    """The disk fills while a sync inserts a large index segment: SQLite rolls the transaction back itself,
    and that is still said as a full disk -- never taken for damage, never a reason to delete the catalog."""
    with tmpfs(tmp_path / "small", "12m") as cache:
        repo("--cache-dir", cache, "backup", make_tree(tmp_path / "src", {"a": os.urandom(100_000)}))
        db = next(cache.rglob("catalog.db"))
        trees = sqlite3.connect(db).execute("SELECT count(*) FROM trees").fetchone()[0]
        # another machine adds 40,000 blocks: this cache's next sync inserts them in one transaction
        many = make_tree(tmp_path / "many", {f"f{i}": os.urandom(64) for i in range(40_000)})
        repo("--cache-dir", tmp_path / "other", "backup", many)
        filler = fill(cache, leave=100_000)
        res = repo("--cache-dir", cache, "snapshots", ok=1)
        assert res.err.startswith("vault: the disk under the cache directory is full"), res.err
        assert sqlite3.connect(db).execute("SELECT count(*) FROM trees").fetchone()[0] == trees  # kept
        filler.unlink()
        assert len(repo("--cache-dir", cache, "--json", "snapshots").json) == 2


@pytest.mark.parametrize("command", [["verify", "--read-data"], ["ls", "latest"]])
def test_a_backup_committed_while_the_catalog_syncs_is_never_seen_without_its_index(repo, tmp_path, monkeypatch,
                                                                                   command):
    """Another machine's backup writes its index segment, then its snapshot. Listed in the other order (index
    first), a snapshot committed between the two listings got into the catalog without its index, and its
    trees were reported missing: a false 'damage', exit 20, on a healthy repository."""
    import subprocess
    import sys

    from vault.repository import Repository

    src = make_tree(tmp_path / "src", {"a": b"1"})
    other = make_tree(tmp_path / "other", {"b": b"2" * 5000, "sub": {"c": b"3"}})
    repo("backup", src)
    orig = Repository.list_snapshots
    fired = []

    def list_snapshots(self):
        if not fired:  # the other machine commits right now
            fired.append(True)
            env = {**os.environ, **repo.env(), "VAULT_CACHE_DIR": str(tmp_path / "other-cache")}
            subprocess.run([sys.executable, "-m", "vault.cli.main", "-q", "backup", str(other)], env=env,
                           check=True, stdin=subprocess.DEVNULL)
        return orig(self)

    monkeypatch.setattr(Repository, "list_snapshots", list_snapshots)
    r = repo(*command)
    assert fired and r.code == 0


def _garble_pages_of(db: Path, name: str) -> int:
    """Overwrite the database pages of one table or index with garbage (SQLite then says 'malformed')."""
    conn = sqlite3.connect(db)
    try:
        pages = [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name=?", (name,))]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table")
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(db, "r+b") as f:
        for n in pages:
            f.seek((n - 1) * size)
            f.write(b"garbage!" * (size // 8))
    return len(pages)


def test_damaged_catalog_pages_are_never_taken_for_repository_damage(repo, tmp_path):
    """Garbage in the catalog's trees index: restore reads the trees from the repository instead (all restored,
    exit 0). Garbage in its block table: restore and repair stop with the catalog's message (exit 1) -- repair
    wrote a 'repaired' snapshot with every file dropped ('directory listing lost') and restore said exit 20."""
    src = make_tree(tmp_path / "src", {"a": b"1" * 3000, "d": {"b": b"2" * 5000}})
    repo("backup", src)
    repo("ls", "latest")
    db = next((tmp_path / "cache").rglob("catalog.db"))
    assert _garble_pages_of(db, "sqlite_autoindex_trees_1")
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "d" / "b").read_bytes() == b"2" * 5000

    repo("catalog", "rebuild")
    repo("ls", "latest")
    assert _garble_pages_of(db, "blocks")
    snapshots = sorted(os.listdir(repo.repo / "snapshots"))
    for args in (["restore", "latest", "--target", tmp_path / "r2"], ["repair"]):
        res = repo(*args, ok=1)
        assert "catalog" in res.err and "rebuild" in res.err and "Traceback" not in res.err, res.err
    assert sorted(os.listdir(repo.repo / "snapshots")) == snapshots
    repo("catalog", "rebuild")
    assert repo("--json", "verify", "--read-data").json["ok"] is True


def test_a_backup_sharing_the_catalog_during_a_sync_is_not_taken_for_loss(repo, tmp_path, monkeypatch):
    """Another process sharing the cache directory (a second backup) wrote its index segment and snapshot, and
    added them to the catalog, between this process's listing of the repository and its reading of the
    catalog: the new snapshot was called "deleted without a forget" (verify exit 20) and the whole index was
    dropped and reloaded -- under a restore running from the same catalog, 10,692 intact files were left out."""
    from vault.repository import Repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo("backup", src)
    (src / "b").write_text("b")
    real = Repository.list_index
    ran = []

    def listing_then_a_backup_elsewhere(self):
        names = real(self)
        if not ran:
            ran.append(repo.proc("backup", src))
        return names

    monkeypatch.setattr(Repository, "list_index", listing_then_a_backup_elsewhere)
    res = repo("--json", "verify", ok=False)
    assert ran and ran[0].returncode == 0, ran[0].stderr
    assert res.code == 0, res.out + res.err
    monkeypatch.undo()
    (db,) = list(repo.cache.glob("*/catalog.db"))
    epoch = sqlite3.connect(db).execute("SELECT value FROM meta WHERE key='index_epoch'").fetchall()
    assert epoch == [], "the index was dropped and reloaded"
    assert len(repo("--json", "snapshots").json) == 2 and repo("--json", "verify").json["ok"] is True


def test_an_index_reset_by_another_process_is_not_done_twice(repo, tmp_path):
    """Two processes sharing a catalog both saw a segment gone (a prune elsewhere) and both reset the index:
    the second reset emptied it under the first one's reader, which had already reloaded it. The reset is
    decided in its own transaction, from what the catalog knows then."""
    from vault.catalog import Catalog

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo("backup", src)
    (db,) = list(repo.cache.glob("*/catalog.db"))
    cat = Catalog.open(str(repo.cache), db.parent.name)
    try:
        known = {r[0] for r in cat._q("SELECT id FROM segments")}
        assert known and cat.has_any_block()
        assert cat._reset_index(set(known), None) is False and cat.has_any_block()  # (reloaded already)
        assert cat._reset_index(set(known), "f" * 64) is True and not cat.has_any_block()  # (a prune's new one)
        assert cat.index_epoch() == 1
    finally:
        cat.close()
    assert repo("--json", "verify").json["ok"] is True


def test_ctrl_c_while_waiting_for_a_busy_catalog_stops_at_once(repo, tmp_path):
    """Another process (stopped: Ctrl-Z) held a write transaction on the shared catalog: a backup waiting for
    it took a Ctrl-C only when --lock-wait ran out, and then exited 11, not 130 (SQLite's wait sleeps in C,
    where Python's signal handlers do not run)."""
    import signal
    import subprocess
    import time

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo("backup", src)
    (src / "b").write_text("b")
    (db,) = list(repo.cache.glob("*/catalog.db"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "--lock-wait", "60", "backup", str(src)],
                             env={**os.environ, **repo.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)  # (started, synced as far as the first write, and waiting)
        assert p.poll() is None, p.communicate()
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
        waited = time.monotonic() - sent
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 130 and waited < 5, (code, waited, p.stderr.read())


def test_a_stopped_vault_exits_even_when_a_thread_is_still_blocked(repo, tmp_path):
    """Three Ctrl-Cs during a restore from S3: "vault: aborted", and the process never exited -- the interpreter
    joined a fetch thread that waited for ever. A stopped vault now exits once its clean-up is done."""
    import signal
    import subprocess
    import time

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo("backup", src)
    (db,) = list(repo.cache.glob("*/catalog.db"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # (the backup below waits for it: a point to stop it at)
    code = ("import sys, threading\n"
            "threading.Thread(target=threading.Event().wait).start()  # (blocked for ever, not a daemon)\n"
            "from vault.cli.main import entry\n"
            f"sys.argv = ['vault', '--lock-wait', '60', 'backup', {str(src)!r}]\n"
            "entry()\n")
    try:
        p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **repo.env()},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rc == 130, "still running 20 s after it was stopped"


def test_a_segment_an_interrupted_prune_replaced_is_never_loaded_by_a_later_sync(cli, tmp_path, monkeypatch):
    """A prune killed after writing its new index segment S (superseding X) leaves X in place. A sync stopped
    right after loading S (or one running beside it) left X unrecorded; the next sync took X for new and loaded
    it: its blocks lie in packs the next prune deletes. A backup then deduplicated against them, the prune
    exited 0, and the new snapshot did not restore (exit 20)."""
    import shutil

    from vault.catalog import Catalog

    from conftest import FAST_INIT

    repo = cli
    repo("init", *FAST_INIT, "--pack-size", "1")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "only-in-a.bin").write_bytes(os.urandom(3_000_000))
    (b / "b.bin").write_bytes(os.urandom(3_000_000))
    repo("backup", a, b)
    repo("backup", b)
    first = repo("--json", "snapshots").json[0]["id"]
    repo("forget", first)
    before = tmp_path / "before"
    shutil.copytree(repo.repo, before)
    repo("prune")
    for f in before.rglob("*"):  # (the state of a prune killed after writing S, before deleting X and the packs)
        rel = f.relative_to(before)
        if f.is_file() and rel.parts[0] in ("index", "data") and not (repo.repo / rel).exists():
            (repo.repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, repo.repo / rel)
    shutil.rmtree(repo.cache)
    real = Catalog.add_segment

    def stopped_after_the_superseding_one(self, sid, seg):
        real(self, sid, seg)
        if seg.supersedes:
            raise KeyboardInterrupt

    monkeypatch.setattr(Catalog, "add_segment", stopped_after_the_superseding_one)
    repo("snapshots", ok=130)
    monkeypatch.undo()
    repo("snapshots")
    repo("backup", a)
    repo("prune")
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    repo("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / str(a).lstrip("/") / "only-in-a.bin").read_bytes() == (a / "only-in-a.bin").read_bytes()


def test_catalog_rebuild_waits_for_the_others_sharing_the_cache(repo, tmp_path):
    """`catalog rebuild` refused at once while any process had the catalog open: on a cache that cron jobs
    share, 11 of 19 tries. It now waits for them, up to --lock-wait, as for a repository lock."""
    import threading

    from vault.catalog import Catalog

    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    holder = Catalog.open(str(tmp_path / "cache"), db.parent.name)  # another user of the same cache
    threading.Timer(2.0, holder.close).start()
    p = repo.proc("--lock-wait", "60", "catalog", "rebuild")
    assert p.returncode == 0, p.stderr
    assert len(repo("--json", "snapshots").json) == 1


def test_catalog_rebuild_that_cannot_write_its_trees_fails(repo, tmp_path, monkeypatch):
    """The disk under the cache filled while `catalog rebuild` cached the trees: that was noted as a snapshot's
    problem and the rebuild said "catalog rebuilt", exit 0 -- a cron job took it for done."""
    from vault.catalog import Catalog
    from vault.errors import CacheUnavailable

    repo("backup", make_tree(tmp_path / "src", {"a": b"x"}))

    def walk(self, *a, **k):
        raise CacheUnavailable("the disk under the cache directory is full (catalog x); free some space")
        yield

    monkeypatch.setattr(Catalog, "walk", walk)
    res = repo("catalog", "rebuild", ok=1)
    assert res.err.startswith("vault: the disk under the cache directory is full") and "rebuilt" not in res.out


def test_an_edited_snapshot_row_of_the_catalog_is_read_again_from_the_repository(repo, tmp_path):
    """The catalog's snapshot rows were trusted as they were: one changed tree id (a damaged or edited cache)
    made `restore latest` restore the older snapshot's tree, exit 0, verify clean. Rows are sealed now (a keyed
    MAC, as the cached trees are); one whose seal fails, or that has none (a catalog of an earlier vault), is
    read again from the repository."""
    src = make_tree(tmp_path / "src", {"a": {"file": b"old"}})
    repo("backup", src)
    (src / "a" / "file").write_bytes(b"new")
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    (old_tree,), (new_id,) = (con.execute("SELECT tree FROM snapshots ORDER BY time LIMIT 1").fetchone(),
                              con.execute("SELECT id FROM snapshots ORDER BY time DESC LIMIT 1").fetchone())
    con.execute("UPDATE snapshots SET tree=? WHERE id=?", (old_tree, new_id))
    con.commit()
    con.close()
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "a" / "file").read_bytes() == b"new"
    con = sqlite3.connect(db)  # (a catalog of an earlier vault: no seals at all)
    con.execute("UPDATE snapshots SET seal=NULL, seal2=NULL")
    con.commit()
    con.close()
    assert len(repo("--json", "snapshots").json) == 2
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM snapshots WHERE seal2 IS NOT NULL").fetchone()[0] == 2
    con.close()


def test_a_wrong_tree_location_in_the_catalog_is_the_catalogs_fault_not_damage(repo, tmp_path):
    """One catalog row moved (the root tree's offset, by 7 bytes): verify and restore reported the repository
    damaged (exit 20, "authentication failed"), and the documented way out, repair, rewrote the index of an
    intact repository. The block's location is first asked of the repository's index: exit 1, rebuild."""
    src = make_tree(tmp_path / "src", {"d": {"f": b"data"}})
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    (root,) = con.execute("SELECT tree FROM snapshots").fetchone()
    con.execute("DELETE FROM trees")  # (the cached copies: the walk reads the block itself)
    con.execute("UPDATE blocks SET offset=offset+7 WHERE id=?", (root,))
    con.commit()
    con.close()
    for args in (("verify",), ("restore", "latest", "--target", tmp_path / "r")):
        res = repo(*args, ok=1)
        assert "catalog disagrees with the repository's index" in res.err and "catalog rebuild" in res.err, res.err
    repo("catalog", "rebuild")
    repo("verify")


def test_a_nearly_full_cache_disk_still_serves_reads(repo, tmp_path):
    """The room check before SQLite maps its WAL index asked for 1 MiB: with 600 KiB left, snapshots, ls and a
    restore elsewhere were refused as "disk full"; they had worked. It asks for what the index needs."""
    with tmpfs(tmp_path / "small", "8m") as cache:
        src = make_tree(tmp_path / "src", {"a": os.urandom(100_000)})
        repo("--cache-dir", cache, "backup", src)
        fill(cache, leave=600_000)
        assert len(repo("--cache-dir", cache, "--json", "snapshots").json) == 1
        repo("--cache-dir", cache, "restore", "latest", "--target", tmp_path / "r")


def _lose_first_manifest(repo, con) -> str:
    """Commit and close ``con``, delete the oldest snapshot's manifest (no forget): verify calls it lost."""
    (first,) = con.execute("SELECT id FROM snapshots ORDER BY time LIMIT 1").fetchone()
    con.commit()
    con.close()
    (repo.repo / "snapshots" / first).unlink()
    res = repo("verify", ok=20)
    assert "manifest missing" in res.out + res.err
    return first


def test_an_earlier_vaults_row_of_a_manifest_deleted_without_a_forget_is_kept(repo, tmp_path):
    """The rows an earlier vault wrote (no seal) were all dropped at the first sync, before the sync compared
    them with the listing: a manifest deleted by hand was then no longer reported ("manifest missing", exit 20)
    and `repair snapshots` could not write it back. An unsealed row is read again only when its manifest is
    listed; otherwise it stays, the only record of what was lost."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src, "--time", "2026-01-01T00:00:00Z")
    repo("backup", src, "--time", "2026-01-02T00:00:00Z")
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    con.execute("UPDATE snapshots SET seal=NULL, seal2=NULL")
    first = _lose_first_manifest(repo, con)
    # repair does not write it back from an unsealed record (a row forged in the cache, its seal set to NULL,
    # would have become a real snapshot): it says so and lets it go
    res = repo("repair", "snapshots")
    assert f"snapshot {first[:8]}" in res.out + res.err and "not sealed" in res.out + res.err
    assert [s["time"][:10] for s in repo("--json", "snapshots").json] == ["2026-01-02"]
    repo("verify")


def test_a_row_forged_in_the_cache_never_becomes_a_snapshot(repo, tmp_path):
    """A snapshot row planted in the cache with no seal, naming another snapshot's tree under other paths:
    repair snapshots wrote it into the repository as a real, sealed snapshot, and restore latest restored it."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    row = list(con.execute("SELECT id, time, host, paths, tags, tree, username, parent, summary FROM snapshots")
               .fetchone())
    row[0], row[1], row[3] = "ab" * 32, "2027-01-01T00:00:00.000000Z", '["/elsewhere"]'
    con.execute("INSERT INTO snapshots (id, time, host, paths, tags, tree, username, parent, summary, seal) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)", row)
    con.commit()
    con.close()
    repo("verify", ok=20)
    repo("repair", "snapshots")
    assert len(repo("--json", "snapshots").json) == 1 and len(list((repo.repo / "snapshots").iterdir())) == 1


def _forge_seal(key: bytes, row) -> bytes:
    import hmac
    import json
    i, t, h, p, tg, tree, u, par, s = row
    text = json.dumps([i, t, h, p, tg, bytes(tree).hex(), u, par, s], separators=(",", ":"))
    return hmac.digest(key, b"vault catalog snapshot v1\0" + text.encode("utf-8", "surrogateescape"), "sha256")


def test_the_catalogs_sealing_key_is_no_blocks_id(repo, tmp_path):
    """The sealing key was HMAC-SHA256(mac_key, a fixed label): the id of a block holding that label, which the
    catalog lists in the clear. A file with those 29 bytes in a backed-up tree and write access to the cache (no
    password) were enough to seal a row: `restore latest` then restored an older tree, exit 0, verify clean."""
    src = make_tree(tmp_path / "src", {"innocent.txt": b"vault catalog tree entries v1", "app.conf": b"old"})
    repo("backup", src, "--time", "2026-01-01T00:00:00Z")
    (src / "app.conf").write_bytes(b"new")
    repo("backup", src, "--time", "2026-02-01T00:00:00Z")
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    cols = "id, time, host, paths, tags, tree, username, parent, summary"
    rows = con.execute(f"SELECT {cols}, seal2 FROM snapshots ORDER BY time").fetchall()
    keys = [bytes(b) for (b,) in con.execute("SELECT id FROM blocks")]
    assert not [k for k in keys if _forge_seal(k, rows[0][:-1]) == rows[0][-1]], "a block id seals the rows"
    # the attack itself, with every block id tried as the key
    forged = list(rows[-1][:-1])
    forged[5] = rows[0][5]
    for n, (k, cols2) in enumerate((k, c) for k in keys for c in (("seal", "seal2"), ("seal",))):
        con.execute("UPDATE snapshots SET tree=?, seal=NULL, seal2=NULL WHERE id=?", (rows[0][5], forged[0]))
        for col in cols2:  # (the forged seal in either column; the old key's column alone counts as no seal)
            con.execute(f"UPDATE snapshots SET {col}=? WHERE id=?", (_forge_seal(k, forged), forged[0]))
        con.commit()
        repo("restore", "latest", "--target", tmp_path / f"r{n}")
        assert (tmp_path / f"r{n}" / src.relative_to("/") / "app.conf").read_bytes() == b"new"
    con.close()


def test_rows_sealed_with_the_earlier_forgeable_key_count_as_unsealed(repo, tmp_path):
    """A catalog of vault before the sealing key changed: its tree rows are read again from the repository, its
    snapshot rows count as an earlier vault's (read again when their manifest is listed), and a lost manifest's
    row stays reported but is never written back from that record."""
    import hmac

    from vault.entries import legacy_cache_key, seal
    src = make_tree(tmp_path / "src", {"f": b"x", "d": {"g": b"y"}})
    repo("backup", src, "--time", "2026-01-01T00:00:00Z")
    repo("backup", src, "--time", "2026-01-02T00:00:00Z")
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    cols = "id, time, host, paths, tags, tree, username, parent, summary"
    # the legacy key, recovered as an attacker would: the id of a block holding the label
    mac_key = _mac_key(repo)
    old = legacy_cache_key(mac_key)
    assert old == hmac.digest(mac_key, b"vault catalog tree entries v1", "sha256")
    for row in con.execute(f"SELECT {cols} FROM snapshots").fetchall():
        con.execute("UPDATE snapshots SET seal=?, seal2=NULL WHERE id=?", (_forge_seal(old, row), row[0]))
    from vault.model import Tree
    for tid, in con.execute("SELECT id FROM trees").fetchall():
        con.execute("UPDATE trees SET entries=? WHERE id=?", (seal(old, bytes(tid), Tree([]).nodes), tid))
    _lose_first_manifest(repo, con)
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM lost_snapshots WHERE seal2 IS NULL").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM snapshots WHERE seal2 IS NOT NULL").fetchone()[0] == 1
    con.close()
    repo("restore", "latest", "--target", tmp_path / "r")  # (the empty cached trees are not believed)
    assert (tmp_path / "r" / src.relative_to("/") / "d" / "g").read_bytes() == b"y"
    res = repo("repair", "snapshots")
    assert "not sealed" in res.out + res.err
    assert len(list((repo.repo / "snapshots").iterdir())) == 1


def _mac_key(repo) -> bytes:
    from conftest import PASSWORD
    from vault.backend import open_backend
    from vault.repository import Repository
    return Repository.open(open_backend(str(repo.repo)), PASSWORD.encode()).keys.mac_key


def test_block_rows_deleted_from_the_catalog_are_the_catalogs_fault_not_damage(repo, tmp_path):
    """Rows deleted from the catalog's block table (a damaged or edited cache) made verify report the blocks
    "missing from the index", exit 20, naming files of an intact repository. The repository's index is asked
    first: it lists them, so the catalog is at fault -- exit 1, rebuild it."""
    src = make_tree(tmp_path / "src", {"d": {"f": os.urandom(5000), "g": b"more"}})
    _backup_then_delete_rows(repo, src, "DELETE FROM blocks WHERE kind='D'")
    res = repo("verify", ok=1)
    assert "catalog rebuild" in res.err and "damaged, not the repository" in res.err, res.err
    repo("catalog", "rebuild")
    repo("verify")
    # a pack really gone is still damage
    for p in (repo.repo / "data").rglob("*"):
        if p.is_file():
            p.unlink()
    assert repo("verify", ok=20).out


def _backup_then_delete_rows(repo, src, sql: str) -> None:
    """Back up ``src``, then run ``sql`` on the catalog (rows deleted: a damaged or edited cache)."""
    repo("backup", src)
    con = sqlite3.connect(next(repo.cache.rglob("catalog.db")))
    con.execute(sql)
    con.commit()
    con.close()


def test_restore_with_block_rows_deleted_from_the_catalog_says_rebuild(repo, tmp_path):
    """... and restore says so too, rather than naming files of an intact repository as damaged."""
    src = make_tree(tmp_path / "src", {"d": {"f": os.urandom(5000)}})
    _backup_then_delete_rows(repo, src, "DELETE FROM blocks WHERE kind='D'")
    res = repo("restore", "latest", "--target", tmp_path / "r", ok=1)
    assert "catalog rebuild" in res.err, res.err
    repo("catalog", "rebuild")
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "d" / "f").read_bytes() == (src / "d" / "f").read_bytes()


def test_a_byte_copy_of_a_repository_gets_a_catalog_of_its_own(repo, tmp_path):
    """Two stores with one repository id (a `cp -a` or rsync copy, as usage.md suggests for moving one) used from
    one cache directory shared one catalog: each took the other's snapshots for lost manifests -- verify called
    the intact copy damaged (exit 20), and the repair it advised wrote the other's snapshot into it."""
    import shutil
    src = make_tree(tmp_path / "src", {"a": b"a"})
    other = make_tree(tmp_path / "other", {"b": b"b"})
    repo("backup", src)
    copy = tmp_path / "copy"
    shutil.copytree(repo.repo, copy, symlinks=True)
    (src / "c").write_bytes(b"c")
    repo("backup", src)
    repo("--repo", copy, "backup", other)
    repo("--repo", copy, "verify")
    repo("verify")
    res = repo("--repo", copy, "repair")
    assert "again" not in res.out and len(list((copy / "snapshots").iterdir())) == 2
    assert [s["paths"] for s in repo("--repo", copy, "--json", "snapshots").json] == [[str(src)], [str(other)]]
    assert [s["paths"] for s in repo("--json", "snapshots").json] == [[str(src)], [str(src)]]


@pytest.mark.parametrize("drop_trees", [False, True])
def test_tree_rows_deleted_from_the_catalog_are_the_catalogs_fault_too(repo, tmp_path, drop_trees):
    """The same for tree blocks: verify, restore and ls said exit 20 ("tree block missing from the index",
    "directory listing lost") of an intact repository."""
    src = make_tree(tmp_path / "src", {"d": {"f": b"data"}})
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    con = sqlite3.connect(db)
    con.execute("DELETE FROM blocks WHERE kind='T'")
    if drop_trees:
        con.execute("DELETE FROM trees")
    con.commit()
    con.close()
    for args in (("verify",), ("restore", "latest", "--target", tmp_path / "r"), ("ls", "latest")):
        res = repo(*args, ok=1 if drop_trees or args[0] == "verify" else 0)  # (cached trees: they serve)
        assert res.code == 0 or "catalog rebuild" in res.err, (args, res.err)
    repo("catalog", "rebuild")
    repo("verify")


def test_this_keys_seal_in_the_old_column_is_moved_not_dropped(repo, tmp_path):
    """A vault of this session (a2bceff) wrote seals made with the new key into `seal`: they failed the old key's
    check and were deleted as forged -- with them a record of a lost manifest (verify then clean)."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src, "--time", "2026-01-01T00:00:00Z")
    repo("backup", src, "--time", "2026-01-02T00:00:00Z")
    db = next(repo.cache.rglob("catalog.db"))
    first = _lose_first_manifest(repo, sqlite3.connect(db))
    con = sqlite3.connect(db)
    for table in ("snapshots", "lost_snapshots"):
        con.execute(f"UPDATE {table} SET seal=seal2, seal2=NULL")
    con.commit()
    con.close()
    res = repo("verify", ok=20)
    assert f"snapshots/{first[:8]}" in res.out + res.err and "manifest missing" in res.out + res.err
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM lost_snapshots WHERE seal2 IS NOT NULL").fetchone()[0] == 1
    con.close()


def test_a_store_claimed_by_its_path_alone_stays_this_stores(repo, tmp_path):
    """A claim written before the location named its file system (a2bceff): the next vault took the store for
    another and started a new, empty catalog -- its record of a lost manifest left behind."""
    repo("backup", make_tree(tmp_path / "src", {"f": b"x"}))
    (d,) = [p for p in repo.cache.iterdir() if p.is_dir()]
    (d / "store").write_bytes(os.fsencode(os.path.realpath(repo.repo)))
    repo("snapshots")
    assert [p for p in repo.cache.iterdir() if p.is_dir()] == [d]
    assert b" on file system " in (d / "store").read_bytes()


def _edit_catalog(repo, sql: str) -> None:
    db = next(repo.cache.rglob("catalog.db"))
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("edit", ["UPDATE blocks SET length=-5 WHERE kind='D'",
                                  "UPDATE blocks SET length='ten' WHERE kind='D'",
                                  "UPDATE blocks SET length=4294967296 WHERE kind='D'",
                                  "UPDATE packs SET id=substr(id, 1, 5) WHERE kind='D'"])
def test_a_block_row_with_an_impossible_length_is_the_catalogs_damage_not_an_internal_error(repo, tmp_path, edit):
    """A negative (or non-numeric, or over-long) length in a catalog row made dump and restore die with
    "internal error: ValueError: invalid range"; a pack id cut short made them blame the repository (exit 20: not
    found). It is now the catalog's message (exit 1), and a rebuild mends it."""
    src = make_tree(tmp_path / "src", {"f": os.urandom(40000)})
    repo("backup", src)
    _edit_catalog(repo, edit)
    for args in (["dump", "latest", f"{src}/f"], ["restore", "latest", "--target", tmp_path / "t"]):
        res = repo(*args, ok=1)
        assert "catalog" in res.err and "rebuild" in res.err and "internal error" not in res.err, res.err
    repo("catalog", "rebuild")
    assert repo.proc("dump", "latest", f"{src}/f").stdout == (src / "f").read_bytes()


@pytest.mark.parametrize("edit", ["UPDATE blocks SET raw_length=raw_length+1 WHERE id=(SELECT min(id) FROM blocks WHERE "
                                  "kind='D')",
                                  "UPDATE packs SET size=size+7 WHERE rowid=(SELECT min(rowid) FROM packs WHERE kind='D')"])
def test_a_wrong_length_or_pack_size_in_the_catalog_is_not_blamed_on_an_intact_repository(repo, tmp_path, edit):
    """One block's raw length off by one in the catalog: verify and restore said the repository was damaged
    (exit 20: 'records a file size its blocks do not hold'), and restore left that intact file out; a pack size
    off by 7: verify called every block of the pack damaged. Both are the catalog's damage now (exit 1)."""
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(40000 + i) for i in range(4)})
    repo("backup", src)
    _edit_catalog(repo, edit)
    runs = [["verify"], ["verify", "--read-data"]]
    if "raw_length" in edit:
        runs.append(["restore", "latest", "--target", tmp_path / "t"])
    for args in runs:
        res = repo(*args, ok=1)
        assert "catalog rebuild" in res.err and "damaged" in res.err, res.err
    repo("catalog", "rebuild")
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    repo("restore", "latest", "--target", tmp_path / "t2")
    assert_trees_equal(src, tmp_path / "t2" / src.relative_to("/"))


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "empty dir", "wal symlink"])
def test_a_catalog_that_is_not_a_regular_file_is_replaced_never_written_through(repo, tmp_path, kind):
    """A symlinked catalog.db was opened and written through (SQLite follows symlinks: the 'nofollow' URI
    parameter vault gave it does not exist) -- the file it led to, anywhere, was rewritten or created; a fifo
    made every command wait for ever. Both are replaced now, like a damaged catalog."""
    import subprocess

    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    victim = tmp_path / "victim.db"
    if kind in ("symlink", "wal symlink"):
        victim.write_bytes(db.read_bytes())
    before = victim.read_bytes() if victim.exists() else None
    files = [db, db.with_name("catalog.db-wal"), db.with_name("catalog.db-shm")]
    if kind != "wal symlink":
        for f in files:
            f.unlink(missing_ok=True)
    target = db.with_name("catalog.db-wal") if kind == "wal symlink" else db
    target.unlink(missing_ok=True)
    if kind in ("symlink", "dangling", "wal symlink"):
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    p = repo.proc("--json", "snapshots", timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 1, p.stderr
    repo("backup", src)
    assert (victim.read_bytes() if victim.exists() else None) == before
    assert db.is_file() and not db.is_symlink()


def test_a_missing_pack_whose_index_segment_is_damaged_too_is_the_repositorys_damage(repo, tmp_path):
    """A data pack deleted and a bit flipped in the index segment listing it: verify said the catalog disagreed
    with the index ('the catalog is damaged, not the repository', exit 1) -- the segment that would have confirmed
    the catalog could not be read. It is the repository's damage: exit 20."""
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(300_000) for i in range(3)})
    repo("backup", src)
    packs = sorted((p for p in (repo.repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    packs[-1].unlink()
    for seg in (repo.repo / "index").iterdir():
        data = bytearray(seg.read_bytes())
        data[len(data) // 2] ^= 1
        os.chmod(seg, 0o600)
        seg.write_bytes(bytes(data))
    for args in (["verify"], ["verify", "--read-data"]):
        res = repo(*args, ok=20)
        assert "catalog is damaged" not in res.err, res.err


def test_a_catalog_file_this_user_cannot_read_says_so(repo, tmp_path):
    """A catalog.db of mode 0000 (as another user than root sees it): "cannot use the catalog ... (unable to open
    database file); check the cache directory and its disk", naming neither the file's problem nor the fix."""
    import subprocess

    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    db = next(repo.cache.rglob("catalog.db"))
    for f in db.parent.glob("catalog.db-*"):
        f.unlink()
    os.chmod(db, 0)
    # root reads any file: drop the capability that lets it (setpriv), else run as is (not root: the mode holds)
    pre = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all"] if os.geteuid() == 0 else []
    if pre and subprocess.run(pre + ["true"]).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    p = subprocess.run(pre + [sys.executable, "-m", "vault.cli.main", "snapshots"], env={**os.environ, **repo.env()},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "cannot be both read and written by this user" in p.stderr, p.stderr
    assert "catalog rebuild" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_an_unrelated_damaged_index_segment_does_not_turn_the_catalogs_word_into_damage(repo, tmp_path):
    """A pack size edited in the catalog, and another index segment (not the one listing that pack) damaged: any
    segment that failed to load made every disagreement the repository's -- a healthy pack, its snapshot and
    files were called damaged (exit 20). Only the segment listing the pack decides that."""
    src = make_tree(tmp_path / "src", {"f": os.urandom(50_000)})
    repo("backup", src)
    make_tree(tmp_path / "src2", {"g": os.urandom(50_000)})
    repo("backup", tmp_path / "src2")
    _edit_catalog(repo, "UPDATE packs SET size=size+7 WHERE rowid=(SELECT min(rowid) FROM packs WHERE kind='D')")
    with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
        (mine,) = conn.execute("SELECT segment FROM packs WHERE rowid=(SELECT min(rowid) FROM packs WHERE kind='D')"
                               ).fetchone()
    other = next(s for s in (repo.repo / "index").iterdir() if s.name != mine)
    data = bytearray(other.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(other, 0o600)
    other.write_bytes(bytes(data))
    res = repo("verify", ok=1)
    assert "catalog" in res.err and "rebuild" in res.err and "wrong size" not in res.err, res.err
