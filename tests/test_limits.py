"""This machine's limits and a store that goes away are errors of the place (exit 1, one line), never
damage (exit 20), a wrong password (12), a backup "with unreadable files" (3) or an internal error."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_INIT, ext4, make_tree, with_jobs

from vault import api, keys
from vault.backend.local import LocalBackend
from vault.errors import ObjectNotFound, PermanentError

MiB = 1 << 20


def _files(tmp_path: Path, n: int = 6) -> Path:
    return make_tree(tmp_path / "src", {f"d{i}": {f"f{j}": os.urandom(40_000) for j in range(4)} for i in range(n)})


def test_a_store_that_went_away_is_not_missing_objects(repo, tmp_path):
    src = _files(tmp_path, 1)
    repo("backup", src)
    pack = next(p for p in (repo.repo / "data").rglob("*") if p.is_file())
    name = pack.relative_to(repo.repo).as_posix()
    b = LocalBackend(repo.repo)
    os.unlink(pack)  # one pack lost from a store that is there: missing, as ever
    with pytest.raises(ObjectNotFound):
        b.get(name)
    os.rename(repo.repo, tmp_path / "elsewhere")  # the disk unmounted: an empty mount point is left
    repo.repo.mkdir()
    with pytest.raises(PermanentError, match="is gone"):
        b.get(name)
    with pytest.raises(ObjectNotFound):  # (config itself missing: "no repository here", exit 10, as before)
        b.get("config")


def test_restore_from_a_store_unmounted_mid_run_names_errors_not_damage(repo, tmp_path, monkeypatch):
    src = _files(tmp_path)
    repo("backup", src)
    real = LocalBackend.get_into
    gone = []

    def unmount_first(self, name, *args):
        if name.startswith("data/") and not gone:
            gone.append(name)
            os.rename(repo.repo, tmp_path / "unmounted")
            repo.repo.mkdir()
        return real(self, name, *args)

    monkeypatch.setattr(LocalBackend, "get_into", unmount_first)
    res = with_jobs(repo, "1", "restore", "latest", "--target", tmp_path / "out", ok=1)
    assert gone and "damaged" not in res.err and "error:" in res.err, res.err
    assert "is gone" in res.err


def test_a_pack_gone_between_listing_and_reading_is_reported_not_a_crash(repo, tmp_path, monkeypatch):
    src = _files(tmp_path, 2)
    repo("backup", src)
    real = LocalBackend.get

    def vanished(self, name, *args):
        if name.startswith("data/"):
            raise ObjectNotFound(f"{name} not found")
        return real(self, name, *args)

    monkeypatch.setattr(LocalBackend, "get", vanished)
    res = with_jobs(repo, "1", "verify", "--read-data", ok=20)
    assert "internal error" not in res.err and "not found" in res.out + res.err


def test_no_memory_for_the_key_derivation_is_not_a_wrong_password(repo, monkeypatch):
    def starved(*args):
        raise MemoryError()

    monkeypatch.setattr(keys, "derive_key", starved)
    res = repo("snapshots", ok=1)
    assert "not enough memory" in res.err and "wrong password" not in res.err, res.err


@pytest.mark.parametrize("exc, says", [(MemoryError(), "out of memory"),
                                       (OSError(12, "Cannot allocate memory"), "out of memory"),  # (mmap, fork)

                                       (RuntimeError("can't start new thread"), "cannot start a thread"),
                                       (RecursionError("maximum recursion depth"), "levels deep")])
def test_resource_exhaustion_is_one_line(repo, monkeypatch, exc, says):
    def fail(*args, **kw):
        raise exc

    monkeypatch.setattr(api, "list_snapshots", fail)
    res = repo("snapshots", ok=1)
    assert says in res.err and "internal error" not in res.err and len(res.err.splitlines()) == 1, res.err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_too_few_descriptors_fail_the_backup_instead_of_an_empty_snapshot(repo, tmp_path, jobs):
    src = _files(tmp_path, 40)
    before = sorted(os.listdir(repo.repo / "snapshots")) if (repo.repo / "snapshots").exists() else []

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    p = repo.proc("backup", src, env={"VAULT_JOBS": jobs}, preexec_fn=low_limit, timeout=120)
    if p.returncode == 0:
        pytest.skip("16 descriptors were enough here")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert b"ulimit -n" in p.stderr and b"Traceback" not in p.stderr, p.stderr
    after = sorted(os.listdir(repo.repo / "snapshots")) if (repo.repo / "snapshots").exists() else []
    assert after == before, "no snapshot missing the files not opened"


def test_a_failed_init_leaves_nothing_behind(cli, tmp_path, monkeypatch):
    real = LocalBackend.put

    def full(self, name, data, *a, **kw):
        if name == "config":
            raise PermanentError("disk full writing config")
        return real(self, name, data, *a, **kw)

    monkeypatch.setattr(LocalBackend, "put", full)
    cli("init", *FAST_INIT, ok=1)
    monkeypatch.undo()
    assert not [p for p in cli.repo.rglob("*") if p.is_file()], "the key slot went with the failed config"
    cli("init", *FAST_INIT)
    cli("snapshots")


def test_init_over_key_slots_without_config_says_what_it_is(repo):
    (repo.repo / "config").unlink()
    res = repo("init", *FAST_INIT, ok=1)
    assert "holds key slots but no config" in res.err and "vault repair" in res.err, res.err


def test_init_over_a_repository_that_lost_its_config_says_what_it_is(repo, tmp_path):
    """Not only an init cut short (keys/ alone): a repository with data that lost its config is named so too."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    repo("backup", str(tmp_path / "src"))
    (repo.repo / "config").unlink()
    res = repo("init", *FAST_INIT, ok=1)
    assert "holds key slots but no config" in res.err and "vault repair" in res.err, res.err
    (repo.repo / "config").parent.joinpath("keys").rename(repo.repo / "k2")
    assert "not empty and holds no repository" in repo("init", *FAST_INIT, ok=1).err


def test_running_out_of_descriptors_is_recognised_for_the_catalog_message():
    code = ("import resource, os\n"
            "from vault import catalog\n"
            "assert not catalog._out_of_descriptors()\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
            "held = []\n"
            "try:\n"
            "    while True: held.append(os.open(os.devnull, os.O_RDONLY))\n"
            "except OSError: pass\n"
            "assert catalog._out_of_descriptors()\n"
            "os.close(held.pop()); os.close(held.pop())\n"  # (two left: SQLite's WAL mode needs three at once)
            "assert catalog._out_of_descriptors()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_terminal_gone_ends_the_progress_line_not_the_backup(monkeypatch):
    import errno as errno_mod

    from vault.cli import progress

    class DeadTerminal:
        def write(self, text):
            raise OSError(errno_mod.EIO, "Input/output error")

        def flush(self):
            raise OSError(errno_mod.EIO, "Input/output error")

    dead = DeadTerminal()
    monkeypatch.setattr(sys, "stderr", dead)
    p = progress.BackupProgress(enabled=False, interval=0)
    p.enabled = True

    class Stats:
        files_new = files_changed = files_unmodified = dirs = bytes_processed = bytes_read = bytes_added = 0
        stored_so_far = 0

    p(Stats())  # (raised OSError: the backup failed as "internal error", exit 1)
    assert not p.enabled and sys.stderr is not dead
    p.done()


def test_a_hangup_whose_clean_up_meets_the_dead_terminal_is_still_129(repo, monkeypatch):
    import errno as errno_mod

    from vault.cli import main as main_mod

    def hung_up(*args, **kw):
        main_mod._terminated = 129  # (SIGHUP arrived; then writing to the terminal failed)
        raise OSError(errno_mod.EIO, "Input/output error")

    monkeypatch.setattr(api, "list_snapshots", hung_up)
    res = repo("snapshots", ok=129)
    assert "internal error" not in res.err


def test_a_repository_disk_out_of_inodes_is_not_called_full(cli, tmp_path):
    """ENOSPC with free blocks and no free inodes said "disk full", while df showed room."""
    with ext4(tmp_path / "disk", 32, inodes=64) as disk:
        cli("--repo", disk / "repo", "init", *FAST_INIT)
        n = 0
        try:
            while True:
                (disk / f"f{n}").touch()
                n += 1
        except OSError:
            pass
        res = cli("--repo", disk / "repo", "backup", make_tree(tmp_path / "src", {"a": b"x"}), ok=1)
        assert "no free inodes" in res.err and "df -i" in res.err, res.err


def test_the_file_size_limit_is_named(repo, tmp_path):
    """`ulimit -f`: a pack write fails with EFBIG ("File too large", no hint), the catalog with SQLite's "disk I/O
    error" and "check the cache directory and its disk"; both now name the limit."""
    src = make_tree(tmp_path / "src", {"big": os.urandom(3 * MiB)})
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d))\n"
            "from vault.cli.main import entry\n"
            "sys.argv = ['vault', 'backup', %r]\n"
            "entry()\n")
    for limit, cache in ((1 * MiB, repo.cache), (16_000, tmp_path / "new-cache")):  # (a pack; a new catalog)
        p = subprocess.run([sys.executable, "-c", code % (limit, limit, str(src))],
                           env={**os.environ, **repo.env(), "VAULT_CACHE_DIR": str(cache)}, capture_output=True,
                           text=True)
        assert p.returncode == 1 and "ulimit -f" in p.stderr and len(p.stderr.splitlines()) == 1, (limit, p.stderr)
        assert ("catalog" in p.stderr) == (cache != repo.cache), p.stderr


def test_a_restore_out_of_descriptors_stops_instead_of_restoring_nothing(repo, tmp_path, monkeypatch):
    """ulimit -n 12: every directory listing failed with "too many open files", each was named as an error and
    the restore went on to print "restored snapshot ...: 0 files" -- now it stops, one line, exit 1."""
    from vault.catalog import Catalog

    src = _files(tmp_path, 3)
    repo("backup", src)
    real, calls = Catalog.tree, []

    def out_of_fds(self, r, tid):
        calls.append(tid)
        if len(calls) > 2:
            try:
                raise OSError(24, "Too many open files")
            except OSError as err:
                raise PermanentError("too many open files reading data/xx in repo") from err
        return real(self, r, tid)

    monkeypatch.setattr(Catalog, "tree", out_of_fds)
    res = repo("restore", "latest", "--target", tmp_path / "r", ok=1)
    assert "too many open files" in res.err and "restored snapshot" not in res.out, (res.out, res.err)
    assert len(res.err.strip().splitlines()) == 1, res.err
