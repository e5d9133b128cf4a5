"""Repository locks: live locks block (exit 11, naming the holder), stale ones never do, unlock cleans up,
--lock-wait waits, and shared backup locks let two hosts back up at the same time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import Cli, assert_trees_equal, make_tree
from vault.backend.local import LocalBackend
from vault.locks import STALE_AFTER, Lock


@pytest.fixture
def src(tmp_path):
    return make_tree(tmp_path / "src", {"a": b"alpha" * 100, "d": {"b": os.urandom(5000)}})


def backend(repo) -> LocalBackend:
    return LocalBackend(repo.repo)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def put_lock(be: LocalBackend, name: str, **fields) -> str:
    now = time.time()
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "username": "someone", "operation": "prune",
           "exclusive": True, "time": now, "refreshed": now, **fields}
    be.put(f"locks/{name}", json.dumps(doc).encode())
    return f"locks/{name}"


def lock_names(be: LocalBackend) -> set[str]:
    return {n for n, _ in be.list("locks/")}


def snapshot_count(repo) -> int:
    return len(repo("--json", "snapshots").json)


# --- a live exclusive lock blocks -------------------------------------------------------------------------
def test_live_exclusive_lock_blocks_backup(repo, src):
    be = backend(repo)
    with Lock(be, exclusive=True, operation="prune", wait=0):
        res = repo("backup", src, "--lock-wait", "0", ok=11)
        lines = res.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vault:"), res.err
        assert "prune" in res.err and str(os.getpid()) in res.err and socket.gethostname() in res.err
        # same from a real process: its pid differs from the holder's, the lock is still live
        p = repo.proc("backup", src, "--lock-wait", "0", stdin=subprocess.DEVNULL, timeout=60)
        assert p.returncode == 11, p.stderr
        assert b"prune" in p.stderr and b"Traceback" not in p.stderr
        assert len(lock_names(be)) == 1, "the failed backup must remove its own lock"
    assert lock_names(be) == set()
    assert snapshot_count(repo) == 0
    repo("backup", src, "--lock-wait", "0")
    assert snapshot_count(repo) == 1
    assert lock_names(be) == set(), "a finished backup leaves no lock behind"


def test_shared_lock_does_not_block_backup_but_blocks_exclusive(repo, src):
    be = backend(repo)
    with Lock(be, exclusive=False, operation="backup", wait=0):
        repo("backup", src, "--lock-wait", "0")
        with pytest.raises(Exception) as ei:
            Lock(be, exclusive=True, operation="prune", wait=0)
        assert getattr(ei.value, "exit_code", None) == 11


def test_exclusive_lock_blocks_restore_and_verify(repo, src, tmp_path):
    repo("backup", src)
    with Lock(backend(repo), exclusive=True, operation="prune", wait=0):
        repo("verify", "--lock-wait", "0", ok=11)
        repo("restore", "latest", "--target", tmp_path / "r", "--lock-wait", "0", ok=11)
        # ls, find and diff read trees a prune may be deleting ("data/.. not found" read like damage)
        repo("ls", "latest", "--lock-wait", "0", ok=11)
        repo("find", "*", "--lock-wait", "0", ok=11)
        repo("diff", "latest", "latest", "--lock-wait", "0", ok=11)
        # --no-lock (a read-only repository): reads go ahead, at their own risk
        repo("ls", "latest", "--no-lock", "--lock-wait", "0")
        repo("verify", "--no-lock", "--lock-wait", "0")
        repo("backup", src, "--no-lock", "--lock-wait", "0", ok=11)  # writers always lock
        # read-only catalog queries need no lock
        assert snapshot_count(repo) == 1


# --- stale locks are ignored ------------------------------------------------------------------------------
def test_lock_of_dead_process_on_this_host_is_ignored(repo, src):
    be = backend(repo)
    put_lock(be, "a" * 32, pid=dead_pid())
    repo("backup", src, "--lock-wait", "0")
    assert snapshot_count(repo) == 1


def test_lock_from_other_host_not_refreshed_is_ignored(repo, src):
    be = backend(repo)
    old = time.time() - STALE_AFTER - 60
    put_lock(be, "b" * 32, host="some-other-host.example", pid=1, time=old - 3600, refreshed=old)
    repo("backup", src, "--lock-wait", "0")
    assert snapshot_count(repo) == 1


def test_recent_lock_from_other_host_blocks(repo, src):
    be = backend(repo)
    # pid 1 is alive here, but that says nothing about another host: the lock must be honoured
    put_lock(be, "c" * 32, host="some-other-host.example", pid=dead_pid(), refreshed=time.time() - 60)
    res = repo("backup", src, "--lock-wait", "0", ok=11)
    assert "some-other-host.example" in res.err


def test_malformed_lock_does_not_block(repo, src):
    be = backend(repo)
    be.put("locks/" + "d" * 32, b"{not json")
    repo("backup", src, "--lock-wait", "0")
    out = repo("unlock").out  # (it said "shared lock held by malformed (pid 0 on ?, 1795880452s ago)")
    assert f"malformed lock object locks/{'d' * 32}" in out and "s ago" not in out, out


# --- unlock -----------------------------------------------------------------------------------------------
def test_unlock_removes_stale_keeps_live(repo, src):
    be = backend(repo)
    old = time.time() - STALE_AFTER - 60
    dead = put_lock(be, "1" * 32, pid=dead_pid())
    expired = put_lock(be, "2" * 32, host="elsewhere", pid=1, time=old, refreshed=old)
    other_live = put_lock(be, "3" * 32, host="elsewhere", pid=dead_pid(), refreshed=time.time(), exclusive=False,
                          operation="backup")
    with Lock(be, exclusive=False, operation="backup", wait=0) as mine:
        live = mine._name
        out = repo("--json", "unlock").json
        assert len(out["removed"]) == 2
        assert lock_names(be) == {other_live, live}
        assert dead not in lock_names(be) and expired not in lock_names(be)
        repo("unlock")  # idempotent
        assert lock_names(be) == {other_live, live}
    assert lock_names(be) == {other_live}
    repo("unlock", "--remove-all")
    assert lock_names(be) == set()


# --- waiting for a lock -----------------------------------------------------------------------------------
def test_lock_wait_succeeds_when_holder_releases(repo, src):
    be = backend(repo)
    held = Lock(be, exclusive=True, operation="prune", wait=0)
    t = threading.Timer(0.5, held.release)
    t.start()
    try:
        t0 = time.monotonic()
        repo("backup", src, "--lock-wait", "2s")
        waited = time.monotonic() - t0
    finally:
        t.join()
        held.release()
    assert waited >= 0.4, "the backup cannot have run while the exclusive lock was held"
    assert snapshot_count(repo) == 1


def test_lock_wait_gives_up(repo, src):
    be = backend(repo)
    with Lock(be, exclusive=True, operation="prune", wait=0):
        t0 = time.monotonic()
        repo("backup", src, "--lock-wait", "1s", ok=11)
        waited = time.monotonic() - t0
    assert 0.8 <= waited < 10


# --- concurrency: two hosts back up at once ---------------------------------------------------------------
@pytest.mark.parametrize("shared_cache", [False, True], ids=["own-cache", "shared-cache"])
def test_two_concurrent_backups(repo, tmp_path, shared_cache):
    a = make_tree(tmp_path / "srcA", {f"f{i}": os.urandom(500_000) for i in range(40)} | {"common": b"x" * 300_000})
    b = make_tree(tmp_path / "srcB", {f"g{i}": os.urandom(500_000) for i in range(40)} | {"common": b"x" * 300_000})
    procs = []
    for host, src in (("hostA", a), ("hostB", b)):
        cache = repo.cache if shared_cache else tmp_path / f"cache-{host}"
        env = {**os.environ, **repo.env(), "VAULT_CACHE_DIR": str(cache)}
        procs.append(subprocess.Popen([sys.executable, "-m", "vault.cli.main", "--json", "backup", str(src),
                                       "--host", host, "--lock-wait", "0"], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    snaps = repo("--json", "snapshots").json
    assert sorted(s["host"] for s in snaps) == ["hostA", "hostB"]
    assert lock_names(backend(repo)) == set()
    for s, src in zip(sorted(snaps, key=lambda s: s["host"]), (a, b)):
        target = tmp_path / f"restore-{s['host']}"
        repo("restore", s["id"], "--target", target)
        assert_trees_equal(src, target / src.relative_to("/"))
    repo("verify", "--read-data")


def test_a_lost_lock_stops_the_commit(repo, src, monkeypatch):
    """A held lock that vanished (unlock --remove-all) or could not be refreshed for too long (a suspended
    laptop: a prune elsewhere may have taken over) makes check() raise, and a backup then writes no snapshot."""
    from vault.errors import LockLost

    be = backend(repo)
    now = [1000.0]
    lk = Lock(be, exclusive=False, operation="backup", wait=0, clock=lambda: now[0])
    lk.check()
    now[0] += STALE_AFTER  # no refresh happened in all that time
    with pytest.raises(LockLost):
        lk.check()
    lk.release()
    lk = Lock(be, exclusive=False, operation="backup", wait=0)
    for name, _ in list(be.list("locks/")):
        be.delete(name)
    with pytest.raises(LockLost):
        lk.check()
    lk.release()
    # end to end: the lock disappears while the backup runs -> error, no snapshot
    from vault import archiver

    real = archiver.Archiver._finalize

    def finalize_and_lose_lock(self, block):
        for name, _ in list(be.list("locks/")):
            be.delete(name)
        return real(self, block)

    monkeypatch.setattr(archiver.Archiver, "_finalize", finalize_and_lose_lock)
    r = repo("backup", src, ok=1)
    assert "lock was removed" in r.err
    assert not list(be.list("snapshots/"))


def test_a_fork_waits_for_a_lock_refresh_in_progress_and_frees_it_after():
    """Restore forks worker processes while the lock's refresher thread lives: at the fork no refresh may be
    half done (the child would inherit a held mutex), so the fork holds every live lock's mutex meanwhile."""
    from vault.backend.memory import MemoryBackend

    lk = Lock(MemoryBackend(), exclusive=False, operation="restore", wait=0)
    try:
        entered, go = threading.Event(), threading.Event()

        def refresh():
            with lk._mutex:  # what the refresher holds while it writes
                entered.set()
                go.wait(5)

        t = threading.Thread(target=refresh)
        t.start()
        entered.wait(5)
        threading.Timer(0.3, go.set).start()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not lk._mutex.locked() else 1)
        waited = time.monotonic() - start
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the child inherited a held mutex"
        assert waited >= 0.25, "the fork did not wait for the refresh"
        assert not lk._mutex.locked()
        t.join()
    finally:
        lk.release()


def test_a_stopped_process_holding_the_catalog_open_lock_is_waited_for_then_exit_11(repo, tmp_path):
    """Another vault process stopped (SIGSTOP, a hung disk) while opening the shared catalog: this one waits
    --lock-wait (at least 5 s), then says so and exits 11 -- it used to wait for ever, silently."""
    import fcntl

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo("backup", src)
    lock = next((tmp_path / "cache").rglob("catalog.open.lock"))
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t = time.monotonic()
        res = repo.proc("--lock-wait", "0", "snapshots", timeout=60)
        waited = time.monotonic() - t
    finally:
        os.close(fd)
    assert res.returncode == 11 and b"another vault process" in res.stderr and b"Traceback" not in res.stderr
    assert 4.5 < waited < 30
    repo("snapshots")  # let go: fine again


def test_a_stopped_process_in_the_middle_of_a_catalog_write_is_exit_11_after_lock_wait(repo, tmp_path):
    """A vault process stopped inside a write to the shared catalog (SQLite's write lock held): the next
    command that had to write waited a fixed 60 s, whatever --lock-wait said, then exited 1 with "check the
    cache directory and its disk". Now it waits --lock-wait (at least 5 s) and exits 11, naming the cause."""
    import sqlite3

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo("backup", src)
    db = next((tmp_path / "cache").rglob("catalog.db"))
    other = Cli(repo.capfd, repo.repo, tmp_path / "other-machine")
    other("backup", src)  # (a snapshot this catalog has not seen: its sync must write)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE meta SET value=value")
        t = time.monotonic()
        res = repo.proc("--lock-wait", "2s", "snapshots", timeout=90)
        waited = time.monotonic() - t
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert res.returncode == 11, res.stderr
    assert b"another vault process" in res.stderr and b"Traceback" not in res.stderr
    assert 4.5 < waited < 30
    assert "2 snapshot(s)" in repo("snapshots").out


def test_a_full_repository_disk_points_read_only_commands_at_no_lock(tmp_path, capfd):
    """verify and restore cannot write their lock on a full repository disk: the message says they can run
    without one (--no-lock), and with it they work."""
    from conftest import FAST_INIT, Cli, tmpfs

    with tmpfs(tmp_path / "small", "4m") as mnt:
        cli = Cli(capfd, mnt / "repo", tmp_path / "cache")
        cli("init", *FAST_INIT)
        src = make_tree(tmp_path / "src", {"a": b"x" * 1000})
        cli("backup", src)
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        res = cli("verify", ok=1)
        assert "--no-lock" in res.err and "Traceback" not in res.err
        cli("--no-lock", "verify")
        cli("--no-lock", "restore", "latest", "--target", tmp_path / "r")
        filler.unlink()


def test_a_live_lock_from_a_host_whose_clock_runs_ahead_still_blocks_prune(repo, tmp_path):
    """A backup's lock written by a host whose clock is 25 hours ahead is live, not malformed: prune waits for
    it and plain 'unlock' keeps it (a review caught a hostile-input fix that called it stale)."""
    doc = {"host": "elsewhere", "pid": 4242, "username": "root", "operation": "backup", "exclusive": False,
           "time": time.time() + 25 * 3600, "refreshed": time.time() + 25 * 3600}
    (repo.repo / "locks").mkdir(exist_ok=True)
    (repo.repo / "locks" / ("cd" * 16)).write_text(json.dumps(doc))
    assert repo("--lock-wait", "0", "prune", ok=11).code == 11
    repo("unlock")
    assert (repo.repo / "locks" / ("cd" * 16)).exists()


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_lock_that_cannot_be_read_fails_the_command_without_leaving_its_own_lock(repo, exclusive):
    """Taking the lock writes ours, then lists the others: when reading another's fails (permission denied,
    the store unreachable through every retry), ours was left behind on every try, and blocked other hosts'
    exclusive commands until it went stale."""
    from vault.backend.faults import FaultBackend
    from vault.errors import PermanentError

    be = backend(repo)
    other = put_lock(be, "deadbeef" * 4, host="elsewhere", pid=1, exclusive=False, time=time.time())
    faulty = FaultBackend(be).fail("get", prefix="locks/", times=None, exc=PermanentError("permission denied"))
    for _ in range(3):
        with pytest.raises(PermanentError):
            Lock(faulty, exclusive=exclusive, operation="restore", wait=0)
    assert lock_names(be) == {other}


def test_an_exclusive_command_whose_clock_runs_ahead_removes_the_lock_it_overrides(repo, src):
    """A prune on a host whose clock runs ahead (or after the holder was suspended) takes a running backup's
    lock for stale: it ignored it and left it, the backup's next refresh wrote a new one, and its commit check
    passed -- a snapshot naming packs the prune had deleted. The overridden lock is now removed, and the holder
    finds that at its next refresh or check: it commits nothing."""
    from vault.errors import LockLost

    be = backend(repo)
    for refreshed_first in (False, True):
        holder = Lock(be, exclusive=False, operation="backup", wait=0)
        holder._stop.set()  # (its refresher thread is stopped: refreshes happen below, by hand)
        ahead = Lock(be, exclusive=True, operation="prune", wait=0, clock=lambda: time.time() + STALE_AFTER + 60)
        ahead.release()
        assert lock_names(be) == set()
        if refreshed_first:
            holder._refresh()  # (a new object is written: the removal must still be noticed)
        with pytest.raises(LockLost):
            holder.check()
        holder.release()


def test_a_holder_refreshing_between_the_listing_and_the_removal_still_loses_its_lock(repo, monkeypatch):
    """The exclusive command lists the locks, the stale holder refreshes (a new object, the old one deleted),
    then the command deletes the old name, already gone: the new one survived, and the holder committed."""
    from vault import locks
    from vault.errors import LockLost

    be = backend(repo)
    holder = Lock(be, exclusive=False, operation="backup", wait=0, clock=lambda: time.time() - STALE_AFTER - 600)
    holder._stop.set()  # (its refreshes happen by hand)
    real, refreshed = locks.list_locks, []

    def list_then_the_holder_refreshes(backend_, ours=None):
        out = real(backend_, ours)
        if not refreshed and any(lk.operation == "backup" for lk in out):
            refreshed.append(holder._refresh())
        return out

    monkeypatch.setattr(locks, "list_locks", list_then_the_holder_refreshes)
    ahead = Lock(be, exclusive=True, operation="prune", wait=0)
    monkeypatch.setattr(locks, "list_locks", real)
    assert refreshed == [True]
    assert {lk.operation for lk in real(be)} == {"prune"}
    holder._refresh()  # its next refresh: its lock is gone
    with pytest.raises(LockLost):
        holder.check()
    ahead.release()
    holder.release()


def test_a_holder_whose_refresh_write_lands_after_the_exclusive_command_still_loses_its_lock(repo):
    """The holder checked its old lock, then the exclusive command listed, removed it and listed again, then
    the holder's new lock landed: it survived and the holder committed. The old lock is now checked after the
    new one is written."""
    from vault.errors import LockLost

    be = backend(repo)
    holder = Lock(be, exclusive=False, operation="backup", wait=0, clock=lambda: time.time() - STALE_AFTER - 600)
    holder._stop.set()
    real_write, taken = holder._write, []

    def the_exclusive_command_first():
        if not taken:
            taken.append(Lock(be, exclusive=True, operation="prune", wait=0))
        return real_write()

    holder._write = the_exclusive_command_first
    holder._refresh()
    with pytest.raises(LockLost):
        holder.check()
    taken[0].release()
    holder.release()


def test_a_snapshot_forgotten_elsewhere_while_verify_syncs_is_not_damage(repo, tmp_path, monkeypatch):
    """verify's sync listed the manifests, another machine forgot one this catalog had not read yet, and the
    sync's load of it failed: "not found", exit 20. Its forget record lets it go."""
    from vault.repository import Repository

    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src)
    repo("snapshots")
    (src / "b").write_bytes(b"2")
    repo("backup", src, "--cache-dir", tmp_path / "other")
    new = repo("--json", "snapshots", "--cache-dir", tmp_path / "other").json[-1]["id"]
    real = Repository.list_snapshots

    def list_then_forget_elsewhere(self):
        out = real(self)
        if new in out:
            subprocess.run([sys.executable, "-m", "vault.cli.main", "--cache-dir", str(tmp_path / "other"), "-q",
                            "forget", new], env={**os.environ, **repo.env()}, check=True)
        return out

    monkeypatch.setattr(Repository, "list_snapshots", list_then_forget_elsewhere)
    res = repo("--json", "verify")
    assert res.json["ok"] is True, res.json


def test_a_lock_removed_while_the_manifest_was_on_its_way_withdraws_the_snapshot(repo, src, monkeypatch):
    """The lock was checked, then the manifest sent; a prune on a host whose clock runs ahead took the lock for
    stale in between and deleted this run's packs before the manifest named them: the backup exited 0 with a
    snapshot whose data was gone. The lock is asked again after the manifest landed; lost -> the snapshot is
    withdrawn (with a logs/ record: nobody calls it lost) and the backup fails."""
    from vault.repository import Repository

    be = backend(repo)
    real = Repository.save_snapshot

    def save_then_lose_the_lock(self, snap):
        sid = real(self, snap)
        for name, _ in list(be.list("locks/")):
            be.delete(name)
        return sid

    monkeypatch.setattr(Repository, "save_snapshot", save_then_lose_the_lock)
    res = repo("backup", src, ok=1)
    assert "lock was removed" in res.err, res.err
    assert not list(be.list("snapshots/")) and list(be.list("logs/"))
    monkeypatch.setattr(Repository, "save_snapshot", real)
    assert repo("--json", "verify").json["ok"] is True
    repo("backup", src)
    assert snapshot_count(repo) == 1


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_backup_whose_lock_a_prune_took_over_leaves_no_index_naming_deleted_packs(cli, tmp_path, monkeypatch, when):
    """A backup suspended (or in a container with the host's name) past its lock's staleness: a prune took the
    lock over and deleted the packs no index segment named yet -- this run's. The run then woke and wrote an
    index checkpoint naming them (only the snapshot's manifest was guarded): the next backup deduplicated
    against the deleted packs, exited 0, and its snapshot did not restore (exit 20). The lock is now asked
    around every segment: taken over before the segment is sent -> none is written; during -> it is deleted."""
    from vault import archiver
    from vault.repository import Repository

    from conftest import FAST_INIT

    repo = cli
    repo("init", *FAST_INIT, "--pack-size", "1")
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(700_000) for i in range(6)})
    be = backend(repo)
    monkeypatch.setattr(archiver, "CHECKPOINT_PACKS", 1)
    real, calls = Repository.save_index, []

    def prune_takes_over():
        for name, _ in list(be.list("locks/")):  # (as seen from another host after a 31-minute suspend)
            doc = json.loads(be.get(name))
            doc["refreshed"] = doc["time"] = time.time() - STALE_AFTER - 60
            (repo.repo / name).write_text(json.dumps(doc))
        other = Cli(repo.capfd, repo.repo, tmp_path / "other-cache")
        assert other.proc("prune", "--lock-wait", "0").returncode == 0

    def takeover_then_save(self, seg):
        calls.append(1)
        if len(calls) == 2:
            prune_takes_over()
        return real(self, seg)

    if when == "during":
        monkeypatch.setattr(Repository, "save_index", takeover_then_save)
    else:
        real_check = Repository.commit_index

        def takeover_then_commit(self, seg, check_lock):
            calls.append(1)
            if len(calls) == 2:
                prune_takes_over()
            return real_check(self, seg, check_lock)

        monkeypatch.setattr(Repository, "commit_index", takeover_then_commit)
    res = repo("backup", src, ok=1)
    assert len(calls) >= 2 and "lock was removed" in res.err, res.err
    monkeypatch.undo()
    fresh = Cli(repo.capfd, repo.repo, tmp_path / "fresh-cache")
    assert fresh("--json", "verify", ok=False).json["ok"] is True
    fresh("backup", src)
    out = tmp_path / "out"
    fresh("restore", "latest", "--target", out)
    assert_trees_equal(src, out / str(src).lstrip("/"))


def test_a_lock_of_this_host_name_from_another_pid_namespace_is_judged_by_age(repo, src):
    """A container given the host's name (``docker --network host``) runs in a PID namespace of its own: its
    pid means nothing here, and a live backup there was taken for dead at once -- a prune on the host then
    deleted the packs it was writing. Such a lock blocks until it is 30 minutes old; one from another boot
    of this machine, or with a dead pid in this namespace (or written before namespaces were recorded), does not."""
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    ns = os.stat("/proc/self/ns/pid")
    pid_ns = f"{ns.st_dev}:{ns.st_ino}"
    be = backend(repo)
    name = put_lock(be, "d" * 32, pid=dead_pid(), boot_id=boot, pid_ns="4:1")
    res = repo("--lock-wait", "0", "backup", src, ok=11)
    assert "held by prune" in res.err
    be.delete(name)
    for fields in ({"boot_id": "another-boot", "pid_ns": "4:1"}, {"boot_id": boot, "pid_ns": pid_ns}, {}):
        name = put_lock(be, "e" * 32, pid=dead_pid(), **fields)
        repo("--lock-wait", "0", "backup", src)
        be.delete(name)
    old = time.time() - STALE_AFTER - 60
    put_lock(be, "f" * 32, pid=dead_pid(), boot_id=boot, pid_ns="4:1", time=old, refreshed=old)
    repo("--lock-wait", "0", "backup", src)


def test_what_is_not_a_lock_under_locks_is_left_alone(repo, src):
    """A note (or an S3 "folder" marker) under locks/ was read as a malformed lock, so stale, and deleted by
    prune and unlock -- an object vault did not write. Only 32-hex names are locks."""
    be = backend(repo)
    (repo.repo / "locks").mkdir(exist_ok=True)
    (repo.repo / "locks" / "README.txt").write_text("locks of the backup job live here\n")
    repo("backup", src, "--lock-wait", "0")
    repo("prune")
    repo("unlock", "--remove-all")
    assert (repo.repo / "locks" / "README.txt").read_text() == "locks of the backup job live here\n"
    assert [n for n, _ in be.list("locks/")] == ["locks/README.txt"]


def test_a_store_that_does_not_carry_out_deletes_neither_fakes_a_forget_nor_locks_out_its_own_prune(repo, src,
                                                                                                   monkeypatch):
    """A store that answers 204 to a DELETE and keeps the object: 'forget' said 'forgot 2 snapshot(s)' while
    all were still there, and 'forget --prune' waited for the forget's own lock (never deleted) and gave up:
    exit 11, 'locked by forget (pid <its own>)'. The forget now says the store still lists them, and a lock of
    this very process that it no longer holds is no conflict."""
    for i in range(3):
        repo("backup", src, "--time", f"2026-01-0{i + 1}T10:00:00Z")
    monkeypatch.setattr(LocalBackend, "delete", lambda self, name: None)
    res = repo("forget", "--keep-last", "1", "--prune", "--lock-wait", "0")
    assert "still lists 2 of the snapshots" in res.err and "forgot 0 snapshot(s)" in res.out, (res.out, res.err)
    assert snapshot_count(repo) == 3


def test_a_locked_second_repository_is_named_by_copy_and_repair(repo, src, tmp_path):
    """copy --to B and repair --from-repo B with B locked by a prune: exit 11 with "repository is locked", not
    saying which of the two repositories it was."""
    from conftest import FAST_INIT

    repo("backup", src)
    second = tmp_path / "second"
    repo("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", repo.repo)
    with Lock(LocalBackend(second), exclusive=True, operation="prune", wait=0):
        res = repo("copy", "--to", second, "--lock-wait", "0", ok=11)
        assert res.err.startswith("vault: the destination (--to): repository is locked"), res.err
        assert f"'vault --repo {second} unlock'" in res.err, res.err
        res = repo("repair", "--from-repo", second, "--lock-wait", "0", ok=11)
        assert "--from-repo" in res.err and "repository is locked" in res.err, res.err


def test_taking_a_lock_does_not_read_back_the_lock_just_written():
    """list_locks read every lock object, our own too: one round trip (50-200 ms over a WAN) per command for
    what it had just written."""
    from vault.backend.counting import CountingBackend
    from vault.backend.memory import MemoryBackend
    from vault.locks import Lock

    store = CountingBackend(MemoryBackend())
    lk = Lock(store, exclusive=True, operation="prune", wait=0)
    try:
        assert store.stats()["requests"]["GET"] == 0
    finally:
        lk.release()
    lk = Lock(store, exclusive=False, operation="restore", wait=0)  # (another lock there: read, once)
    second = Lock(store, exclusive=False, operation="backup", wait=0)
    try:
        assert store.stats()["requests"]["GET"] == 1 and second.others and second.others[0].operation == "restore"
    finally:
        second.release()
        lk.release()
