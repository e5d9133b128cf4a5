"""The local cache directory is private: vault never writes through what another user plants there, never leaves
file names readable by others, and says so in one line when the directory is not private."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import FAST_INIT, make_tree

NOBODY = 65534


def _catalog_dir(cache) -> "os.PathLike":
    return next(p for p in cache.iterdir() if p.is_dir())


def test_catalog_files_are_private(repo, tmp_path):
    """SQLite made catalog.db (and its -wal, -shm) 0644: the decrypted file names were readable by any local user
    wherever the directory above let them through."""
    old = os.umask(0)
    try:
        repo("backup", make_tree(tmp_path / "src", {"secret-name.txt": b"x"}))
    finally:
        os.umask(old)
    d = _catalog_dir(repo.cache)
    assert stat.S_IMODE(os.stat(repo.cache).st_mode) == 0o700
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p.name, oct(p.stat().st_mode))


def test_a_cache_directory_others_can_write_to_is_refused(repo, tmp_path):
    repo("backup", make_tree(tmp_path / "src", {"a": b"x"}))
    os.chmod(repo.cache, 0o777)
    res = repo("snapshots", ok=1)
    assert "other users can write to it" in res.err and "chmod 700" in res.err and res.err.count("\n") == 1
    os.chmod(repo.cache, 0o700)
    d = _catalog_dir(repo.cache)
    os.chown(d, NOBODY, NOBODY)
    res = repo("snapshots", ok=1)
    assert "belongs to another user" in res.err, res.err
    os.chown(d, 0, 0)
    repo("snapshots")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the attack is on a root vault)")
def test_a_root_vault_never_writes_through_another_users_symlinks(cli, tmp_path):
    """Another user who could write to the cache directory (a shared VAULT_CACHE_DIR they made first) planted
    symlinks where vault creates store.<pid>.tmp, key-slot, catalog.db and its locks: a root vault truncated and
    rewrote a root-only file through them, created files where it pointed, turned another program's database
    into a catalog."""
    cli("init", *FAST_INIT)
    victim = tmp_path / "rootonly" / "victim"
    victim.parent.mkdir(mode=0o700)
    victim.write_bytes(b"ROOT-ONLY")
    repo_id = json.loads((cli.repo / "config").read_bytes())["id"]
    shared = tmp_path / "shared"  # (made by the other user, writable by them)
    (shared / repo_id).mkdir(parents=True)
    for name in ("store", "key-slot", "catalog.db", "catalog.lock", "catalog.open.lock",
                 *[f"store.{pid}.tmp" for pid in range(os.getpid(), os.getpid() + 50)]):
        os.symlink(victim, shared / repo_id / name)
    for p in (shared, shared / repo_id):
        os.chown(p, NOBODY, NOBODY)
        os.chmod(p, 0o777)
    res = cli("--cache-dir", shared, "backup", make_tree(tmp_path / "src", {"a": b"x"}), ok=1)
    assert "cannot use the cache directory" in res.err, res.err
    assert victim.read_bytes() == b"ROOT-ONLY" and os.listdir(victim.parent) == ["victim"]
    # the same directory, taken over by root but with the symlinks left in it: never followed
    for p in (shared, shared / repo_id):
        os.chown(p, 0, 0)
        os.chmod(p, 0o700)
    cli("--cache-dir", shared, "snapshots", ok=False)
    assert victim.read_bytes() == b"ROOT-ONLY" and os.listdir(victim.parent) == ["victim"]


def test_no_core_dump_holds_the_keys(repo, tmp_path):
    """A crash that dumps core (a segfault in a C extension, SIGBUS, SIGABRT) wrote the master key and the
    password to disk: vault turns core dumps off for itself."""
    code = ("import resource, sys; from vault.cli import main; main._harden(); "
            "print(*resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0", out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_cache_below_a_directory_another_user_owns_is_fine_when_no_one_else_can_write(cli, tmp_path):
    """A container's root with its cache in a workspace a host user owns (0755): the owner above cannot write
    what vault writes below (its own 0700 directory), so it is not refused; a directory above that others can
    write to (not sticky) is."""
    cli("init", *FAST_INIT)
    ws = tmp_path / "workspace"
    ws.mkdir(mode=0o755)
    os.chown(ws, NOBODY, NOBODY)
    cli("--cache-dir", ws / "cache", "snapshots")
    os.chmod(ws, 0o777)
    res = cli("--cache-dir", ws / "cache", "snapshots", ok=1)
    assert "above it" in res.err and "other users can write to it" in res.err, res.err


def _grant_acl(d, uid: int) -> None:
    """POSIX ACL user:UID:rwx on directory ``d`` (setfacl's xattr; there may be no setfacl)."""
    import struct
    m = stat.S_IMODE(os.stat(d).st_mode)
    ents = [(1, (m >> 6) & 7, 0xFFFFFFFF), (2, 7, uid), (4, (m >> 3) & 7, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
            (0x20, m & 7, 0xFFFFFFFF)]
    os.setxattr(d, "system.posix_acl_access", struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in ents))


def test_an_acl_that_lets_another_user_write_is_refused(cli, tmp_path):
    """Mode 0770 of the user's own group passed, while an ACL (user:nobody:rwx) let another user plant files."""
    cli("init", *FAST_INIT)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    try:
        _grant_acl(cache, NOBODY)
    except OSError:
        pytest.skip("no POSIX ACLs here")
    res = cli("--cache-dir", cache, "snapshots", ok=1)
    assert "access control list" in res.err, res.err


def test_a_cache_directory_whose_path_is_not_utf8(cli, tmp_path):
    """The catalog's SQLite URI was quoted as UTF-8: a cache path with a byte like 0xff was an internal error."""
    cli("init", *FAST_INIT)
    cache = os.fsdecode(os.fsencode(str(tmp_path)) + b"/cache\xff")
    cli("--cache-dir", cache, "backup", make_tree(tmp_path / "src", {"a": b"x"}))
    assert len(cli("--cache-dir", cache, "--json", "snapshots").json) == 1
