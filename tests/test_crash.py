"""Crashes and a lost or damaged cache: a killed backup leaves a consistent repository whose uploaded data the
next run reuses; the catalog is only a cache, rebuilt from the repository whenever it is missing or damaged."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_INIT, Cli, assert_trees_equal, kill_when, make_tree, tree_listing
from vault import archiver


def count_files(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d)) if d.exists() else 0


def big_tree(root: Path, dirs: int, files: int, size: int) -> Path:
    """Random (incompressible, undeduplicable) files spread over several directories: the archiver writes an
    index checkpoint only when a directory is finished, so many directories give it chances to."""
    root.mkdir(parents=True)
    for d in range(dirs):
        sub = root / f"dir{d:03d}"
        sub.mkdir()
        for f in range(files):
            (sub / f"f{f}.bin").write_bytes(os.urandom(size))
    return root


@pytest.fixture
def small_packs(cli) -> Cli:
    cli("init", *FAST_INIT, "--pack-size", "1")
    return cli


# --- (a) SIGKILL in the middle of a backup ----------------------------------------------------------------
def test_killed_backup_leaves_consistent_repo_and_next_run_resumes(small_packs, tmp_path):
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=20, files=5, size=1 << 20)  # 100 MiB, about 100 packs
    total = 100 << 20
    env = {**os.environ, **repo.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index_at_kill = 0

    def ready() -> bool:
        # kill once a checkpoint is out (it covers >= CHECKPOINT_PACKS packs), with more packs written after
        # it, but well before the end
        nonlocal index_at_kill
        index_at_kill = count_files(repo.repo / "index")
        packs = count_files(repo.repo / "data")
        return bool(index_at_kill and packs >= archiver.CHECKPOINT_PACKS + 8) or packs >= 70

    kill_when(p, ready, poll=0.005, what="the backup (make the tree bigger)")
    packs_at_kill = count_files(repo.repo / "data")
    assert packs_at_kill > 0
    assert count_files(repo.repo / "snapshots") == 0

    # the repository is consistent: verify reads everything, leftover packs are only info
    v = repo("--json", "verify", "--read-data").json
    assert v["ok"] is True and v["damage"] == []
    if packs_at_kill > v["packs"]:
        assert any("not in any index" in i for i in v["info"]), v["info"]

    # the dead process's lock does not block; the new backup reuses what the checkpoint recorded
    b = repo("--json", "backup", src, "--lock-wait", "0").json
    assert b["files_new"] == 100
    assert b["bytes_processed"] == total
    if packs_at_kill > v["packs"]:  # (its lock, left behind, says a killed run may have left packs: adopted)
        assert b["packs_adopted"] >= 1, (b, packs_at_kill, v["packs"])
    if index_at_kill:
        assert b["bytes_added"] < total - archiver.CHECKPOINT_PACKS * (512 << 10), \
            f"a checkpoint existed at the kill, yet the new backup added {b['bytes_added']} of {total} bytes"
    repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    v = repo("--json", "verify", "--read-data").json
    assert v["ok"] is True


@pytest.mark.parametrize("layout", ["flat-dir", "one-big-file"])
def test_checkpoints_in_a_flat_directory_and_a_big_file(small_packs, tmp_path, layout):
    """'an index checkpoint every 16 packs or 60 s' must hold however the data is laid out: one directory of
    many files, or one big file, is a long backup too."""
    repo = small_packs
    src = tmp_path / "src"
    src.mkdir()
    if layout == "flat-dir":
        for i in range(100):
            (src / f"f{i:03d}.bin").write_bytes(os.urandom(1 << 20))
        total = 100 << 20
    else:
        with open(src / "big.bin", "wb") as f:
            for _ in range(100):
                f.write(os.urandom(1 << 20))
    total = 100 << 20
    env = {**os.environ, **repo.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = 2 * archiver.CHECKPOINT_PACKS + 4
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and p.poll() is None and count_files(repo.repo / "data") < want:
            time.sleep(0.005)
        # give a checkpoint that is due a moment to be written
        time.sleep(0.05)
        assert p.poll() is None, "the backup finished before it could be killed; make the tree bigger"
        p.kill()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    packs = count_files(repo.repo / "data")
    assert count_files(repo.repo / "snapshots") == 0
    assert count_files(repo.repo / "index") >= 1, \
        f"{packs} packs were written but no index checkpoint: a rerun has to upload them all again"
    b = repo("--json", "backup", src, "--lock-wait", "0").json
    assert b["bytes_added"] < total - archiver.CHECKPOINT_PACKS * (512 << 10)


# --- (b) the cache directory is deleted -------------------------------------------------------------------
@pytest.fixture
def two_snapshots(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"one\n", "d": {"b.bin": os.urandom(70_000), "e": {}}})
    repo("backup", src, "--time", "2024-03-01T10:00:00Z")
    shutil.copytree(src, tmp_path / "first", symlinks=True)
    (src / "a.txt").write_bytes(b"two\n")
    os.utime(src / "a.txt", ns=(1_700_000_001_000_000_000,) * 2)
    (src / "new.txt").write_bytes(b"new file\n")
    repo("backup", src, "--time", "2024-03-02T10:00:00Z")
    return src, tmp_path / "first"


def _works_from_repository_alone(repo, src, first, tmp_path, tag):
    snaps = repo("--json", "snapshots").json
    assert len(snaps) == 2
    paths = {e["path"] for e in repo("--json", "ls", "latest").json["entries"]}
    assert str(src / "new.txt") in paths and str(src / "d" / "e") in paths
    paths = {e["path"] for e in repo("--json", "ls", snaps[0]["short_id"]).json["entries"]}
    assert str(src / "new.txt") not in paths
    t = tmp_path / f"r-{tag}"
    repo("restore", "--at", "2024-03-01T12:00:00Z", "--target", t)
    assert (t / src.relative_to("/") / "a.txt").read_bytes() == b"one\n"
    assert not (t / src.relative_to("/") / "new.txt").exists()
    t2 = tmp_path / f"r2-{tag}"
    repo("restore", "latest", "--target", t2)
    assert_trees_equal(src, t2 / src.relative_to("/"))
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    assert len(repo("--json", "find", "*.txt").json) == 3
    d = repo("--json", "diff", snaps[0]["id"], snaps[1]["id"]).json
    assert str(src / "new.txt") in d["added"] and str(src / "a.txt") in d["modified"]


def test_deleted_cache_dir(repo, two_snapshots, tmp_path):
    src, first = two_snapshots
    shutil.rmtree(repo.cache)
    before = tree_listing(repo.repo)
    _works_from_repository_alone(repo, src, first, tmp_path, "rm")
    # rebuilding the cache wrote nothing to the repository except (transient) locks
    after = tree_listing(repo.repo)
    assert {k: v for k, v in after.items() if not k.startswith("locks")} == \
        {k: v for k, v in before.items() if not k.startswith("locks")}


@pytest.mark.parametrize("first_cmd", [["snapshots"], ["ls", "latest"], ["verify"], ["stats"]])
def test_deleted_cache_dir_each_command_first(repo, two_snapshots, tmp_path, first_cmd):
    src, first = two_snapshots
    shutil.rmtree(repo.cache)
    repo(*first_cmd)
    assert len(repo("--json", "snapshots").json) == 2


def test_backup_after_cache_deleted_is_incremental_in_storage(repo, two_snapshots, tmp_path):
    src, _ = two_snapshots
    shutil.rmtree(repo.cache)
    out = repo("--json", "backup", src).json
    # the files are re-read (no parent metadata in a fresh cache is fine) but nothing new is stored
    assert out["files_new"] + out["files_changed"] + out["files_unmodified"] == 3
    assert out["bytes_added"] < 2000, out


# --- (c) garbage in the catalog ---------------------------------------------------------------------------
def catalog_path(repo) -> Path:
    (d,) = [p for p in repo.cache.iterdir() if p.is_dir()]
    return d / "catalog.db"


def _garbage_all(p: Path) -> None:
    size = max(p.stat().st_size, 8192)
    p.write_bytes(os.urandom(size))


def _garbage_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    assert len(data) > 4096 * 3
    data[4096:] = os.urandom(len(data) - 4096)  # keep the SQLite header page, ruin the rest
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(b"")


def _zeroes(p: Path) -> None:
    p.write_bytes(bytes(p.stat().st_size))


@pytest.mark.parametrize("damage", [_garbage_all, _garbage_middle, _truncate, _zeroes])
def test_damaged_catalog(repo, two_snapshots, tmp_path, damage):
    src, first = two_snapshots
    cat = catalog_path(repo)
    # fold the WAL into the main file so the damage hits real pages
    import sqlite3

    c = sqlite3.connect(cat)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    damage(cat)
    res = repo("--json", "snapshots", ok=False)
    if res.code != 0:
        # allowed by the contract: fail with a message naming the fix, then 'catalog rebuild' repairs it
        lines = res.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vault:") and "catalog rebuild" in lines[0], res.err
        assert "Traceback" not in res.err
        repo("catalog", "rebuild")
    _works_from_repository_alone(repo, src, first, tmp_path, damage.__name__)


@pytest.mark.parametrize("damage", [_garbage_all, _garbage_middle])
def test_catalog_rebuild_command(repo, two_snapshots, tmp_path, damage):
    src, first = two_snapshots
    cat = catalog_path(repo)
    damage(cat)
    out = repo("--json", "catalog", "rebuild").json
    assert out["snapshots"] == 2 and out["packs"] >= 1 and out["blocks"] >= 1 and out["problems"] == []
    _works_from_repository_alone(repo, src, first, tmp_path, "rebuild")


def test_damaged_wal_file(repo, two_snapshots, tmp_path):
    src, first = two_snapshots
    cat = catalog_path(repo)
    wal = Path(str(cat) + "-wal")
    wal.write_bytes(os.urandom(50_000))
    _works_from_repository_alone(repo, src, first, tmp_path, "wal")


def test_catalog_of_another_repository(repo, two_snapshots, tmp_path, capfd):
    src, first = two_snapshots
    other = Cli(capfd, tmp_path / "other-repo", tmp_path / "other-cache")
    other("init", *FAST_INIT)
    other("backup", make_tree(tmp_path / "osrc", {"zzz": b"other repo data"}))
    shutil.copyfile(catalog_path(other), catalog_path(repo))
    for suffix in ("-wal", "-shm"):
        Path(str(catalog_path(repo)) + suffix).unlink(missing_ok=True)
    _works_from_repository_alone(repo, src, first, tmp_path, "other")
    assert not repo("--json", "find", "zzz").json


def test_outdated_catalog_catches_up(repo, tmp_path):
    """A cache copied before a later backup (another machine wrote it) is synced, not trusted."""
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    saved = tmp_path / "saved-cache"
    shutil.copytree(repo.cache, saved)
    (src / "b").write_bytes(b"2")
    repo("backup", src)
    shutil.rmtree(repo.cache)
    shutil.copytree(saved, repo.cache)
    assert len(repo("--json", "snapshots").json) == 2
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "b").read_bytes() == b"2"


def test_snapshot_deleted_from_repository_disappears_from_catalog(repo, tmp_path):
    """Forgotten elsewhere (a logs/ record lets it go): gone from the listing, no such snapshot (exit 1). Deleted
    by hand: gone from the listing too, but lost, not forgotten -- damage (exit 20), named."""
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    (src / "b").write_bytes(b"2")
    repo("backup", src)
    (src / "c").write_bytes(b"3")
    repo("backup", src)
    snaps = repo("--json", "snapshots").json
    repo("forget", snaps[0]["id"], "--cache-dir", tmp_path / "elsewhere")
    (repo.repo / "snapshots" / snaps[1]["id"]).unlink()
    res = repo("--json", "snapshots")
    assert [s["id"] for s in res.json] == [snaps[2]["id"]]
    assert snaps[1]["id"][:8] in res.err and snaps[0]["id"][:8] not in res.err
    repo("ls", snaps[0]["id"], ok=1)
    assert "manifest missing" in repo("ls", snaps[1]["id"], ok=20).err


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_interrupted_backup(small_packs, tmp_path, sig):
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=10, files=4, size=1 << 20)
    env = {**os.environ, **repo.env()}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None and count_files(repo.repo / "data") < 3:
        time.sleep(0.002)
    if p.poll() is not None:
        pytest.skip("the backup finished before it could be interrupted")
    p.send_signal(sig)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"vault did not stop within 30 s of {sig.name}")
    if count_files(repo.repo / "snapshots"):  # (on a loaded machine) the signal came after the commit
        files = [e for e in repo("--json", "ls", "latest").json["entries"] if e["type"] == "file"]
        assert len(files) == 40, "a snapshot that exists is complete"
        pytest.skip("the snapshot was committed before the signal arrived")
    # SIGTERM (systemd, timeout, kill) and SIGHUP (a dropped ssh session) are as clean as Ctrl-C: no temp pack
    # left, the lock released
    assert p.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}[sig], err
    assert b"Traceback" not in err
    lines = err.decode().splitlines()  # exactly one line (click's own Ctrl-C handling printed an empty one first)
    assert len(lines) == 1 and lines[0] in ("vault: interrupted", "vault: terminated", "vault: hung up"), err
    assert count_files(repo.repo / "locks") == 0, "an interrupted backup must release its lock"
    assert not [f for _, _, fs in os.walk(repo.repo) for f in fs if f.startswith(".tmp-")]
    repo("verify", "--read-data")
    repo("backup", src, "--lock-wait", "0")
    repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_cleanly_stopped_backup_names_the_packs_it_stored(small_packs, tmp_path, sig):
    """Ctrl-C or SIGTERM before the first checkpoint left the packs stored so far unindexed: the next run read
    each back whole to adopt it (from S3, ~17 MiB a pack downloaded). A clean stop now writes one more index
    segment naming them: the rerun adopts nothing and stores only the rest."""
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=10, files=4, size=1 << 20)  # 40 MiB, about 40 packs
    env = {**os.environ, **repo.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not (
            count_files(repo.repo / "data") >= 4 and count_files(repo.repo / "index") == 0):
        time.sleep(0.001)
    assert p.poll() is None and count_files(repo.repo / "index") == 0, "the stop point was missed"
    p.send_signal(sig)
    p.communicate(timeout=60)
    assert p.returncode == 128 + sig, p.returncode
    assert count_files(repo.repo / "index") >= 1 and count_files(repo.repo / "snapshots") == 0
    b = repo("--json", "backup", src).json
    assert b["packs_adopted"] == 0, b
    repo("verify", "--read-data")


def test_a_backup_lists_the_packs_only_after_a_killed_run(repo, tmp_path):
    """Every backup listed the whole of data/ to adopt the packs a killed run stored: O(packs) requests before
    the first file is read (~650 LIST pages one after another for a 10 TiB S3 repository), where nothing was
    to be found after a clean run. A killed run leaves its lock behind: only such a lock makes a backup look."""
    src = make_tree(tmp_path / "src", {"a": b"x" * 1000})
    repo("backup", src)
    quiet = repo("--json", "backup", src).json["requests"]["LIST"]
    assert repo("--json", "backup", src).json["requests"]["LIST"] == quiet
    gone = subprocess.Popen(["true"])
    gone.wait()  # (its pid: a process that is no more)
    now = time.time()
    (repo.repo / "locks" / ("ab" * 16)).write_text(json.dumps({
        "host": socket.gethostname(), "pid": gone.pid, "username": "x", "operation": "backup", "exclusive": False,
        "time": now, "refreshed": now}))
    assert repo("--json", "backup", src).json["requests"]["LIST"] == quiet + 1


# --- which runs make the next one look for packs no index names (a listing of every pack) ------------------

def _unindexed(repo) -> int:
    return repo("--json", "prune", "--dry-run").json["packs_unindexed_deleted"]


def test_a_backup_that_fails_leaves_its_packs_to_the_next_one(small_packs, tmp_path):
    """A backup that failed with an error (here its --stdin-from-command producer) released its lock cleanly,
    with up to 15 packs stored since its last checkpoint: the next backup, finding no lock left, did not look
    for them and stored everything again. A run now marks itself in the catalog and unmarks only once every
    pack it stored is named; a mark left behind makes the next run look."""
    repo = small_packs
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(6 << 20))
    res = repo("backup", "--stdin-from-command", "--stdin-filename", "x", "--", "sh", "-c", f"cat {blob}; exit 1",
               ok=False)
    assert res.code == 1 and count_files(repo.repo / "locks") == 0, res.err
    left = _unindexed(repo)
    assert left >= 1
    b = repo("--json", "backup", "--stdin-from-command", "--stdin-filename", "x", "--", "cat", str(blob)).json
    assert b["packs_adopted"] == left and b["bytes_added"] < (6 << 20) - (left - 1) * (1 << 20), b
    assert _unindexed(repo) == 0
    quiet = repo("--json", "backup", "--stdin-from-command", "--stdin-filename", "x", "--", "cat", str(blob)).json
    assert quiet["packs_adopted"] == 0 and quiet["requests"]["LIST"] < b["requests"]["LIST"], (quiet, b)


def test_a_killed_backup_whose_lock_an_exclusive_command_removed_is_still_resumed(small_packs, tmp_path):
    """A killed backup's lock was its only trace: `vault tag` (or key remove, key passwd: any exclusive command)
    removes stale locks, and the next backup stored everything again. The catalog's mark outlives the lock."""
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=10, files=4, size=1 << 20)
    repo("backup", tmp_path / "src" / "dir000")
    env = {**os.environ, **repo.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(p, lambda: count_files(repo.repo / "data") >= 12, poll=0.001, what="the backup")
    repo("tag", "--add", "x", "latest")
    assert count_files(repo.repo / "locks") == 0
    left = _unindexed(repo)
    b = repo("--json", "backup", src).json
    assert b["packs_adopted"] == left and _unindexed(repo) == 0, (b, left)


def test_a_copy_stopped_by_sigterm_leaves_its_packs_to_the_next_copy(small_packs, tmp_path):
    """SIGTERM (or Ctrl-C, an error) stopped a copy after packs had landed in the destination, its lock released:
    the next copy sent them again (copy names what it stored only at its checkpoints)."""
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=4, files=6, size=1 << 20)
    repo("backup", src)
    second = tmp_path / "second"
    repo("init", *FAST_INIT, "--repo", second, "--pack-size", "1", "--copy-chunker-params-from", repo.repo)
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "copy", "--to", str(second)],
                         env={**os.environ, **repo.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and count_files(second / "data") < 3:
        time.sleep(0.001)
    if p.poll() is not None:
        pytest.skip("the copy finished before it could be stopped")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    left = repo("--json", "--repo", second, "prune", "--dry-run").json["packs_unindexed_deleted"]
    again = repo("--json", "copy", "--to", second).json
    assert again["packs_adopted"] == left, (again, left)


def test_the_packs_of_a_backup_whose_worker_was_killed_are_resumed(small_packs, tmp_path):
    """A worker process killed (the OOM killer) failed the backup, exit 1, its lock released: the next backup
    stored everything again (a helper measured 500 MB sent twice)."""
    repo = small_packs
    src = big_tree(tmp_path / "src", dirs=10, files=4, size=1 << 20)
    env = {**os.environ, **repo.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and count_files(repo.repo / "data") < 4:
        time.sleep(0.001)
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children")
    workers = children.read_text().split() if p.poll() is None and children.exists() else []
    if not workers:
        p.kill()
        p.communicate()
        pytest.skip("no worker process to kill (finished, or threads here)")
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the backup finished before the worker was killed")
    assert p.returncode == 1 and b"worker" in err and count_files(repo.repo / "locks") == 0, err
    left = _unindexed(repo)
    b = repo("--json", "backup", src).json
    assert b["packs_adopted"] == left and _unindexed(repo) == 0, (b, left)


def _plant_mark(repo, token: str, pid: int, pid_start: str, pid_ns: str | None = None, age: float = 0.0) -> None:
    """A run mark in this machine's catalog as another vault run would have left it."""
    import sqlite3

    from vault.locks import this_process

    host, _, boot, ns = this_process()
    with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
        conn.execute("INSERT INTO run_marks (token, host, pid, boot, pid_ns, pid_start, started) VALUES "
                     "(?, ?, ?, ?, ?, ?, ?)", (token, host, pid, boot, ns if pid_ns is None else pid_ns, pid_start,
                                               time.time() - age))


def _marks(repo) -> set[str]:
    import sqlite3

    with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
        return {r[0] for r in conn.execute("SELECT token FROM run_marks")}


def test_run_marks_are_kept_while_their_run_may_still_fail_and_dropped_once_it_cannot(repo, tmp_path, monkeypatch):
    """A review of the marks found three ways to get this wrong. (1) A run still going when another began was
    unmarked by that other at its end if it had died meanwhile -- after storing packs the other's listing never
    saw: they were sent again. (2) A mark whose pid an unrelated process had taken was kept for that process's
    lifetime, every backup meanwhile listing every pack. (3) A mark of another PID namespace (a container
    that ran once) was kept forever."""
    from vault import archiver
    from vault.locks import process_start

    src = make_tree(tmp_path / "src", {"a": b"x" * 1000})
    repo("backup", src)
    quiet = repo("--json", "backup", src).json["requests"]["LIST"]
    # (2) the pid of a live process that is not the one marked (another start): ended
    _plant_mark(repo, "reused", os.getppid(), "1")
    # (3) another PID namespace: judged by age
    _plant_mark(repo, "container-old", 4242, "7", pid_ns="4:1", age=2 * 86400)
    _plant_mark(repo, "container-new", 4242, "7", pid_ns="4:1")
    # (1) a run alive when the next one begins, that dies during it
    sleeper = subprocess.Popen(["sleep", "60"])
    _plant_mark(repo, "dies-during", sleeper.pid, process_start(sleeper.pid))
    real_run = archiver.Archiver.run

    def run_while_it_dies(self):
        sleeper.kill()
        sleeper.wait()
        return real_run(self)

    monkeypatch.setattr(archiver.Archiver, "run", run_while_it_dies)
    b = repo("--json", "backup", src).json
    monkeypatch.setattr(archiver.Archiver, "run", real_run)
    assert b["requests"]["LIST"] == quiet + 1  # (it looked for leftovers)
    assert _marks(repo) == {"dies-during", "container-new"}
    b = repo("--json", "backup", src).json  # (looks again: the one that died during the last run)
    assert b["requests"]["LIST"] == quiet + 1 and _marks(repo) == {"container-new"}
