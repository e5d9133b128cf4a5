"""Round trips of tricky trees: names, links, modes, mtimes, sparse files, ownership; snapshot selection
(id, prefix, latest, --at), restore filters, restoring into a non-empty target; ls, diff and find."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import Hardlink, Symlink, assert_trees_equal, make_tree, scan

MiB = 1024 * 1024
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NON_UTF8 = b"caf\xe9"
LONG_NAME = b"L" * 251 + b".txt"  # 255 bytes
DEEP = 60


def restored(target: Path, src: Path) -> Path:
    """Where a source tree lands under a restore target (target + absolute source path)."""
    return Path(target) / Path(src).relative_to("/")


def deep_spec(levels: int) -> dict:
    spec: dict = {"bottom.txt": b"the deepest file\n"}
    for i in reversed(range(levels)):
        spec = {f"d{i:02d}": spec}
    return spec


def tricky_spec() -> dict:
    return {
        "plain.txt": b"hello\n",
        "empty": b"",
        "caf\u00e9.txt": "é".encode() * 100,
        "日本": {"語.txt": "日本語\n".encode(), "empty-sub": {}},
        "emoji \U0001f600 ✓": b"smile",
        NON_UTF8: b"latin-1 name\n",
        b"dir-" + NON_UTF8: {b"inner-" + NON_UTF8: b"x" * 1000},
        LONG_NAME: b"long name\n",
        b"spaces and\ttab\nnewline": b"odd",
        "deep": deep_spec(DEEP),
        "empty-dir": {},
        "modes": {"m0600": b"a", "m0755": b"b", "m0700": b"c", "m0644": b"d", "suid": b"e",
                  "ro-dir": {"inside": b"in a 0500 dir"}},
        "big.bin": os.urandom(3 * MiB + 12345),
        "links": {
            "rel": Symlink("../plain.txt"),
            "abs": Symlink("/etc/hostname"),
            "dangling": Symlink("does/not/exist"),
            "to-dir": Symlink("../日本"),
            "non-utf8-target": Symlink(os.fsdecode(b"../" + NON_UTF8)),
        },
        "hard1": Hardlink("plain.txt"),
        "hard2": Hardlink("plain.txt"),
        "hard-big": Hardlink("big.bin"),
        "hard-empty": Hardlink("empty"),
    }


def set_modes_and_times(src: Path) -> None:
    m = src / "modes"
    for name, mode in (("m0600", 0o600), ("m0755", 0o755), ("m0700", 0o700), ("m0644", 0o644),
                       ("suid", 0o4755)):
        os.chmod(m / name, mode)
    os.chmod(m / "ro-dir", 0o500)
    # distinct mtimes for every directory (deepest first, since touching a child changes its parent)
    dirs = []
    for dirpath, dirnames, _ in os.walk(os.fsencode(src)):
        dirs += [os.path.join(dirpath, d) for d in dirnames]
    dirs.sort(key=lambda d: d.count(b"/"), reverse=True)
    for i, d in enumerate(dirs):
        t = 1_600_000_000_000_000_000 + i * 1_000_000_007
        os.utime(d, ns=(t, t), follow_symlinks=False)
    # symlinks get their own mtimes too
    for name in ("rel", "abs", "dangling", "to-dir"):
        os.utime(src / "links" / name, ns=(1_500_000_000_111_111_111, 1_500_000_000_111_111_111),
                 follow_symlinks=False)
    os.utime(src, ns=(1_650_000_000_987_654_321, 1_650_000_000_987_654_321))


@pytest.fixture
def tricky(tmp_path) -> Path:
    src = make_tree(tmp_path / "src", tricky_spec())
    set_modes_and_times(src)
    return src


@pytest.mark.parametrize("jobs", [[], ["--jobs", "1"], ["--jobs", "3"]], ids=["default", "threads", "3-processes"])
def test_tricky_tree_round_trip(repo, tmp_path, tricky, jobs):
    """Default: two worker processes write the files (forkpool); --jobs 1: threads of one process."""
    out = repo("--json", "backup", tricky).json
    assert out["snapshot_id"]
    r = tmp_path / "r"
    repo(*jobs, "restore", "latest", "--target", r)
    dst = restored(r, tricky)
    assert_trees_equal(tricky, dst)
    # the root of the backed-up tree keeps its metadata too
    assert os.stat(dst).st_mtime_ns == os.stat(tricky).st_mtime_ns
    # explicit spot checks (scan() compares these, but a failure here reads better)
    m = dst / "modes"
    for name, mode in (("m0600", 0o600), ("m0755", 0o755), ("m0700", 0o700), ("m0644", 0o644),
                       ("suid", 0o4755)):
        assert stat.S_IMODE(os.lstat(m / name).st_mode) == mode, name
    assert stat.S_IMODE(os.lstat(m / "ro-dir").st_mode) == 0o500
    assert (m / "ro-dir" / "inside").read_bytes() == b"in a 0500 dir"
    assert os.path.exists(os.path.join(os.fsencode(dst), NON_UTF8))
    assert os.path.exists(os.path.join(os.fsencode(dst), LONG_NAME))
    deep = dst / "deep" / Path(*[f"d{i:02d}" for i in range(DEEP)]) / "bottom.txt"
    assert deep.read_bytes() == b"the deepest file\n"
    # hardlinks: one inode, link count kept
    ino = {os.lstat(dst / n).st_ino for n in ("plain.txt", "hard1", "hard2")}
    assert len(ino) == 1 and os.lstat(dst / "plain.txt").st_nlink == 3
    assert os.lstat(dst / "big.bin").st_ino == os.lstat(dst / "hard-big").st_ino
    # symlinks: targets verbatim (never resolved), mtimes kept
    links = dst / "links"
    assert os.readlink(links / "rel") == "../plain.txt"
    assert os.readlink(links / "abs") == "/etc/hostname"
    assert os.readlink(links / "dangling") == "does/not/exist"
    assert os.readlink(os.fsencode(links / "non-utf8-target")) == b"../" + NON_UTF8
    assert os.path.islink(links / "to-dir") and os.path.isdir(links / "to-dir")
    for name in ("rel", "abs", "dangling", "to-dir"):
        assert os.lstat(links / name).st_mtime_ns == 1_500_000_000_111_111_111, name
    # no temp files left behind
    leftovers = [p for p in scan(r) if b".vault-" in p]
    assert not leftovers


def test_restore_twice_into_same_target(repo, tmp_path, tricky):
    repo("backup", tricky)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    repo("restore", "latest", "--target", r)
    assert_trees_equal(tricky, restored(r, tricky))
    assert not [p for p in scan(r) if b".vault-" in p]


def test_sparse_file_stays_sparse(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "sparse.img"
    data = os.urandom(4096)
    with open(f, "wb") as fh:
        fh.truncate(100 * MiB)
        fh.seek(50 * MiB + 1234)
        fh.write(data)
    os.utime(f, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    assert os.stat(f).st_blocks * 512 < 1 * MiB, "the test filesystem does not support sparse files"
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    g = restored(r, src) / "sparse.img"
    st = os.stat(g)
    assert st.st_size == 100 * MiB
    # the 4 KiB of data sit in a chunk of up to 8 MiB of zeros: only the 64 KiB pieces holding data are written
    assert st.st_blocks * 512 <= 256 * 1024, f"restored sparse file allocates {st.st_blocks * 512} bytes"
    with open(g, "rb") as fh:
        h = hashlib.sha256()
        while b := fh.read(8 * MiB):
            h.update(b)
    with open(f, "rb") as fh:
        h2 = hashlib.sha256()
        while b := fh.read(8 * MiB):
            h2.update(b)
    assert h.hexdigest() == h2.hexdigest()
    with open(g, "rb") as fh:
        fh.seek(50 * MiB + 1234)
        assert fh.read(4096) == data
    assert st.st_mtime_ns == 1_700_000_000_000_000_001


@pytest.mark.skipif(not IS_ROOT, reason="ownership is restored only when running as root")
def test_ownership_restored_as_root(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"owned": b"x", "link": Symlink("owned"), "d": {"f": b"y"}, "suid": b"s"})
    os.chown(src / "owned", 1234, 5678)
    os.chown(src / "suid", 1234, 5678)
    os.chmod(src / "suid", 0o6755)
    os.lchown(src / "link", 4321, 8765)
    os.chown(src / "d", 1111, 2222)
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    dst = restored(r, src)
    st = os.lstat(dst / "owned")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.lstat(dst / "link")
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    st = os.lstat(dst / "d")
    assert (st.st_uid, st.st_gid) == (1111, 2222)
    st = os.lstat(dst / "d" / "f")
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.lstat(dst / "suid")  # chown clears set-id bits: the mode must be applied after the owner
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o6755)


# --- choosing the snapshot --------------------------------------------------------------------------------
@pytest.fixture
def history(repo, tmp_path):
    """Snapshots of one tree at fixed times, each with different content of version.txt."""
    src = make_tree(tmp_path / "src", {"version.txt": b"v1", "keep": b"same"})
    times = ["2024-01-01T10:00:00Z", "2024-01-02T10:00:00.123456Z", "2024-01-03T10:00:00Z"]
    ids = []
    for i, t in enumerate(times, 1):
        (src / "version.txt").write_bytes(f"v{i}".encode())
        ids.append(repo("--json", "backup", src, "--time", t).json["snapshot_id"])
    return src, ids


def restore_version(repo, tmp_path, src, *args) -> tuple[str, str]:
    target = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
    out = repo("--json", "restore", *args, "--target", target).json
    return out["snapshot_id"], (restored(target, src) / "version.txt").read_text()


def test_restore_by_id_prefix_and_latest(repo, tmp_path, history):
    src, ids = history
    snaps = repo("--json", "snapshots").json
    assert [s["id"] for s in snaps] == ids
    for s in snaps:
        assert s["id"].startswith(s["short_id"])
    assert restore_version(repo, tmp_path, src, ids[0]) == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, ids[1][:6]) == (ids[1], "v2")
    assert restore_version(repo, tmp_path, src, snaps[0]["short_id"]) == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, "latest") == (ids[2], "v3")


def test_restore_at_exact_time_string(repo, tmp_path, history):
    src, ids = history
    snaps = repo("--json", "snapshots").json
    assert snaps[1]["time"] == "2024-01-02T10:00:00.123456Z"
    for s, want in zip(snaps, ("v1", "v2", "v3")):
        assert restore_version(repo, tmp_path, src, "--at", s["time"]) == (s["id"], want)
    # one microsecond before the second snapshot: the first one
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T10:00:00.123455Z") == (ids[0], "v1")


def test_restore_at_between_snapshots_picks_older(repo, tmp_path, history):
    src, ids = history
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T00:00:00Z") == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T23:59:59Z") == (ids[1], "v2")
    assert restore_version(repo, tmp_path, src, "--at", "2030-01-01T00:00:00Z") == (ids[2], "v3")
    res = repo("restore", "--at", "2023-12-31T00:00:00Z", "--target", tmp_path / "none", ok=False)
    assert res.code != 0 and "Traceback" not in res.err


def test_restore_as_it_was_last_tuesday_at_ten(repo, tmp_path):
    """The mission's own words: `--at 'last tuesday 10:00'` (local time), with snapshots taken that morning
    (their times given as `--time` takes them too)."""
    src = make_tree(tmp_path / "src", {"version.txt": b"v1"})
    ids = []
    for i, when in enumerate(["last tuesday 09:00", "last tue at 10:00:40", "last tuesday 10:01", "today"], 1):
        (src / "version.txt").write_bytes(f"v{i}".encode())
        ids.append(repo("--json", "backup", src, "--time", when).json["snapshot_id"])
    assert restore_version(repo, tmp_path, src, "--at", "last tuesday 9:59") == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, "--at", "last tuesday 10:00") == (ids[1], "v2")  # (all that minute)
    assert restore_version(repo, tmp_path, src, "--at", "10am last tuesday") == (ids[0], "v1")  # (its first instant)
    assert restore_version(repo, tmp_path, src, "--at", "Last Tuesday at 11:00") == (ids[2], "v3")


def test_restore_at_with_offset(repo, tmp_path, history):
    src, ids = history
    # 2024-01-02T12:00:00+02:00 is 10:00:00Z; given to the second it stands for all of that second, so it
    # takes the snapshot at 10:00:00.123456Z (as the text output shows it: 10:00:00); with a fraction it is exact
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T11:59:59+02:00") == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T12:00:00.1+02:00") == (ids[0], "v1")
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T12:00:00+02:00") == (ids[1], "v2")
    # a negative offset: 2024-01-03T05:00:00-05:00 = 10:00Z exactly -> third snapshot
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-03T05:00:00-05:00") == (ids[2], "v3")
    assert restore_version(repo, tmp_path, src, "--at", "2024-01-03T04:59:59-05:00") == (ids[1], "v2")


def test_restore_at_naive_time_is_local(repo, tmp_path, history, monkeypatch):
    import time

    monkeypatch.setenv("TZ", "UTC-03:00")  # POSIX: three hours east of UTC, no DST
    time.tzset()
    src, ids = history
    try:
        # 12:59:59 local = 09:59:59Z, before the second snapshot (10:00:00.123456Z); 13:00:00 covers it
        assert restore_version(repo, tmp_path, src, "--at", "2024-01-02T12:59:59") == (ids[0], "v1")
        assert restore_version(repo, tmp_path, src, "--at", "2024-01-02 13:00:00") == (ids[1], "v2")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_restore_at_days_ago(repo, tmp_path, history):
    src, ids = history
    ten_days_ago = (datetime.now(timezone.utc) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (src / "version.txt").write_bytes(b"v4")
    old = repo("--json", "backup", src, "--time", ten_days_ago).json["snapshot_id"]
    (src / "version.txt").write_bytes(b"v5")
    now = repo("--json", "backup", src).json["snapshot_id"]
    assert restore_version(repo, tmp_path, src, "--at", "5 days ago") == (old, "v4")
    assert restore_version(repo, tmp_path, src, "--at", "1 day ago") == (old, "v4")
    assert restore_version(repo, tmp_path, src, "--at", "2 weeks ago")[0] == ids[2]
    assert restore_version(repo, tmp_path, src, "--at", "1 hour ago") == (old, "v4")
    assert restore_version(repo, tmp_path, src, "latest") == (now, "v5")


# --- restore filters and non-empty targets -----------------------------------------------------------------
FILTER_SPEC = {
    "a.txt": b"a", "a.log": b"alog",
    "sub": {"b.txt": b"b", "b.log": b"blog", "deeper": {"c.txt": b"c", "c.log": b"clog", "c.bin": b"cbin"}},
    "other": {"d.bin": b"d"},
}


def files_under(root: Path) -> set[str]:
    out = set()
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def test_restore_include_glob_any_depth(repo, tmp_path):
    src = make_tree(tmp_path / "src", FILTER_SPEC)
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r, "--include", "*.txt")
    assert files_under(restored(r, src)) == {"a.txt", "sub/b.txt", "sub/deeper/c.txt"}
    assert (restored(r, src) / "sub/deeper/c.txt").read_bytes() == b"c"


def dirs_under(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, names, _ in os.walk(root) for n in names}


@pytest.mark.parametrize("pattern", ["c.txt", "*/deeper/c.txt", "**/c.txt", "FULL", "nomatch"])
def test_restore_include_creates_only_the_directories_above_what_it_matches(repo, tmp_path, pattern):
    """--include restores the matching paths and the directories above them, not the rest of the tree's
    skeleton (other/ and empty/ hold nothing that matches). The directories above get their metadata."""
    src = make_tree(tmp_path / "src", {**FILTER_SPEC, "empty": {}})
    os.utime(src / "sub", ns=(1_500_000_000_000_000_000,) * 2)
    repo("backup", src)
    r = tmp_path / "r"
    pattern = str(src / "sub" / "deeper" / "c.txt") if pattern == "FULL" else pattern
    out = repo("--json", "restore", "latest", "--target", r, "--include", pattern).json
    if pattern == "nomatch":
        assert out["files"] == 0 and out["dirs"] == 0
        assert not r.exists() or not any(r.iterdir())
        return
    assert files_under(restored(r, src)) == {"sub/deeper/c.txt"}
    assert dirs_under(restored(r, src)) == {"sub", "sub/deeper"}
    assert out["dirs"] == len(src.parts) - 1 + 2  # the directories from / down to src, then sub, sub/deeper
    assert os.stat(restored(r, src) / "sub").st_mtime_ns == 1_500_000_000_000_000_000


def test_restore_exclude_glob_any_depth(repo, tmp_path):
    src = make_tree(tmp_path / "src", FILTER_SPEC)
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r, "--exclude", "*.log")
    assert files_under(restored(r, src)) == {"a.txt", "sub/b.txt", "sub/deeper/c.txt", "sub/deeper/c.bin",
                                             "other/d.bin"}


def test_restore_include_directory_and_exclude_combined(repo, tmp_path):
    src = make_tree(tmp_path / "src", FILTER_SPEC)
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r, "--include", str(src / "sub"), "--exclude", "*.bin")
    assert files_under(restored(r, src)) == {"sub/b.txt", "sub/b.log", "sub/deeper/c.txt", "sub/deeper/c.log"}
    r2 = tmp_path / "r2"
    repo("restore", "latest", "--target", r2, "--exclude", "deeper")
    assert files_under(restored(r2, src)) == {"a.txt", "a.log", "sub/b.txt", "sub/b.log", "other/d.bin"}


def test_restore_into_non_empty_target(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"in-snap.txt": b"snapshot content", "d": {"also.txt": b"also"}})
    repo("backup", src)
    r = tmp_path / "r"
    dst = restored(r, src)
    make_tree(dst, {"in-snap.txt": b"local edits that are longer than the snapshot's",
                    "not-in-snap.txt": b"mine", "d": {"also.txt": b"x", "mine.txt": b"mine too"}},
              mtime_ns=1_234_567_890_123_456_789)
    before = os.stat(dst / "not-in-snap.txt")
    repo("restore", "latest", "--target", r)
    assert (dst / "in-snap.txt").read_bytes() == b"snapshot content"
    assert (dst / "d" / "also.txt").read_bytes() == b"also"
    assert os.stat(dst / "in-snap.txt").st_mtime_ns == os.stat(src / "in-snap.txt").st_mtime_ns
    assert (dst / "not-in-snap.txt").read_bytes() == b"mine"
    assert (dst / "d" / "mine.txt").read_bytes() == b"mine too"
    after = os.stat(dst / "not-in-snap.txt")
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (before.st_ino, before.st_mtime_ns, before.st_mode)


def test_restore_conflicting_types_in_target(repo, tmp_path):
    """Where the target holds a directory in place of a snapshot file (or a file in place of a snapshot
    directory), it is kept and named; everything else is restored."""
    src = make_tree(tmp_path / "src", {"f": b"file in snapshot", "d": {"inner": b"i"}, "ok": b"fine", "e": b"e"})
    repo("backup", src)
    r = tmp_path / "r"
    dst = restored(r, src)
    make_tree(dst, {"f": {"mine": b"local dir where the snapshot has a file"}, "d": b"local file", "e": {}})
    res = repo("restore", "latest", "--target", r, ok=False)
    assert "Traceback" not in res.err
    assert (dst / "f" / "mine").read_bytes() == b"local dir where the snapshot has a file"
    assert (dst / "d").read_bytes() == b"local file"
    assert (dst / "ok").read_bytes() == b"fine"
    both = res.out + res.err
    assert f"{src}/f" in both and f"{src}/d" in both and f"{src}/e" in both, both
    assert (dst / "e").is_dir() and not any((dst / "e").iterdir())  # an empty directory is not replaced either
    assert not [p for p in scan(r) if b".vault-" in p]


@pytest.mark.parametrize("blocked", ["a", "b"])
def test_hardlinks_are_restored_when_one_name_is_blocked(repo, tmp_path, blocked):
    """A directory in the target where the snapshot has one name of a hardlinked file: that name is kept and
    named, and the file's other names are restored, linked to each other -- whichever name is blocked,
    including the one restored first."""
    src = make_tree(tmp_path / "src", {"a": b"linked data", "b": Hardlink("a"), "d": {"c": Hardlink("a")}})
    repo("backup", src)
    r = tmp_path / "r"
    dst = restored(r, src)
    make_tree(dst, {blocked: {"mine": b"local"}})
    res = repo("restore", "latest", "--target", r, ok=False)
    assert res.code == 1 and f"{src}/{blocked}" in res.err and "Traceback" not in res.err
    assert (dst / blocked / "mine").read_bytes() == b"local"
    others = [dst / n for n in ("a", "b", "d/c") if n != blocked]
    assert [p.read_bytes() for p in others] == [b"linked data"] * 2
    assert os.stat(others[0]).st_ino == os.stat(others[1]).st_ino and os.stat(others[0]).st_nlink == 2
    assert os.stat(others[0]).st_mtime_ns == os.stat(src / "a").st_mtime_ns
    assert not [p for p in scan(r) if b".vault-" in p]


def test_hardlinks_all_blocked_leave_no_temp_file(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"linked data", "b": Hardlink("a")})
    repo("backup", src)
    r = tmp_path / "r"
    make_tree(restored(r, src), {"a": {}, "b": {}})
    res = repo("restore", "latest", "--target", r, ok=False)
    assert f"{src}/a" in res.err and f"{src}/b" in res.err
    assert not [p for p in scan(r) if b".vault-" in p]


@pytest.mark.parametrize("other", ["outside", "excluded"])
def test_a_blocked_hardlink_whose_other_names_are_not_restored_leaves_no_temp_file(repo, tmp_path, other):
    """The kept temp file of a blocked hardlinked file is removed when no other name of it is restored (the
    other name is outside the backed-up paths, or excluded)."""
    src = make_tree(tmp_path / "src", {"a": b"linked data"})
    if other == "outside":
        os.link(src / "a", tmp_path / "outside")
    else:
        os.link(src / "a", src / "b")
    repo("backup", src)
    r = tmp_path / "r"
    make_tree(restored(r, src), {"a": {"mine": b"x"}})
    extra = ("--exclude", str(src / "b")) if other == "excluded" else ()
    res = repo("restore", "latest", "--target", r, *extra, ok=1)
    assert f"{src}/a" in res.err
    assert not [p for p in scan(r) if b".vault-" in p]


@contextlib.contextmanager
def deep_tree(root: Path, levels: int, also: tuple[Path, ...] = ()):
    """root/d/d/.../d (``levels`` deep), made in a loop (os.makedirs recurses once per level) and removed, with
    ``also`` (a restore of it), by ``rm -rf`` afterwards (pytest's own clean-up, a recursive rmtree, cannot
    remove it). Yields the deepest directory as bytes."""
    deep = bytes(root)
    os.mkdir(deep)
    for _ in range(levels):
        deep += b"/d"
        os.mkdir(deep)
    try:
        yield deep
    finally:
        subprocess.run(["rm", "-rf", str(root), *map(str, also)], check=False)


def test_restore_include_below_deep_nesting(repo, tmp_path):
    """The directories above an --include match are made in a loop, not by recursion: 1,100 levels restore
    in a process with Python's default recursion limit."""
    r = tmp_path / "r"
    with deep_tree(tmp_path / "s", 1100, also=(r,)) as deep:
        with open(deep + b"/leaf.txt", "wb") as f:
            f.write(b"x")
        repo("backup", tmp_path / "s")
        p = repo.proc("restore", "latest", "--target", r, "--include", "**/leaf.txt")
        assert p.returncode == 0, p.stderr.decode()[-500:]
        with open(bytes(r) + deep + b"/leaf.txt", "rb") as f:
            assert f.read() == b"x"


# --- ls / diff / find ----------------------------------------------------------------------------------------
def test_ls_lists_everything_recursively(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"1", "d": {"b": b"2", "e": {"c": b"3", "empty": {}}},
                                       "l": Symlink("a")})
    repo("backup", src)
    s = str(src)
    all_paths = {s, f"{s}/a", f"{s}/d", f"{s}/d/b", f"{s}/d/e", f"{s}/d/e/c", f"{s}/d/e/empty", f"{s}/l"}
    out = repo("--json", "ls", "latest").json
    paths = {e["path"] for e in out["entries"]}
    assert all_paths <= paths
    # the ancestors of the source path are in the snapshot too, nothing else
    assert paths - all_paths == {str(p) for p in src.parents if str(p) != "/"}
    below = repo("--json", "ls", "latest", f"{s}/d").json["entries"]
    assert {e["path"] for e in below} == {f"{s}/d", f"{s}/d/b", f"{s}/d/e", f"{s}/d/e/c", f"{s}/d/e/empty"}
    types = {e["path"]: e["type"] for e in below}
    assert types[f"{s}/d/e/c"] == "file" and types[f"{s}/d/e/empty"] == "dir"
    text = repo("ls", "latest", f"{s}/d/").out.splitlines()
    assert sorted(text) == sorted(e["path"] for e in below)
    res = repo("ls", "latest", f"{s}/nope", ok=False)
    assert res.code != 0 and "Traceback" not in res.err
    old = os.getcwd()
    os.chdir(src)
    try:  # a relative PATH is relative to the working directory, as for backup
        assert {e["path"] for e in repo("--json", "ls", "latest", "d").json["entries"]} == {e["path"] for e in below}
    finally:
        os.chdir(old)


def test_ls_tricky_names(repo, tmp_path, tricky):
    """Every name the filesystem accepts is listed, in text and JSON, by a real process (stdout a pipe)."""
    repo("backup", tricky)
    root = os.fsencode(tricky)
    expected = {root} | {root + b"/" + p for p in scan(tricky)}
    res = repo.proc("ls", "latest", tricky)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    lines = set(res.stdout.split(b"\n"))
    one_line = {p for p in expected if b"\n" not in p}
    assert one_line - lines == set(), "entries missing from 'vault ls' output"
    assert os.path.join(root, NON_UTF8) in lines
    resj = repo.proc("--json", "ls", "latest", tricky)
    assert resj.returncode == 0, resj.stderr.decode(errors="replace")
    try:
        text = resj.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        pytest.fail(f"'vault --json ls' wrote invalid UTF-8 (JSON must be UTF-8; a non-UTF-8 name needs an "
                    f"escaped or base64 form): {exc}")
    entries = json.loads(text)["entries"]
    assert len(entries) == len(expected)
    # each path recovers its exact bytes (surrogate-escaped in "path", or base64 in "path_b64" if given)
    got = {base64.b64decode(e["path_b64"]) if "path_b64" in e else os.fsencode(e["path"]) for e in entries}
    assert got == expected


def test_diff_reports_added_removed_modified(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"same": b"s", "mod": b"old", "gone": b"g",
                                       "d": {"x": b"x", "gone-dir": {"y": b"y"}}})
    a = repo("--json", "backup", src).json["snapshot_id"]
    (src / "mod").write_bytes(b"new content")
    (src / "gone").unlink()
    (src / "d" / "gone-dir" / "y").unlink()
    (src / "d" / "gone-dir").rmdir()
    (src / "new").write_bytes(b"n")
    (src / "d" / "new-dir").mkdir()
    (src / "d" / "new-dir" / "z").write_bytes(b"z")
    b = repo("--json", "backup", src).json["snapshot_id"]
    out = repo("--json", "diff", a, b).json
    s = str(src)
    assert set(out["added"]) == {f"{s}/new", f"{s}/d/new-dir", f"{s}/d/new-dir/z"}
    assert set(out["removed"]) == {f"{s}/gone", f"{s}/d/gone-dir", f"{s}/d/gone-dir/y"}
    # and the directories whose listing changed (their mtime): src and d
    assert set(out["modified"]) == {f"{s}/mod", s, f"{s}/d"}
    back = repo("--json", "diff", b[:10], a[:10]).json
    assert set(back["added"]) == set(out["removed"]) and set(back["removed"]) == set(out["added"])
    text = repo("diff", a, "latest").out
    assert f"+ {s}/new" in text and f"- {s}/gone" in text and f"M {s}/mod" in text
    same = repo("--json", "--no-lock", "diff", a, a).json
    assert same["requests"]["PUT"] == 0  # diff reads only (without --no-lock: its shared lock)
    assert {k: same[k] for k in ("snapshot_a", "snapshot_b", "added", "removed", "modified")} == {
        "snapshot_a": a, "snapshot_b": a, "added": [], "removed": [], "modified": []}


def test_diff_reports_metadata_and_type_changes(repo, tmp_path):
    """A directory's mode, a file's owner, and an entry that changed type -- with what the old directory held
    listed as removed (and a new directory's content as added)."""
    src = make_tree(tmp_path / "src", {"sub": {"a": b"a"}, "x": {"child1": b"1", "child2": b"2"}, "f": b"file",
                                       "owned": b"o"})
    a = repo("--json", "backup", src).json["snapshot_id"]
    os.chmod(src / "sub", 0o700)
    os.utime(src / "sub", ns=(1_600_000_000_000_000_000,) * 2)
    os.chown(src / "owned", 4321, 4321)
    for n in ("child1", "child2"):
        (src / "x" / n).unlink()
    (src / "x").rmdir()
    (src / "x").write_bytes(b"now a file")
    (src / "f").unlink()
    (src / "f").mkdir()
    (src / "f" / "inside").write_bytes(b"i")
    b = repo("--json", "backup", src).json["snapshot_id"]
    out = repo("--json", "diff", a, b).json
    s = str(src)
    assert {f"{s}/sub", f"{s}/owned", f"{s}/x", f"{s}/f"} <= set(out["modified"])
    assert f"{s}/sub/a" not in out["modified"]
    assert set(out["removed"]) == {f"{s}/x/child1", f"{s}/x/child2"}
    assert set(out["added"]) == {f"{s}/f/inside"}


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_diff_reports_a_device_whose_number_changed(repo, tmp_path):
    """A device node's number is its content (restoring B makes another device than A): diff said nothing."""
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.utime(src / "dev", ns=(10**18, 10**18))
    a = repo("--json", "backup", src).json["snapshot_id"]
    os.unlink(src / "dev")
    os.mknod(src / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.utime(src / "dev", ns=(10**18, 10**18))
    os.utime(src, ns=(10**18, 10**18))
    b = repo("--json", "backup", src).json["snapshot_id"]
    assert f"{src}/dev" in repo("--json", "diff", a, b).json["modified"]


def test_diff_of_a_deep_tree(repo, tmp_path):
    """diff walks with a stack: a change 1,200 levels down is found (in a fresh process, default recursion
    limit), not a RecursionError."""
    with deep_tree(tmp_path / "s", 1200) as deep:
        with open(deep + b"/leaf", "wb") as f:
            f.write(b"1")
        a = repo("--json", "backup", tmp_path / "s").json["snapshot_id"]
        with open(deep + b"/leaf", "wb") as f:
            f.write(b"22")
        b = repo("--json", "backup", tmp_path / "s").json["snapshot_id"]
        p = repo.proc("--json", "diff", a, b)
        assert p.returncode == 0, p.stderr.decode()[-300:]
        assert json.loads(p.stdout)["modified"][-1].endswith("/d/leaf")


def test_find_glob_any_depth(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.conf": b"1", "x": {"b.conf": b"2", "y": {"c.conf": b"3", "d.txt": b"4"}}})
    s1 = repo("--json", "backup", src).json["snapshot_id"]
    (src / "x" / "y" / "c.conf").unlink()
    s2 = repo("--json", "backup", src).json["snapshot_id"]
    hits = repo("--json", "find", "*.conf").json
    got = {(h["snapshot_id"], h["path"]) for h in hits}
    s = str(src)
    assert got == {(s1, f"{s}/a.conf"), (s1, f"{s}/x/b.conf"), (s1, f"{s}/x/y/c.conf"),
                   (s2, f"{s}/a.conf"), (s2, f"{s}/x/b.conf")}
    anchored = repo("--json", "find", f"{s}/x/*").json
    assert {h["path"] for h in anchored} == {f"{s}/x/b.conf", f"{s}/x/y"}
    assert repo("--json", "find", "*.nothing").json == []


def test_find_over_many_snapshots_gives_what_a_walk_of_each_gives(repo, tmp_path):
    """find skips a subtree that matched nothing at the same path in an earlier snapshot (the same tree): its
    answer must stay exactly a walk of every snapshot -- also when a tree moves to another path, comes back, or
    a match appears deep in an unchanged-looking directory."""
    import random

    from vault.excludes import Matcher, compile_glob

    rnd = random.Random(3)
    src = make_tree(tmp_path / "src", {f"d{i}": {f"e{j}": {f"f{k}.dat": b"%d" % k for k in range(3)} for j in range(3)}
                                       for i in range(4)})
    for night in range(5):
        if night:
            d = src / f"d{rnd.randrange(4)}" / f"e{rnd.randrange(3)}"
            (d / f"n{night}.conf").write_bytes(b"new")
            if night == 2:
                os.rename(src / "d1", src / "moved")
            if night == 4:
                os.rename(src / "moved", src / "d1")
                (src / "d0" / "e0" / "f0.dat").unlink()
        repo("backup", src)
    snaps = [s["id"] for s in repo("--json", "snapshots").json]
    for pattern in ("*.conf", "f0.dat", f"{src}/d1/*", "e1", "*"):
        got = sorted((h["snapshot_id"], h["path"]) for h in repo("--json", "find", pattern).json)
        m = Matcher([compile_glob(pattern)])
        want = sorted((sid, e["path"]) for sid in snaps for e in repo("--json", "ls", sid).json["entries"]
                      if m.matches(os.fsencode(e["path"]), e["type"] == "dir"))
        assert got == want, pattern


def test_every_mode_comes_back_exactly(repo, tmp_path):
    """Temp files are created with the file's own mode when that is safe (no chmod afterwards); read-only,
    mode-0 and setuid/setgid/sticky files get theirs at the end. Multi-block files included (they are reopened
    for each block)."""
    import random

    big = random.Random(7).randbytes(3 * 1024 * 1024)  # several chunks
    modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o400, 0o000, 0o4755, 0o2750, 0o1777, 0o666, 0o777]
    src = make_tree(tmp_path / "src", {f"m{m:o}": big if m in (0o444, 0o000, 0o644) else b"x" for m in modes})
    for m in modes:
        os.chmod(src / f"m{m:o}", m)
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    dst = restored(r, src)
    for m in modes:
        assert os.stat(dst / f"m{m:o}").st_mode & 0o7777 == m, oct(m)
        assert (dst / f"m{m:o}").read_bytes() == (big if m in (0o444, 0o000, 0o644) else b"x")


def test_create_mode_never_locks_the_writer_out():
    from vault.model import Node
    from vault.restorer import Restorer

    r = Restorer.__new__(Restorer)
    for umask, mode, want in [(0o022, 0o644, 0o644), (0o022, 0o666, 0o600), (0o077, 0o600, 0o600),
                              (0o022, 0o444, 0o600), (0o022, 0o000, 0o600), (0o022, 0o4755, 0o600),
                              (0o002, 0o775, 0o775), (0o022, 0o755, 0o755), (0o022, 0o200, 0o600)]:
        r._umask = umask
        assert r._create_mode(Node(b"f", "file", mode)) == want, (oct(umask), oct(mode))


def test_modes_come_back_under_a_default_acl(repo, tmp_path):
    """A default ACL on the target masks the mode a file is created with (the umask is ignored): restore
    sees that and sets the mode itself."""
    import struct

    src = make_tree(tmp_path / "src", {"f644": b"a", "f600": b"b", "d": {"g755": b"c"}})
    os.chmod(src / "f644", 0o644)
    os.chmod(src / "f600", 0o600)
    os.chmod(src / "d" / "g755", 0o755)
    repo("backup", src)
    r = tmp_path / "r"
    r.mkdir()
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in ((0x01, 7), (0x04, 5), (0x20, 0)))  # u::rwx g::r-x o::---
    try:
        os.setxattr(r, "system.posix_acl_default", acl)
    except OSError:
        pytest.skip("no POSIX ACLs on this filesystem")
    repo("restore", "latest", "--target", r)
    dst = restored(r, src)
    assert os.stat(dst / "f644").st_mode & 0o7777 == 0o644
    assert os.stat(dst / "f600").st_mode & 0o7777 == 0o600
    assert os.stat(dst / "d" / "g755").st_mode & 0o7777 == 0o755


def test_zero_runs_inside_a_block_are_left_out():
    from vault.restorer import _ZERO_RUN as Z, _data_runs

    assert _data_runs(b"") == [] and _data_runs(bytes(1000)) == [] and _data_runs(b"\0a\0") == [(0, 3)]
    b = bytearray(10 * Z + 5)
    assert _data_runs(b) == []
    b[3 * Z + 7] = 1
    assert _data_runs(b) == [(3 * Z, 4 * Z)]
    b[-1] = 1
    b[0] = b[Z] = 1
    assert _data_runs(b) == [(0, 2 * Z), (3 * Z, 4 * Z), (10 * Z, 10 * Z + 5)]
    assert _data_runs(memoryview(b)[Z:]) == [(0, Z), (2 * Z, 3 * Z), (9 * Z, 9 * Z + 5)]


def _with_file_size_limit(limit: int, fn):
    import resource
    import signal

    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) or fall short
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        return fn()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)


@pytest.mark.parametrize("content", ["data", "sparse-tail"])
def test_a_short_write_is_an_error_never_a_short_file(repo, tmp_path, content):
    """At a file-size limit (or on a full disk) Linux writes part of a block and returns the shorter count: the
    file is reported and left out, never renamed into place short; its hardlink is not pointed at an older
    file that happens to be there."""
    import random

    src = make_tree(tmp_path / "src", {"f": b"old", "small": b"fine"})
    os.link(src / "f", src / "g")
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r)
    dst = restored(r, src)
    # one block (under the chunker's minimum) that crosses the limit: the write falls short and raises nothing
    # (sparse-tail: 64 KiB of data are written, then extending the file to its size fails instead)
    head = random.Random(3).randbytes(400 * 1024 if content == "data" else 64 * 1024)
    (src / "f").write_bytes(head + bytes(400 * 1024 - len(head)))  # g is the same inode: it grows too
    repo("backup", src)
    res = _with_file_size_limit(256 * 1024, lambda: repo("restore", "latest", "--target", r, ok=False))
    assert res.code != 0 and "Traceback" not in res.err
    assert f"{src}/f" in res.err and f"{src}/g" in res.err, res.err
    assert (dst / "f").read_bytes() == b"old" and (dst / "g").read_bytes() == b"old"  # untouched, not replaced
    assert (dst / "small").read_bytes() == b"fine"
    assert not [p for p in os.listdir(dst) if p.startswith(".vault-")]


def test_pwrite_all_goes_on_after_a_short_write(tmp_path):
    from vault.restorer import _pwrite_all

    fd = os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        data = os.urandom(300_000)
        with pytest.raises(OSError):
            _with_file_size_limit(100_000, lambda: _pwrite_all(fd, data, 0))
        _pwrite_all(fd, memoryview(data)[:1000], 5)
    finally:
        os.close(fd)
    assert (tmp_path / "x").read_bytes()[5:1005] == data[:1000]


def test_requests_of_restore_worker_processes_are_counted(repo, tmp_path):
    src = make_tree(tmp_path / "src", {f"d{i}": {f"f{j}": os.urandom(20_000) for j in range(30)} for i in range(4)})
    repo("backup", src)
    one = repo("--json", "--jobs", "1", "restore", "latest", "--target", tmp_path / "r1").json
    two = repo("--json", "--jobs", "2", "restore", "latest", "--target", tmp_path / "r2").json
    packs = one["bytes_down"]
    # (not >=: the lock file read back can be a byte shorter in one run -- its pid and times are text)
    assert packs > 2_400_000 and two["bytes_down"] >= packs - 100, (one, two)
    assert two["requests"]["GET"] >= one["requests"]["GET"], (one, two)


def _walk_down(root: Path, names: list[bytes]) -> None:
    os.chdir(root)
    for n in names:
        os.chdir(n)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_paths_longer_than_path_max_round_trip(repo, tmp_path, jobs, monkeypatch):
    """30 levels of 200-byte names: full paths of 6,000+ bytes, past the kernel's PATH_MAX (4096), every name
    legal. Backup stores all of it (it failed at level 21: 'File name too long', exit 3) and restore brings it
    back, file, symlink and hardlink at the bottom included."""
    from conftest import with_jobs

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    names = [(b"%02d" % i) * 100 for i in range(30)]
    _walk_down(src, [])
    for n in names:
        os.mkdir(n)
        os.chdir(n)
    with open(b"leaf", "wb") as f:
        f.write(b"deep data" * 1000)
    os.symlink(b"leaf", b"link")
    os.link(b"leaf", b"hard")
    os.chdir(tmp_path)
    res = with_jobs(repo, jobs, "--json", "backup", src).json
    assert res["files_new"] == 2 and res["dirs"] >= 30
    target = tmp_path / "r"
    with_jobs(repo, jobs, "restore", "latest", "--target", target)
    _walk_down(target / src.relative_to("/"), names)
    try:
        assert open(b"leaf", "rb").read() == b"deep data" * 1000
        assert os.readlink(b"link") == b"leaf"
        assert os.stat(b"hard").st_ino == os.stat(b"leaf").st_ino
    finally:
        os.chdir(tmp_path)
    assert repo("--json", "backup", src).json["files_unmodified"] == 2


def test_an_include_that_matches_nothing_is_said(repo, tmp_path):
    """A restore drill whose --include matches nothing (latest is another job's snapshot) restored nothing and
    said nothing (exit 0): now a warning names the snapshot and its paths, even with -q."""
    src = make_tree(tmp_path / "src", {"a.conf": b"x"})
    repo("backup", src)
    res = repo("-q", "restore", "latest", "--target", tmp_path / "r", "--include", "/etc/ssh")
    assert "matches --include" in res.err and str(src) in res.err
    res = repo("-q", "restore", "latest", "--target", tmp_path / "r2", "--include", "*.conf")
    assert res.err == ""
    # matched, then excluded: the warning says so (it read as if --include had matched nothing)
    res = repo("-q", "restore", "latest", "--target", tmp_path / "r3", "--include", "*.conf", "--exclude", "a.*")
    assert "matches --include *.conf that --exclude leaves in" in res.err


def test_hardlinked_fifos_symlinks_and_devices_stay_linked(repo, tmp_path):
    """Only regular files were linked again on restore: two names of one fifo, symlink or device node came
    back as two inodes (the snapshot records inode and nlink for each)."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    os.link(src / "fifo", src / "fifo2")
    os.symlink("target", src / "sl")
    os.link(src / "sl", src / "sl2", follow_symlinks=False)
    pairs = [("fifo", "fifo2"), ("sl", "sl2")]
    if os.getuid() == 0:
        os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.link(src / "null", src / "null2")
        pairs.append(("null", "null2"))
    repo("backup", src)
    out = repo("restore", "latest", "--target", tmp_path / "r").out
    r = tmp_path / "r" / src.relative_to("/")
    for a, b in pairs:
        assert os.lstat(r / a).st_ino == os.lstat(r / b).st_ino, (a, b)
        assert os.lstat(r / a).st_nlink == 2
    assert os.readlink(r / "sl2") == "target"
    assert "other (fifos, devices)" in out


def test_a_target_made_under_umask_000_is_not_world_writable(repo, tmp_path):
    """Cron daemons and service managers may run jobs under umask 000: the --target a restore made (and the
    directories above it) were 0777, so any local user could rename a root restore's top directory and plant
    their own. restic makes it 0700; vault 0755 at most (the umask still narrows it)."""
    src = make_tree(tmp_path / "src", {"d": {"f": b"x"}})
    (src / "d").chmod(0o777)  # (the snapshot's own modes are restored as they were)
    repo("backup", src)
    for umask, want in ((0o000, 0o755), (0o077, 0o700)):
        target = tmp_path / f"a{umask}" / "b" / "t"
        p = repo.proc("restore", "latest", "--target", target, preexec_fn=lambda u=umask: os.umask(u))
        assert p.returncode == 0, p.stderr
        for d in (target, target.parent, target.parent.parent):
            assert stat.S_IMODE(d.stat().st_mode) == want, (umask, d)
        assert stat.S_IMODE((restored(target, src) / "d").stat().st_mode) == 0o777
    (tmp_path / "file").write_bytes(b"")
    line = repo("restore", "latest", "--target", tmp_path / "file", ok=False).err.strip()
    assert line.endswith("exists and is not a directory"), line
