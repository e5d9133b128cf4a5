"""Backup of a local repository reads its files in forked worker processes (``backup_workers``). What must hold:
a block cut by two workers is stored once (one claims table shared by all), each worker's nonces are its own,
the claims table stays bounded (emptied when full, the index asked from then on), a worker that dies fails
the backup with one line and leaves the repository sound, Ctrl-C leaves no temp file, and the requests the
workers made are counted."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import FAST_INIT, assert_trees_equal, make_tree, with_jobs

from vault import api, claims, pack

KiB = 1024


@pytest.fixture
def spawned(monkeypatch):
    """The BackupWorkers each in-process backup made (so a test knows the worker processes really ran)."""
    made = []

    class Recorded(api.BackupWorkers):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(api, "BackupWorkers", Recorded)
    return made


def _dup_tree(root, copies: int = 24):
    """Many files sharing content, in several directories (so several batches, read by both workers)."""
    rnd = random.Random(3)
    big, small = rnd.randbytes(300 * KiB), rnd.randbytes(2 * KiB)
    spec = {f"d{d}": {**{f"big{i}.bin": big for i in range(copies // 4)},
                      **{f"small{i}.txt": small for i in range(copies)},
                      **{f"own{i}.txt": rnd.randbytes(1500) for i in range(70)}} for d in range(4)}
    return make_tree(root, spec), big, small


def _temp_files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith(".tmp-")]


def _stored_blocks(cli) -> int:
    return cli("--json", "stats").json["blocks"]


def test_a_block_cut_by_two_workers_is_stored_once(repo, tmp_path, spawned):
    src, big, small = _dup_tree(tmp_path / "src")
    out = with_jobs(repo, "2", "--json", "backup", src).json
    assert len(spawned) == 1, "a local backup with --jobs 2 reads its files in worker processes"
    unique = len(big) + len(small) + 4 * 70 * 1500
    assert out["bytes_processed"] > 4 * unique
    assert out["bytes_added"] < unique * 1.1, out  # (compression of random data gains nothing)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    assert_trees_equal(src, r / src.relative_to("/"))
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    # the same tree with one thread of one process stores exactly as many blocks
    blocks = _stored_blocks(repo)
    other = tmp_path / "other"
    repo.cache, repo.repo = other / "cache", other / "repo"
    repo("init", *FAST_INIT)
    with_jobs(repo, "1", "backup", src)
    assert _stored_blocks(repo) == blocks


def test_forked_children_never_reuse_the_parents_nonces():
    """The nonce pool is drawn 4096 at a time; a forked worker must not inherit it (AES-GCM under one key)."""
    pack._nonce()  # this process has a pool now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"".join(pack._nonce() for _ in range(8)))
        os._exit(0)
    os.close(w)
    got = b""
    while chunk := os.read(r, 4096):
        got += chunk
    os.close(r)
    os.waitpid(pid, 0)
    theirs = {got[i : i + 12] for i in range(0, len(got), 12)}
    mine = {pack._nonce() for _ in range(8)}
    assert len(theirs) == 8 and not (theirs & mine)


def test_claims_table_is_shared_bounded_and_emptied_when_full():
    c = claims.Claims(slots=16, processes=True)  # emptied when a 13th id comes
    ids = [os.urandom(32) for _ in range(40)]
    assert [c.add(i) for i in ids[:11]] == [True] * 11
    assert not c.add(ids[0]) and c.contains(ids[0]) and c.generation == 0
    pid = os.fork()
    if pid == 0:  # a worker claims one: the parent sees it
        os._exit(0 if c.add(ids[20]) else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert c.contains(ids[20]) and not c.add(ids[20]) and c.generation == 0  # 12 ids: full, not emptied yet
    assert c.add(ids[21])  # a new one: emptied first
    assert c.generation == 1 and not c.contains(ids[0]) and c.contains(ids[21])
    assert c.add(ids[0]) and not c.add(ids[21])
    with pytest.raises(ValueError):
        c.add(b"short")


def test_a_backup_bigger_than_the_claims_table_stays_correct(repo, tmp_path, spawned, monkeypatch):
    """With a tiny table it is emptied many times during the backup; blocks are then found through the index
    (the worker's own catalog connection) or stored again -- never left out."""
    monkeypatch.setattr(claims, "SLOTS", 32)
    src, big, small = _dup_tree(tmp_path / "src")
    with_jobs(repo, "2", "backup", src)
    assert spawned and spawned[0].claims.generation > 0
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    assert_trees_equal(src, r / src.relative_to("/"))
    assert repo("--json", "verify", "--read-data").json["ok"] is True


def test_a_worker_that_dies_fails_the_backup_in_one_line(repo, tmp_path, spawned, monkeypatch):
    """A worker killed (SIGKILL, as the OOM killer would) part way: exit 1 with one line, no snapshot, the
    repository verifies clean and the next backup completes."""
    from vault import filereader

    src, _, _ = _dup_tree(tmp_path / "src")
    (src / "d2" / "poison").write_bytes(b"x" * 5000)
    parent, real = os.getpid(), filereader.FileReader.read_file

    def read_file(self, path, name, *rest):
        if name == b"poison" and os.getpid() != parent:  # only ever in a worker process
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, path, name, *rest)

    monkeypatch.setattr(filereader.FileReader, "read_file", read_file)
    res = with_jobs(repo, "2", "backup", src, ok=1)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "worker process died" in lines[0] and "Traceback" not in res.err, res.err
    assert len(_temp_files(repo.repo)) <= 1, "the other worker removes its unfinished pack (only the dead one's stays)"
    assert not (repo.repo / "snapshots").exists() or not list((repo.repo / "snapshots").iterdir())
    monkeypatch.setattr(filereader.FileReader, "read_file", real)
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    with_jobs(repo, "2", "backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    assert_trees_equal(src, r / src.relative_to("/"))


def test_ctrl_c_leaves_no_temp_file_in_the_repository(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "4")
    rnd = random.Random(5)
    src = make_tree(tmp_path / "src", {f"d{d}": {f"f{i}.bin": rnd.randbytes(700 * KiB) for i in range(12)}
                                       for d in range(12)})
    env = {**os.environ, **cli.env(), "VAULT_JOBS": "2"}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    data = cli.repo / "data"
    while time.monotonic() < deadline and p.poll() is None and sum(len(f) for _, _, f in os.walk(data)) < 3:
        time.sleep(0.002)
    if p.poll() is not None:
        pytest.skip("the backup finished before it could be interrupted")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if (cli.repo / "snapshots").exists() and list((cli.repo / "snapshots").iterdir()):
        pytest.skip("the snapshot was committed before the signal arrived")
    assert p.returncode == 130 and b"Traceback" not in err, err
    assert not _temp_files(cli.repo)
    assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_the_workers_requests_are_counted(repo, tmp_path, spawned):
    src, _, _ = _dup_tree(tmp_path / "src")
    out = with_jobs(repo, "2", "--json", "backup", src).json
    assert spawned
    packs = sum(len(f) for _, _, f in os.walk(repo.repo / "data"))
    assert out["requests"]["PUT"] >= packs + 2  # every pack, an index segment, the snapshot
    assert out["bytes_up"] >= sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo.repo / "data")
                                  for f in fs)


def test_batches_of_long_paths_never_block_the_pipe(repo, tmp_path, spawned):
    """A batch's message can be bigger than a socket's buffer (256 paths of ~3,000 bytes): it is only sent to
    a worker with nothing else unread, so neither side ever waits on the other's full buffer."""
    deep = tmp_path / "src"
    d = deep
    while len(str(d)) < 2900:
        d = d / ("d" * 200)
    d.mkdir(parents=True)
    for i in range(600):
        (d / f"f{i:04d}-{'x' * 60}").write_bytes(b"%d" % i)
    out = with_jobs(repo, "2", "--json", "backup", deep).json
    assert spawned and out["files_new"] == 600
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    assert_trees_equal(deep, r / deep.relative_to("/"))


def test_a_worker_that_cannot_write_fails_the_backup_and_no_temp_pack_stays(cli, tmp_path):
    """Every pack write past 6 MiB fails (RLIMIT_FSIZE: EFBIG, as a full disk would fail it): the backup fails
    with one line; each worker -- the failing one too -- removes its unfinished pack."""
    import resource

    cli("init", *FAST_INIT, "--pack-size", "16")
    rnd = random.Random(9)
    src = make_tree(tmp_path / "src", {f"d{d}": {f"f{i}.bin": rnd.randbytes(600 * KiB) for i in range(20)}
                                       for d in range(4)})

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))

    p = subprocess.run([sys.executable, "-m", "vault.cli.main", "backup", str(src)], capture_output=True,
                       env={**os.environ, **cli.env(), "VAULT_JOBS": "2"}, preexec_fn=limit, timeout=120)
    err = p.stderr.decode()
    assert p.returncode != 0 and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not _temp_files(cli.repo)
    assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_a_worker_killed_holding_the_claims_lock_blocks_nobody():
    c = claims.Claims(slots=64, processes=True)
    pid = os.fork()
    if pid == 0:
        c._lock.__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the lock of a dead process is still held"))
    signal.alarm(5)
    try:
        assert c.add(os.urandom(32))
    finally:
        signal.alarm(0)


def test_a_cancelled_reader_reads_nothing_more(tmp_path):
    """Ctrl-C during a big file: the worker stops between two chunks instead of reading the file to its end."""
    import hashlib
    from types import SimpleNamespace

    from vault import filereader
    from vault.chunker import Chunker, ChunkerParams

    params = ChunkerParams(min_size=64 * KiB, avg_size=128 * KiB, max_size=512 * KiB)
    repo = SimpleNamespace(config=SimpleNamespace(chunker=params), chunker=Chunker(params, 5),
                           block_id=lambda data: hashlib.sha256(data).digest())
    f = tmp_path / "big.bin"
    f.write_bytes(random.Random(1).randbytes(4 << 20))
    stored = []
    reader = filereader.FileReader(repo, claims.Claims(), lambda kind, bid, data: stored.append(bid) or 1,
                                   lambda bid: False, lookups=False, cancelled=lambda: len(stored) >= 2)
    here = (tmp_path.stat().st_dev, tmp_path.stat().st_ino)  # (the directory the walk listed it in)
    (res,) = reader.read_files([(bytes(f), b"big.bin", here)])
    assert res.error == "cancelled" and len(stored) == 2 and res.read < 2 << 20
    assert reader.read_files([(bytes(f), b"big.bin", here)])[0].error == "cancelled" and len(stored) == 2


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dir", "socket"])
def test_a_file_swapped_for_another_kind_is_left_out_not_an_error_nor_a_hang(tmp_path, kind):
    """Replaced by a FIFO between the directory listing and the read: the open must not wait for a writer. By a
    symlink (`ln -sfn`, a deploy's `current -> releases/N`), a FIFO or a directory: it was an error -- exit 3,
    "unreadable", for a symlink ELOOP's "Too many levels of symbolic links" -- where a file deleted is a
    warning: left out as deleted (the next backup stores it), and said so (found by the live-tree helper)."""
    import hashlib
    from types import SimpleNamespace

    from vault import filereader
    from vault.chunker import Chunker, ChunkerParams

    params = ChunkerParams(min_size=64 * KiB, avg_size=128 * KiB, max_size=512 * KiB)
    repo = SimpleNamespace(config=SimpleNamespace(chunker=params), chunker=Chunker(params, 5),
                           block_id=lambda data: hashlib.sha256(data).digest())
    fifo = tmp_path / "was-a-file"
    {"fifo": os.mkfifo, "dir": os.mkdir, "symlink": lambda p: os.symlink("/etc/passwd", p),
     "socket": lambda p: socket.socket(socket.AF_UNIX).bind(str(p))}[kind](fifo)
    reader = filereader.FileReader(repo, claims.Claims(), lambda *a: 1, lambda bid: False, lookups=False)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("opening a FIFO hung"))
    signal.alarm(5)
    try:
        (res,) = reader.read_files([(bytes(fifo), b"was-a-file", (tmp_path.stat().st_dev, tmp_path.stat().st_ino))])
    finally:
        signal.alarm(0)
    assert res.error is None and res.node is None and not res.vanished
    assert res.replaced_by == {"fifo": "a FIFO", "dir": "a directory", "symlink": "a symbolic link",
                               "socket": "a socket"}[kind]  # (a socket's open fails: ENXIO, not ELOOP)
    assert filereader.from_wire(filereader.to_wire(res)) == res


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_hardlinked_names_count_their_bytes_once(repo, tmp_path, jobs):
    src = make_tree(tmp_path / "src", {"a": {"orig": random.Random(2).randbytes(300 * KiB)}, "b": {}})
    for i in range(20):
        os.link(src / "a" / "orig", src / "b" / f"l{i}")
    before = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo.repo) for f in fs)
    out = with_jobs(repo, jobs, "--json", "backup", src).json
    grown = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo.repo) for f in fs) - before
    assert out["files_new"] == 21 and out["bytes_processed"] == 21 * 300 * KiB
    assert 300 * KiB <= out["bytes_added"] <= grown, out


def test_a_worker_dying_while_idle_is_noticed_at_once():
    """The OOM killer takes an idle worker: the next wait reports it, not only its next job's send."""
    from vault.forkpool import ForkPool, WorkerError

    pool = ForkPool(2, lambda m: (time.sleep(m), m)[1])
    try:
        pool.send(0, 3.0)
        os.kill(pool._pids[1], signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(WorkerError):
            pool.receive()
        assert time.monotonic() - t < 2.0
    finally:
        pool.close(kill=True)


def test_a_stop_signal_handled_inside_an_at_fork_callback_is_not_dropped(tmp_path):
    """A Ctrl-C or SIGTERM that the kernel gave another thread is handled in the main thread at its next check,
    which can fall inside an at-fork callback of os.fork (logging's): the KeyboardInterrupt raised there was
    printed as "Exception ignored" and dropped, and the backup ran on to the end (exit 0), a second Ctrl-C
    ignored too. It is now handled once the fork is over."""
    code = (
        "import os, signal, sys, threading, time\n"
        "from vault.cli import main as m\n"
        "from vault import forkpool\n"
        "signal.signal(signal.SIGINT, m._on_sigint)\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "fired = []\n"
        "def before():\n"
        "    if not fired:\n"
        "        fired.append(1)\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # (the main thread has it blocked: the other one takes it)\n"
        "        for _ in range(200000): pass  # (checks: the handler runs here, inside the callback)\n"
        "os.register_at_fork(after_in_parent=before)\n"
        "try:\n"
        "    pool = forkpool.ForkPool(1, lambda msg: msg)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped'); sys.exit(0)\n"
        "pool.close()\n"
        "print('ran on'); sys.exit(1)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "stopped" and "Exception ignored" not in p.stderr, (p.stdout, p.stderr)


def test_a_path_given_that_is_replaced_meanwhile_is_an_error_not_a_warning(repo, tmp_path, monkeypatch):
    """A file replaced by a symlink (or deleted) between the walk and its read is left out with a warning -- but
    a PATH given on the command line is an error, as one gone before the walk (usage.md): the review found a
    named PATH replaced meanwhile left out with exit 0 while the snapshot's paths named it."""
    from vault import filereader

    src = make_tree(tmp_path / "src", {"named": b"n", "inside": b"i", "other": b"o"})
    real = filereader.FileReader.read_file

    def swapped(self, path, name, parent):
        if name in (b"named", b"inside"):  # (as if `ln -sfn` ran between the listing and the read)
            return filereader.FileResult(node=None, replaced_by="a symbolic link")
        return real(self, path, name, parent)

    monkeypatch.setattr(filereader.FileReader, "read_file", swapped)
    res = with_jobs(repo, "1", "backup", src / "named", src / "other", ok=3)
    assert f"error: {src / 'named'}: replaced by a symbolic link while the backup ran: not in the snapshot" in res.err
    assert repo("--json", "snapshots").json[-1]["paths"] == [str(src / "other")]  # (as a PATH gone before the walk)
    res = with_jobs(repo, "1", "backup", src)
    assert f"warning: {src / 'inside'}: replaced by a symbolic link while the backup ran" in res.err


def test_a_directory_moved_under_the_backup_is_one_error_line_not_one_per_file(repo, tmp_path, monkeypatch):
    """A directory moved or deleted between its listing and the read of its files: each file's read found its
    path leading elsewhere, and each was an error line -- 600 lines in a cron mail for one `mv` (the live-tree
    helper). One line now names the directory and how many of its files are not in the snapshot; exit 3."""
    from vault import filereader

    src = make_tree(tmp_path / "src", {"moved": {f"f{i}": b"x" * i for i in range(1, 6)}, "kept": b"k"})
    real = filereader.FileReader.read_file

    def moved(self, path, name, parent):
        if b"/moved/" in path:
            return filereader.FileResult(node=None, error=filereader.DIR_GONE)
        return real(self, path, name, parent)

    monkeypatch.setattr(filereader.FileReader, "read_file", moved)
    res = with_jobs(repo, "1", "--json", "backup", src, ok=3)
    assert res.json["errors"] == [{"path": str(src / "moved"), "error": "replaced, moved or deleted while the backup "
                                   "ran: 5 file(s) in it not in the snapshot"}], res.json["errors"]
