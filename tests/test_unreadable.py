"""Unreadable source entries: the backup still writes a snapshot of everything else, names each unreadable path
on stderr, and exits 3.

Root reads everything, so as root the backup runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from
the capability bounding set before exec): it stays uid 0 -- the interpreter under /root stays reachable -- but
a mode-000 file or directory is then as unreadable to it as to any user."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import IS_ROOT, make_tree, run_unprivileged, scan

@pytest.fixture
def unreadable_tree(tmp_path):
    src = make_tree(tmp_path / "src", {
        "ok.txt": b"readable\n",
        "locked.bin": b"no one may read me" * 100,
        "lockeddir": {"inside.txt": b"hidden", "deeper": {"x": b"y"}},
        "sub": {"fine.bin": os.urandom(4000), "secret.key": b"k" * 64, "empty": {}},
        "zlast.txt": b"after the unreadable ones\n",
    })
    (src / "locked.bin").chmod(0)
    (src / "sub" / "secret.key").chmod(0)
    (src / "lockeddir").chmod(0)
    yield src
    for p in (src / "locked.bin", src / "sub" / "secret.key", src / "lockeddir"):
        p.chmod(0o700)


def test_unreadable_entries_exit_3(repo, unreadable_tree, tmp_path, restricted_ok):
    src = unreadable_tree
    # the repository and cache already exist (made by the fixture); the backup runs restricted
    p = run_unprivileged(["-m", "vault.cli.main", "--json", "backup", str(src)], {**os.environ, **repo.env()})
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 3, err
    assert "Traceback" not in err
    for bad in (src / "locked.bin", src / "sub" / "secret.key", src / "lockeddir"):
        assert any(str(bad) in line for line in err.splitlines()), f"{bad} not named in stderr:\n{err}"
    for good in ("ok.txt", "fine.bin", "zlast.txt"):
        assert not any(line.endswith(good) or f"{good}:" in line for line in err.splitlines()), err
    out = json.loads(p.stdout)
    assert out["snapshot_id"]
    assert {e["path"] for e in out["errors"]} == {str(src / "locked.bin"), str(src / "sub" / "secret.key"),
                                                  str(src / "lockeddir")}
    assert out["files_new"] == 3

    snaps = repo("--json", "snapshots").json
    assert [s["id"] for s in snaps] == [out["snapshot_id"]]
    target = tmp_path / "r"
    repo("restore", "latest", "--target", target)
    restored = scan(target / src.relative_to("/"))
    (src / "lockeddir").chmod(0o700)  # so the comparison can look inside (as root it could anyway)
    source = scan(src)
    skipped = {b"locked.bin", b"sub/secret.key"}
    below_locked = {k for k in source if k.startswith(b"lockeddir/")}
    expect = {k: v for k, v in source.items() if k not in skipped and k not in below_locked}
    assert set(restored) - {b"lockeddir"} == set(expect) - {b"lockeddir"}
    for k in set(expect) - {b"lockeddir"}:
        assert restored[k] == expect[k], k
    # nothing from inside the unreadable directory and no trace of the unreadable files
    assert not any(k.startswith(b"lockeddir/") for k in restored)


def test_unreadable_text_output_and_quiet(repo, unreadable_tree, restricted_ok):
    src = unreadable_tree
    env = {**os.environ, **repo.env()}
    p = run_unprivileged(["-m", "vault.cli.main", "backup", str(src)], env)
    assert p.returncode == 3
    err = p.stderr.decode()
    assert err.splitlines()[-1].startswith("vault:"), err
    # -q: still exit 3 and still every unreadable path named (cron must mail this), nothing on stdout
    p = run_unprivileged(["-m", "vault.cli.main", "-q", "backup", str(src)], env)
    assert p.returncode == 3
    assert p.stdout == b""
    err = p.stderr.decode()
    assert str(src / "locked.bin") in err and str(src / "lockeddir") in err


def test_incremental_after_unreadable_becomes_readable(repo, unreadable_tree, tmp_path, restricted_ok):
    src = unreadable_tree
    env = {**os.environ, **repo.env()}
    assert run_unprivileged(["-m", "vault.cli.main", "backup", str(src)], env).returncode == 3
    for p in (src / "locked.bin", src / "sub" / "secret.key", src / "lockeddir"):
        p.chmod(0o700)
    p = run_unprivileged(["-m", "vault.cli.main", "--json", "backup", str(src)], env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    # the two files and the directory's contents were not in the parent: they are new now
    assert out["files_new"] == 4 and out["errors"] == []
    target = tmp_path / "r"
    repo("restore", "latest", "--target", target)
    assert (target / src.relative_to("/") / "lockeddir" / "deeper" / "x").read_bytes() == b"y"
    assert (target / src.relative_to("/") / "locked.bin").read_bytes() == b"no one may read me" * 100


def test_only_path_unreadable(repo, tmp_path, restricted_ok):
    """A single source file that cannot be read: a snapshot (of nothing readable) or a clear failure -- never
    exit 0, never a traceback."""
    f = tmp_path / "only.bin"
    f.write_bytes(b"data")
    f.chmod(0)
    try:
        p = run_unprivileged(["-m", "vault.cli.main", "backup", str(f)], {**os.environ, **repo.env()})
    finally:
        f.chmod(0o600)
    err = p.stderr.decode()
    assert p.returncode in (1, 3), err
    assert "Traceback" not in err and str(f) in err


def test_one_of_two_paths_unreadable(repo, tmp_path, restricted_ok):
    """`vault backup /etc /root` from cron, with /root unreadable: /etc must still be backed up (exit 3)."""
    good = make_tree(tmp_path / "good", {"a": b"1", "d": {"b": b"2"}})
    bad = make_tree(tmp_path / "bad", {"c": b"3"})
    bad.chmod(0)
    try:
        p = run_unprivileged(["-m", "vault.cli.main", "--json", "backup", str(good), str(bad)],
                             {**os.environ, **repo.env()})
    finally:
        bad.chmod(0o700)
    err = p.stderr.decode()
    assert p.returncode == 3, err
    assert str(bad) in err and "Traceback" not in err
    assert json.loads(p.stdout)["files_new"] == 2
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / good.relative_to("/") / "d" / "b").read_bytes() == b"2"


def test_file_changing_while_read_is_a_warning(repo, tmp_path, monkeypatch):
    """Made deterministic by appending to the file from inside the backup's read (in-process; a worker
    process is a fork, so it reads with the patched method too)."""
    from vault import filereader

    src = make_tree(tmp_path / "src", {"growing.log": b"line\n" * 100, "steady.txt": b"same\n"})
    real = filereader.FileReader._read_small

    def read_and_grow(self, fd: int, expected: int):
        data = real(self, fd, expected)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("growing.log"):
            with open(path, "ab") as f:
                f.write(b"appended while vault was reading\n")
        return data

    monkeypatch.setattr(filereader.FileReader, "_read_small", read_and_grow)
    res = repo("--json", "backup", src, ok=False)
    assert res.code in (0, 3), res.err
    out = json.loads(res.out)
    assert out["snapshot_id"]
    assert [w["path"] for w in out["warnings"]] == [str(src / "growing.log")]
    assert str(src / "growing.log") in res.err and "steady.txt" not in res.err
    # the next backup sees a changed file (it must not trust the metadata recorded mid-change)
    monkeypatch.setattr(filereader.FileReader, "_read_small", real)
    out = repo("--json", "backup", src).json
    assert out["files_changed"] == 1 and out["files_unmodified"] == 1


@pytest.mark.skipif(not IS_ROOT or not os.path.exists("/usr/bin/setpriv"), reason="needs root and setpriv")
def test_a_second_restore_without_privileges_fills_its_read_only_directories_again(tmp_path):
    """Restore (as root without CAP_DAC_OVERRIDE: as a user would) a snapshot holding 0555 and 0000 directories
    with content, then again into the same target, where the first restore left them read-only. The second run
    must succeed too (it was 'damaged ... Permission denied', exit 20: a local failure reported as repository
    damage)."""
    src = make_tree(tmp_path / "src", {"dro": {"f": b"1"}, "d000": {"g": b"2", "sub": {"h": b"3"}}})
    os.chmod(src / "dro", 0o555)
    os.chmod(src / "d000", 0o000)
    env = {**os.environ, "VAULT_REPOSITORY": str(tmp_path / "repo"), "VAULT_PASSWORD": "pw",
           "VAULT_CACHE_DIR": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "vault.cli.main", "-q"]
    subprocess.run(run + ["init", "--kdf-memory", "8", "--kdf-iterations", "1"], env=env, check=True)
    subprocess.run(run + ["backup", str(src)], env=env, check=True)
    caps = "-dac_override,-dac_read_search,-fowner"
    unprivileged = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    target = tmp_path / "target"
    try:
        for attempt in (1, 2):
            p = subprocess.run(unprivileged + run + ["restore", "latest", "--target", str(target)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert p.returncode == 0, (attempt, p.stderr)
        restored = target / str(src).lstrip("/")
        assert oct(os.stat(restored / "dro").st_mode & 0o7777) == oct(0o555)
        assert oct(os.stat(restored / "d000").st_mode & 0o7777) == oct(0o000)
        assert (restored / "d000" / "sub" / "h").read_bytes() == b"3"
    finally:
        for dirpath, dirnames, _ in os.walk(tmp_path):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o700)


def test_a_restore_onto_a_full_disk_is_an_error_not_damage(repo, tmp_path):
    """A write that fails in the target (a full disk) is the target's problem: exit 1 with the file named,
    never exit 20, which says the repository's data is damaged."""
    from conftest import tmpfs

    src = make_tree(tmp_path / "src", {"big": os.urandom(3 << 20), "small": b"s"})
    repo("backup", src)
    with tmpfs(tmp_path / "full", "1m") as target:
        r = repo("restore", "latest", "--target", target, ok=1)
        assert "damaged" not in r.err and "big" in r.err, r.err
