"""Restore's worker processes (vault/forkpool.py): failures of a worker reach the user as one line with the
right exit code, Ctrl-C lets the work in hand finish, and an inherited 'ignore SIGINT' is kept."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_INIT, Hardlink, make_tree, scan, with_jobs

from vault import forkpool, restorer
from vault.errors import VaultError


def _tree(tmp_path: Path, files: int = 20, size: int = 5000) -> Path:
    return make_tree(tmp_path / "src", {f"d{i % 10}": {} for i in range(10)} |
                     {f"f{i}": os.urandom(size) for i in range(files)})


def one_line(res) -> str:
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    return lines[0]


def restore_with(repo, tmp_path: Path, monkeypatch, method: str, replacement, runs: int = 1) -> list:
    """Back up a small tree, replace a Restorer method (the children inherit it) and restore ``runs`` times."""
    repo("backup", _tree(tmp_path))
    monkeypatch.setattr(restorer.Restorer, method, replacement)
    return [repo("restore", "latest", "--target", tmp_path / f"r{i}", ok=False) for i in range(runs)]


def test_a_worker_that_dies_fails_the_restore_in_one_line(repo, tmp_path, monkeypatch):
    [res] = restore_with(repo, tmp_path, monkeypatch, "_run_part", lambda self, msg: os._exit(9))
    assert res.code == 1 and "worker process died" in one_line(res)


def test_a_worker_dead_before_its_first_part_fails_the_restore_in_one_line(repo, tmp_path, monkeypatch):
    """The parent may find the pipe already broken (BrokenPipeError, which click takes for a closed stdout
    and exits 1 silently) or the child still there: one line either way."""
    for res in restore_with(repo, tmp_path, monkeypatch, "_child_init", lambda self, threads: os._exit(3), runs=3):
        assert res.code == 1 and "worker process died" in one_line(res)


def test_a_worker_that_cannot_start_says_why(repo, tmp_path, monkeypatch):
    def fail(self, threads):
        raise VaultError("cannot open the repository: no such thing")

    [res] = restore_with(repo, tmp_path, monkeypatch, "_child_init", fail)
    assert res.code == 1 and "cannot open the repository: no such thing" in one_line(res)


def test_an_unexpected_error_in_a_worker_is_one_line_internal_error(repo, tmp_path, monkeypatch):
    def boom(self, msg):
        raise ValueError("boom")

    [res] = restore_with(repo, tmp_path, monkeypatch, "_run_part", boom)
    assert res.code == 1 and "internal error" in (line := one_line(res)) and "ValueError: boom" in line, res.err
    with pytest.raises(ValueError) as info:  # -v: raised again, the worker's traceback in a note
        repo("-v", "restore", "latest", "--target", tmp_path / "r2", ok=False)
    assert any("in a worker process" in n and "raise ValueError" in n for n in info.value.__notes__)


def _restore_proc(repo, tmp_path: Path, target: Path, ignore_int: bool, jobs: str = "2") -> subprocess.Popen:
    env = {**os.environ, **repo.env(), "VAULT_JOBS": jobs}

    def setup():
        os.setsid()  # its own process group: the test signals the group, as a terminal would
        if ignore_int:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "vault.cli.main", "restore", "latest", "--target", str(target)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=setup)


def _when_writing(p: subprocess.Popen, target: Path, workers: int = 2) -> None:
    """Wait until the workers exist and files are being written."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split() if p.poll() is None else []
        if len(kids) >= workers and sum(len(f) for _, _, f in os.walk(target)) >= 50:
            return
        time.sleep(0.005)
    pytest.fail("the restore finished before it could be interrupted (make the tree bigger)")


@pytest.fixture
def big(repo, tmp_path):
    src = make_tree(tmp_path / "src", {f"d{i}": {f"f{j}": os.urandom(30_000) for j in range(200)} for i in range(15)})
    repo("backup", src)
    return src


def interrupted_restore(repo, tmp_path: Path, ignore_int: bool) -> tuple[subprocess.Popen, bytes, Path]:
    """A restore in its own process group, sent SIGINT (as a terminal's Ctrl-C) while its workers write."""
    target = tmp_path / "r"
    p = _restore_proc(repo, tmp_path, target, ignore_int)
    _when_writing(p, target)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert b"Traceback" not in err, err
    return p, err, target


def test_ctrl_c_lets_the_workers_finish_what_they_hold_no_temp_files_left(repo, tmp_path, big):
    p, err, target = interrupted_restore(repo, tmp_path, ignore_int=False)
    assert p.returncode == 130, err
    left = [f for _, _, files in os.walk(target) for f in files if f.startswith(".vault-")]
    assert not left, left


def test_an_inherited_ignore_sigint_is_kept_by_the_workers(repo, tmp_path, big):
    p, err, target = interrupted_restore(repo, tmp_path, ignore_int=True)
    assert p.returncode == 0, err
    assert sum(len(f) for _, _, f in os.walk(target)) == 15 * 200


@pytest.mark.parametrize("jobs", ["2", "1"])
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1])
def test_a_second_ctrl_c_stops_the_workers_and_removes_their_temp_files(repo, tmp_path, big, delay, jobs):
    """`timeout -s INT` signals vault, then its whole group: a second SIGINT while the workers finish what they
    hold. They are then killed part way through files; the main process removes those files' temp names. With
    --jobs 1 (threads), the fetches not started are cancelled and the files they left unfinished removed."""
    target = tmp_path / "r"
    p = _restore_proc(repo, tmp_path, target, ignore_int=False, jobs=jobs)
    _when_writing(p, target, workers=2 if jobs == "2" else 0)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(delay)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert b"Traceback" not in err, err
    assert p.returncode == 130, err
    left = [f for _, _, files in os.walk(target) for f in files if f.startswith(".vault-")]
    assert not left, left


def test_a_low_descriptor_limit_gets_fewer_workers_not_too_many_open_files(repo, tmp_path):
    """`--jobs 64` under `ulimit -n 24`: each worker costs descriptors (its pipe, its files, its directory
    handles), so fewer are started and the restore completes, whole."""
    src = make_tree(tmp_path / "src", {f"d{i}": {f"s{j}": {f"f{k}": os.urandom(2000) for k in range(10)}
                                                  for j in range(4)} for i in range(12)})
    repo("backup", src)
    for jobs in ("64", "2"):
        target = tmp_path / f"r{jobs}"
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "restore", "latest", "--target", str(target),
                            "--jobs", jobs], env={**os.environ, **repo.env()}, capture_output=True, timeout=120,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24)))
        assert p.returncode == 0, p.stderr.decode()
        assert scan(target / src.relative_to("/")) == scan(src)


def test_one_usable_cpu_restores_in_one_process(repo, tmp_path, monkeypatch):
    """The default is one worker per CPU vault may use (`taskset -c 0`: one, so no worker processes)."""
    src = _tree(tmp_path)
    repo("backup", src)
    monkeypatch.setattr(forkpool, "cores", lambda: 1)

    def no_workers(self, processes, threads):
        raise AssertionError(f"{processes} worker processes on one CPU")

    monkeypatch.setattr(restorer.Restorer, "_run_processes", no_workers)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert scan(tmp_path / "r" / src.relative_to("/")) == scan(src)


def test_a_message_that_cannot_be_sent_is_a_dead_worker_not_a_hang():
    """A writer thread that fails (an unpicklable message, MemoryError) must not leave receive() waiting for
    a reply that will never come."""
    import threading as _threading

    from vault.forkpool import ForkPool, WorkerError

    pool = ForkPool(1, lambda m: m)
    try:
        pool.send_later(0, _threading.Lock())  # cannot be pickled
        with pytest.raises(WorkerError):
            got = pool.receive(10)
            assert got is not None, "no answer within 10 s: the writer thread died silently"
    finally:
        pool.close(kill=True)


def test_ctrl_c_while_this_process_finishes_empty_files_leaves_no_temp_file(repo, tmp_path, monkeypatch):
    """Empty files are finished by the main process as it plans a batch (no worker involved): a Ctrl-C there
    left the one in hand as a temp file (11 runs in 12 of 60,000 empty files)."""
    src = make_tree(tmp_path / "src", {f"e{i}": b"" for i in range(300)} | {"data": os.urandom(50_000)})
    repo("backup", src)
    parent, real, calls = os.getpid(), restorer.Restorer._rename, [0]

    def rename(self, *a, **kw):
        if os.getpid() == parent:
            calls[0] += 1
            if calls[0] == 120:  # its temp file is written and closed, not renamed yet
                raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(restorer.Restorer, "_rename", rename)
    target = tmp_path / "r"
    res = with_jobs(repo, "2", "restore", "latest", "--target", target, ok=130)
    assert calls[0] >= 120, "the main process finished the empty files"
    left = [f for _, _, files in os.walk(target) for f in files if f.startswith(".vault-")]
    assert not left, (left, res.err)


def test_bytes_written_counts_the_files_put_in_place_whatever_the_jobs(cli, tmp_path):
    """A damaged file's partial data is not counted (it is removed); --jobs 1 and 2 report the same."""
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = __import__("random").Random(4)
    src = make_tree(tmp_path / "src", {f"f{i}.bin": rnd.randbytes(700_000) for i in range(8)})
    cli("backup", src)
    packs = sorted(p for p in (cli.repo / "data").rglob("*") if p.is_file() and p.stat().st_size > 500_000)
    victim = packs[len(packs) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x10
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    got = {}
    for jobs in ("1", "2"):
        target = tmp_path / f"r{jobs}"
        out = with_jobs(cli, jobs, "--json", "restore", "latest", "--target", target, ok=20).json
        on_disk = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        assert out["damaged"] and out["bytes_written"] == on_disk, (out["bytes_written"], on_disk)
        got[jobs] = out["bytes_written"]
    assert got["1"] == got["2"]


def test_bytes_written_counts_a_hardlinked_file_put_in_place_under_another_name(cli, tmp_path):
    """When the name of a hardlink group restored first is blocked (a directory in the way), the data goes in under
    the next name: it is put in place, so it counts, whatever the jobs."""
    cli("init", *FAST_INIT)
    rnd = __import__("random").Random(7)
    spec = {}
    for g in range(6):
        spec[f"a{g}"] = {"x": rnd.randbytes(20_000 + g)}
        spec[f"b{g}"] = {"y": Hardlink(f"a{g}/x")}
    src = make_tree(tmp_path / "src", spec)
    cli("backup", src)
    for jobs in ("1", "2"):
        target = tmp_path / f"r{jobs}"
        for g in range(6):  # the first name of each group blocked by a directory
            (target / src.relative_to("/") / f"b{g}" / "y").mkdir(parents=True)
        out = with_jobs(cli, jobs, "--json", "restore", "latest", "--target", target, ok=1).json
        on_disk = sum(p.stat().st_size for p in (target / src.relative_to("/")).rglob("x"))
        assert on_disk == sum(20_000 + g for g in range(6))
        assert out["bytes_written"] == on_disk, (jobs, out["bytes_written"], on_disk)


@pytest.mark.parametrize("forks", [1, 0])
def test_the_process_limit_stopping_the_forks(repo, tmp_path, monkeypatch, forks):
    """`ulimit -u` reached: fork fails with EAGAIN (BlockingIOError). Restore, verify --read-data and backup were
    an internal error; now the workers forked so far do the work, and with none this process does it."""
    src = _tree(tmp_path, files=30)
    with_jobs(repo, "2", "backup", src)
    real, made = forkpool._fork, []

    def limited() -> int:
        if len(made) >= forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        pid = real()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(forkpool, "_fork", limited)
    if forks:
        with_jobs(repo, "3", "restore", "latest", "--target", tmp_path / "r")
        assert scan(tmp_path / "r" / str(src).lstrip("/")) == scan(src) and len(made) == 1
        made.clear()
        assert with_jobs(repo, "3", "--json", "verify", "--read-data").json["ok"] is True
    else:  # (not one: the work is done in this process, as with --jobs 1)
        with_jobs(repo, "3", "restore", "latest", "--target", tmp_path / "r")
        assert scan(tmp_path / "r" / str(src).lstrip("/")) == scan(src) and not made
        assert with_jobs(repo, "3", "--json", "verify", "--read-data").json["ok"] is True
        (src / "new").write_bytes(b"n" * 50_000)
        with_jobs(repo, "3", "backup", src)
        assert with_jobs(repo, "3", "--json", "verify", "--read-data").json["ok"] is True
