"""backup options: excludes, tags/host/time, snapshot filters, --dry-run, change detection, several paths, and
never backing up the repository or cache inside the backed-up tree."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

import pytest

from conftest import Cli, FAST_INIT, assert_trees_equal, make_tree, tmpfs, tree_listing

ISO_UTC_SUBSECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")


def paths_in(repo, snap="latest") -> set[str]:
    return {e["path"] for e in repo("--json", "ls", snap).json["entries"]}


def rel(src, paths: set[str]) -> set[str]:
    base = str(src)
    return {p[len(base) + 1:] for p in paths if p.startswith(base + "/")}


# --- excludes ---------------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "src", {
        "keep.txt": b"k", "x.tmp": b"t", "cache": {"c1": b"c"},
        "a": {"y.tmp": b"t", "b": {"z.tmp": b"t", "keep.c": b"c", "cache": {"c2": b"c"}}, "build": {"o": b"o"}},
        "build": {"out.bin": b"o"},
    })


def test_exclude_glob_without_slash_matches_at_any_depth(repo, tree):
    repo("backup", tree, "--exclude", "*.tmp", "--exclude", "cache")
    got = rel(tree, paths_in(repo))
    assert not any(p.endswith(".tmp") for p in got), got
    assert not any(p == "cache" or p.endswith("/cache") or "cache/" in p for p in got), got
    assert {"keep.txt", "a/b/keep.c", "build/out.bin", "a/build/o"} <= got


def test_exclude_anchored_glob(repo, tree):
    anchored = f"{tree}/build"
    repo("backup", tree, "--exclude", anchored, "-e", f"{tree}/a/*.tmp")
    got = rel(tree, paths_in(repo))
    assert "build" not in got and "build/out.bin" not in got
    assert "a/build/o" in got, "an anchored pattern matches only at its own place"
    assert "a/y.tmp" not in got
    assert "a/b/z.tmp" in got and "x.tmp" in got, "'*' in an anchored pattern does not cross '/'"


def test_exclude_file_with_comments(repo, tree, tmp_path):
    ef = tmp_path / "excludes"
    ef.write_text("# editor and build junk\n\n*.tmp\n# another comment\n"
                  f"{tree}/build\n#cache\n")
    repo("backup", tree, "--exclude-file", ef)
    got = rel(tree, paths_in(repo))
    assert not any(p.endswith(".tmp") for p in got)
    assert "build/out.bin" not in got
    assert "cache/c1" in got and "a/b/cache/c2" in got, "a commented-out pattern must not apply"


def test_exclude_does_not_apply_to_given_path(repo, tree):
    # naming a path explicitly backs it up even though a pattern would exclude it below
    repo("backup", tree / "x.tmp", tree / "keep.txt", "--exclude", "*.tmp")
    got = paths_in(repo)
    assert str(tree / "keep.txt") in got


def test_excluded_files_restore_absent(repo, tree, tmp_path):
    repo("backup", tree, "--exclude", "*.tmp")
    repo("restore", "latest", "--target", tmp_path / "r")
    r = tmp_path / "r" / tree.relative_to("/")
    assert not list(r.rglob("*.tmp"))
    assert (r / "a" / "b" / "keep.c").read_bytes() == b"c"


# --- tags, host, time and the snapshot filters ------------------------------------------------------------
def test_tag_host_time_recorded(repo, tree):
    out = repo("--json", "backup", tree, "--tag", "nightly", "--tag", "db", "--host", "web1",
               "--time", "2024-02-03T04:05:06.789Z").json
    (s,) = repo("--json", "snapshots").json
    assert s["id"] == out["snapshot_id"]
    assert s["host"] == "web1"
    assert sorted(s["tags"]) == ["db", "nightly"]
    assert s["paths"] == [str(tree)]
    assert ISO_UTC_SUBSECOND.match(s["time"]), s["time"]
    t = datetime.fromisoformat(s["time"].replace("Z", "+00:00"))
    assert t == datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=timezone.utc)


def test_time_with_offset_is_stored_as_utc(repo, tree):
    repo("backup", tree, "--time", "2024-02-03T04:05:06+02:00")
    (s,) = repo("--json", "snapshots").json
    assert s["time"].startswith("2024-02-03T02:05:06") and s["time"].endswith("Z")


def test_default_time_is_now_with_subseconds(repo, tree):
    before = datetime.now(timezone.utc)
    repo("backup", tree)
    after = datetime.now(timezone.utc)
    (s,) = repo("--json", "snapshots").json
    assert ISO_UTC_SUBSECOND.match(s["time"]), s["time"]
    t = datetime.fromisoformat(s["time"].replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= t <= after
    assert s["host"]  # this machine's name by default


def test_at_with_snapshot_time_string_selects_that_snapshot(repo, tree, tmp_path):
    repo("backup", tree)
    (tree / "keep.txt").write_bytes(b"second")
    time.sleep(0.01)
    repo("backup", tree)
    s1, s2 = repo("--json", "snapshots").json
    assert s1["time"] != s2["time"]
    out = repo("--json", "restore", "--at", s1["time"], "--target", tmp_path / "r").json
    assert out["snapshot_id"] == s1["id"]
    out = repo("--json", "restore", "--at", s2["time"], "--target", tmp_path / "r2").json
    assert out["snapshot_id"] == s2["id"]


def test_snapshot_filters(repo, tmp_path):
    a = make_tree(tmp_path / "a", {"f": b"1"})
    b = make_tree(tmp_path / "b", {"g": b"2"})
    repo("backup", a, "--host", "h1", "--tag", "daily", "--time", "2024-01-01T00:00:00Z")
    repo("backup", b, "--host", "h2", "--tag", "daily", "--tag", "db", "--time", "2024-01-02T00:00:00Z")
    repo("backup", a, b, "--host", "h1", "--tag", "weekly", "--time", "2024-01-03T00:00:00Z")

    def ids(*args):
        return [s["time"][:10] for s in repo("--json", "snapshots", *args).json]

    assert ids() == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert ids("--host", "h1") == ["2024-01-01", "2024-01-03"]
    assert ids("--host", "h2") == ["2024-01-02"]
    assert ids("--host", "nope") == []
    assert ids("--tag", "daily") == ["2024-01-01", "2024-01-02"]
    assert ids("--tag", "daily,db") == ["2024-01-02"]
    assert ids("--tag", "db", "--tag", "weekly") == ["2024-01-02", "2024-01-03"]
    assert ids("--path", str(a)) == ["2024-01-01", "2024-01-03"]
    assert ids("--path", str(b), "--host", "h1") == ["2024-01-03"]
    assert ids("--path", str(tmp_path / "c")) == []
    # a relative --path is taken from the current directory, like backup's paths
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert ids("--path", "b") == ["2024-01-02", "2024-01-03"]
    finally:
        os.chdir(old)
    # the filters also choose 'latest'
    out = repo("--json", "restore", "latest", "--host", "h2", "--target", tmp_path / "r").json
    assert out["snapshot_id"] == repo("--json", "snapshots", "--host", "h2").json[0]["id"]


def test_empty_tag_ignored_and_tags_deduplicated(repo, tree):
    repo("backup", tree, "--tag", "x", "--tag", "x", "--tag", "")
    (s,) = repo("--json", "snapshots").json
    assert s["tags"] == ["x"]


def test_an_empty_tag_filter_selects_untagged_snapshots(repo, tree):
    repo("backup", tree, "--tag", "x")
    repo("backup", tree)
    untagged = repo("--json", "snapshots", "--tag", "").json
    assert [s["tags"] for s in untagged] == [[]]
    assert len(repo("--json", "snapshots", "--tag", "", "--tag", "x").json) == 2


def test_snapshots_latest_keeps_the_newest_of_each_host_and_paths(repo, tree, tmp_path):
    """restic's --latest N: at 8,760 hourly snapshots a listing printed them all."""
    other = make_tree(tmp_path / "other", {"o": b"o"})
    for day in range(1, 5):
        repo("backup", tree, "--host", "h1", "--time", f"2026-01-0{day}T00:00:00Z")
        repo("backup", tree, "--host", "h2", "--time", f"2026-01-0{day}T01:00:00Z")
    repo("backup", other, "--host", "h1", "--time", "2026-01-01T02:00:00Z")
    got = repo("--json", "snapshots", "--latest", "2").json
    assert [(s["host"], s["time"][:10], s["paths"] == [str(other)]) for s in got] == [
        ("h1", "2026-01-01", True), ("h1", "2026-01-03", False), ("h2", "2026-01-03", False),
        ("h1", "2026-01-04", False), ("h2", "2026-01-04", False)]
    assert len(repo("--json", "snapshots", "--latest", "1", "--host", "h2").json) == 1
    repo("snapshots", "--latest", "0", ok=2)


# --- dry run ----------------------------------------------------------------------------------------------
def test_dry_run_changes_nothing_but_reports(repo, tree):
    before = tree_listing(repo.repo)
    out = repo("--json", "backup", "--dry-run", tree).json
    assert tree_listing(repo.repo) == before
    assert out["snapshot_id"] is None
    assert out["files_new"] == 9 and out["files_changed"] == 0
    assert out["bytes_processed"] == sum(len(b) for b in (b"k", b"t", b"c", b"t", b"t", b"c", b"c", b"o", b"o"))
    assert out["bytes_added"] > 0
    assert repo("--json", "snapshots").json == []
    res = repo("backup", "-n", tree)
    assert "dry run" in res.out
    assert tree_listing(repo.repo) == before


def test_dry_run_reports_what_the_backup_will_add(repo, tmp_path):
    """bytes_added of a dry run is what the real backup then adds: compressed and sealed, not the raw size."""
    src = make_tree(tmp_path / "src", {"text": b"hello world\n" * 500_000, "random": os.urandom(300_000),
                                       "d": {"zeros": bytes(2_000_000)}})
    dry = repo("--json", "backup", "--dry-run", src).json
    real = repo("--json", "backup", src).json
    assert dry["bytes_added"] == real["bytes_added"]
    assert real["bytes_added"] < 400_000  # compressed: 8 MB processed
    assert "would add to the repository" in repo("backup", "-n", src).out


def test_dry_run_after_a_backup(repo, tree):
    repo("backup", tree)
    (tree / "keep.txt").write_bytes(b"changed!")
    os.utime(tree / "keep.txt", ns=(1_800_000_000_000_000_000,) * 2)
    (tree / "brand-new").write_bytes(os.urandom(1000))
    before = tree_listing(repo.repo)
    out = repo("--json", "backup", "--dry-run", tree).json
    assert tree_listing(repo.repo) == before
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (1, 1, 8)
    # and the next real backup is unaffected by the dry run (it still stores the new data)
    out = repo("--json", "backup", tree).json
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (1, 1, 8)
    assert out["bytes_added"] >= 1000


# --- change detection -------------------------------------------------------------------------------------
@pytest.fixture
def five(tmp_path):
    return make_tree(tmp_path / "src", {f"f{i}": os.urandom(2000 + i) for i in range(5)} | {"d": {"g": b"g"}})


def test_modified_file_detected(repo, five, tmp_path):
    repo("backup", five)
    (five / "f2").write_bytes(b"new content")
    out = repo("--json", "backup", five).json
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (0, 1, 5)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(five, tmp_path / "r" / five.relative_to("/"))


def test_same_size_same_mtime_content_change_detected_by_ctime(repo, five, tmp_path):
    repo("backup", five)
    st = os.stat(five / "f1")
    data = bytearray((five / "f1").read_bytes())
    data[0] ^= 0xFF
    (five / "f1").write_bytes(bytes(data))
    os.utime(five / "f1", ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from size and mtime
    out = repo("--json", "backup", five).json
    assert out["files_changed"] == 1 and out["files_unmodified"] == 5
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / five.relative_to("/") / "f1").read_bytes() == bytes(data)


def test_touched_file_is_reread(repo, five):
    (five / "f3").write_bytes(os.urandom(200_000))  # (its content dwarfs the trees of every directory above it,
    repo("backup", five)                            # stored again whatever the depth of $TMPDIR)
    os.utime(five / "f3", ns=(1_800_000_000_000_000_000,) * 2)
    out = repo("--json", "backup", five).json
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (0, 1, 5)
    assert out["bytes_added"] < 50_000, "same content: nothing new stored but the trees"
    ls = {e["path"]: e for e in repo("--json", "ls", "latest").json["entries"]}
    assert ls[str(five / "f3")]["mtime_ns"] == 1_800_000_000_000_000_000


def test_new_and_deleted_files(repo, five):
    repo("backup", five)
    (five / "f0").unlink()
    (five / "d" / "h").write_bytes(b"h")
    out = repo("--json", "backup", five).json
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (1, 0, 5)
    d = repo("--json", "diff", *[s["id"] for s in repo("--json", "snapshots").json]).json
    assert d["removed"] == [str(five / "f0")] and d["added"] == [str(five / "d" / "h")]


def test_unmodified_after_restore_of_metadata_only_not_confused_by_inode(repo, five, tmp_path):
    """A file replaced by another with the same size and mtime (new inode) is re-read."""
    repo("backup", five)
    st = os.stat(five / "f4")
    new = five / "f4.new"
    data = os.urandom(st.st_size)
    new.write_bytes(data)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, five / "f4")
    out = repo("--json", "backup", five).json
    assert out["files_changed"] == 1
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / five.relative_to("/") / "f4").read_bytes() == data


# --- several paths, and what is never backed up -----------------------------------------------------------
def test_two_paths_in_one_snapshot(repo, tmp_path):
    a = make_tree(tmp_path / "one" / "a", {"x": b"1", "sub": {"y": b"2"}})
    b = make_tree(tmp_path / "two" / "b", {"z": b"3"})
    out = repo("--json", "backup", a, b).json
    (s,) = repo("--json", "snapshots").json
    assert sorted(s["paths"]) == sorted([str(a), str(b)])
    assert out["files_new"] == 3
    repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(a, tmp_path / "r" / a.relative_to("/"))
    assert_trees_equal(b, tmp_path / "r" / b.relative_to("/"))
    # siblings of the given paths are not in the snapshot
    assert not (tmp_path / "r" / tmp_path.relative_to("/") / "cache").exists()
    # the second backup of the same two paths (any order) is incremental
    out = repo("--json", "backup", b, a).json
    assert out["files_unmodified"] == 3 and out["files_new"] == 0


def test_overlapping_paths(repo, tmp_path):
    a = make_tree(tmp_path / "a", {"x": b"1", "sub": {"y": b"2"}})
    out = repo("--json", "backup", a, a / "sub", a / "sub" / "y").json
    assert out["files_new"] == 2, "a file is counted (and stored) once"
    entries = [e["path"] for e in repo("--json", "ls", "latest").json["entries"]]
    assert len(entries) == len(set(entries))


def test_relative_paths(repo, tmp_path):
    a = make_tree(tmp_path / "a", {"x": b"1"})
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        repo("backup", "a")
    finally:
        os.chdir(old)
    (s,) = repo("--json", "snapshots").json
    assert s["paths"] == [str(a)]


def test_repository_and_cache_inside_backed_up_tree_are_skipped(capfd, tmp_path):
    home = make_tree(tmp_path / "home", {"doc.txt": b"important", "sub": {"x": b"x"}})
    c = Cli(capfd, home / "backups" / "repo", home / ".cache" / "vault")
    c("init", *FAST_INIT)
    c("backup", home)
    out = c("--json", "backup", home).json
    assert out["files_new"] == 0 and out["files_unmodified"] == 2, \
        "the second run must not pick up the first run's repository or catalog files"
    got = {e["path"] for e in c("--json", "ls", "latest").json["entries"]}
    assert str(home / "doc.txt") in got and str(home / "sub" / "x") in got
    assert not any(p.startswith(str(c.repo) + "/") or p == str(c.repo) for p in got), got
    assert not any(p.startswith(str(c.cache) + "/") or p == str(c.cache) for p in got), got
    assert str(home / "backups") in got  # only the repository itself is skipped, not its parent


def test_repository_given_by_relative_path_inside_tree_is_skipped(capfd, tmp_path):
    home = make_tree(tmp_path / "home", {"doc.txt": b"important"})
    old = os.getcwd()
    os.chdir(home)
    try:
        c = Cli(capfd, "repo", tmp_path / "cache")
        c("init", *FAST_INIT)
        c("backup", ".")
        got = {e["path"] for e in c("--json", "ls", "latest").json["entries"]}
    finally:
        os.chdir(old)
    assert str(home / "doc.txt") in got
    assert not any(p == str(home / "repo") or p.startswith(str(home / "repo") + "/") for p in got), got


def test_repository_url_form_inside_tree_is_skipped(capfd, tmp_path):
    home = make_tree(tmp_path / "home", {"doc.txt": b"important"})
    c = Cli(capfd, f"file://{home}/repo", tmp_path / "cache")
    c("init", *FAST_INIT)
    c("backup", home)
    got = {e["path"] for e in c("--json", "ls", "latest").json["entries"]}
    assert not any(p.startswith(str(home / "repo")) for p in got), got


# --- --one-file-system ------------------------------------------------------------------------------------
@pytest.fixture
def mounted(tmp_path):
    """src/ with a tmpfs mounted at src/mnt (skipped where mounting is not allowed)."""
    src = make_tree(tmp_path / "src", {"top.txt": b"on the main fs", "mnt": {}})
    with tmpfs(src / "mnt", "4m"):
        make_tree(src / "mnt", {"inner.txt": b"on the tmpfs", "d": {"deep.txt": b"deep"}})
        yield src


def _listed(repo) -> set[str]:
    return {e["path"] for e in repo("--json", "ls", "latest").json["entries"]}


def test_one_file_system_stops_at_a_mount_point(repo, mounted):
    repo("backup", "-x", mounted)
    paths = _listed(repo)
    assert f"{mounted}/top.txt" in paths and f"{mounted}/mnt" in paths  # the mount point, empty
    assert not any(p.startswith(f"{mounted}/mnt/") for p in paths)
    repo("backup", mounted)  # without -x: everything
    assert f"{mounted}/mnt/d/deep.txt" in _listed(repo)


def test_one_file_system_keeps_a_mount_point_named_as_a_path(repo, mounted, tmp_path):
    """A PATH given on the command line is backed up even when it is a mount point below another PATH
    (as restic does): -x only stops at mounts the walk finds by itself."""
    repo("backup", "-x", mounted, mounted / "mnt")
    paths = _listed(repo)
    assert {f"{mounted}/top.txt", f"{mounted}/mnt/inner.txt", f"{mounted}/mnt/d/deep.txt"} <= paths
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / mounted.relative_to("/") / "mnt" / "d" / "deep.txt").read_bytes() == b"deep"


def test_one_file_system_keeps_a_path_named_below_a_mount_point(repo, mounted, tmp_path):
    """A PATH below a mount point that -x would skip is still backed up (and nothing else of that mount)."""
    repo("backup", "-x", mounted, mounted / "mnt" / "d")
    paths = _listed(repo)
    assert {f"{mounted}/top.txt", f"{mounted}/mnt/d/deep.txt"} <= paths
    assert f"{mounted}/mnt/inner.txt" not in paths
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / mounted.relative_to("/") / "mnt" / "d" / "deep.txt").read_bytes() == b"deep"
    # and a named PATH is never excluded, inside another PATH as at the top
    repo("backup", mounted, mounted / "mnt", "--exclude", str(mounted / "mnt"))
    assert f"{mounted}/mnt/inner.txt" in _listed(repo)


def test_a_path_named_below_an_excluded_directory_is_backed_up(repo, tmp_path):
    """--exclude never drops a PATH named on the command line, even through an excluded directory above it:
    that directory then holds only the named PATH."""
    src = make_tree(tmp_path / "src", {"a": b"1", "cache": {"junk": b"j", "keep": {"k.txt": b"kept"}}})
    repo("backup", src, src / "cache" / "keep", "--exclude", str(src / "cache"))
    paths = _listed(repo)
    assert f"{src}/cache/keep/k.txt" in paths and f"{src}/a" in paths
    assert f"{src}/cache/junk" not in paths


def test_a_file_deleted_while_the_backup_runs_is_a_warning_not_an_error(repo, tmp_path, monkeypatch):
    """Listed, then deleted before it is read: the snapshot is as if listed a moment later (exit 0, a
    warning names it), like a file deleted just before the listing -- never exit 3 for it."""
    from vault import archiver

    src = make_tree(tmp_path / "src", {"keep": b"k", "vanish": b"v" * 1000})
    real_open = os.open

    def open_after_delete(path, *a, **kw):  # (the reader opens it relative to its directory: b"vanish")
        if isinstance(path, bytes) and os.path.basename(path) == b"vanish" and (src / "vanish").exists():
            os.unlink(src / "vanish")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(archiver.os, "open", open_after_delete)
    res = repo("--json", "backup", src)
    monkeypatch.undo()
    assert res.code == 0 and "vanish" in res.err and "deleted while the backup ran" in res.err
    paths = {e["path"] for e in repo("--json", "ls", "latest").json["entries"]}
    assert f"{src}/keep" in paths and f"{src}/vanish" not in paths
    assert res.json["bytes_processed"] == 1


# --- symlinks on the way to a named PATH ----------------------------------------------------------------
@pytest.fixture
def linked(tmp_path):
    """t/real/sub/f and t/lnk -> real: /bin -> usr/bin on a merged-/usr system, in small."""
    t = make_tree(tmp_path / "t", {"real": {"sub": {"f": b"hello"}, "g": b"g"}})
    os.symlink("real", t / "lnk")
    return t


def test_a_path_below_a_symlinked_directory_is_backed_up(repo, linked, tmp_path):
    out = repo("--json", "backup", linked / "lnk" / "sub").json
    assert out["files_new"] == 1
    got = rel(linked, paths_in(repo))
    assert {"lnk", "lnk/sub", "lnk/sub/f"} <= got, got
    assert "lnk/g" not in got, "only the named PATH below the link, not all the link leads to"
    repo("restore", "latest", "--target", tmp_path / "out")
    restored = tmp_path / "out" / str(linked).lstrip("/") / "lnk"
    assert not restored.is_symlink() and (restored / "sub" / "f").read_bytes() == b"hello"


def test_a_path_below_a_symlink_inside_another_path_is_backed_up(repo, linked):
    repo("backup", linked / "real" / "g", linked / "lnk" / "sub")
    got = rel(linked, paths_in(repo))
    assert {"real/g", "lnk/sub/f"} <= got, got
    repo("backup", linked, linked / "lnk" / "sub")  # the link inside a PATH walked whole
    got = rel(linked, paths_in(repo))
    assert {"real/g", "real/sub/f", "lnk/sub/f"} <= got, got
    assert "lnk/g" not in got


def test_a_symlink_named_as_a_path_is_stored_as_a_symlink(repo, linked):
    repo("backup", linked / "lnk")
    entries = {e["path"]: e for e in repo("--json", "ls", "latest").json["entries"]}
    assert entries[f"{linked}/lnk"]["type"] == "symlink"
    assert not any(p.startswith(f"{linked}/lnk/") for p in entries)


@pytest.mark.parametrize("suffix", ["/", "/.", "/sub/.."])
def test_a_symlink_named_with_a_slash_or_dot_is_the_directory_it_points_to(repo, linked, suffix):
    """`LINK/.` and `LINK/` name the directory (the kernel, stat and tar agree); `LINK/sub/..` is the
    directory's own parent as the kernel resolves it. Backup stored only the symlink (0 files, exit 0): the
    data was not backed up. The directory now goes in under its real path."""
    out = repo("--json", "backup", f"{linked}/lnk{suffix}").json
    assert out["files_new"] == 2, out
    [snap] = repo("--json", "snapshots").json
    assert snap["paths"] == [f"{linked}/real"]
    got = rel(linked, paths_in(repo))
    assert {"real/g", "real/sub/f"} <= got and "lnk" not in got, got


def test_dot_dot_after_a_symlink_is_resolved_as_the_kernel_does(repo, tmp_path):
    t = make_tree(tmp_path / "t", {"data": {"x": {"xfile": b"x"}, "file": b"important"}, "a": {"b": {"ab": b"ab"}}})
    os.symlink("../../data/x", t / "a" / "b" / "link")
    repo("backup", f"{t}/a/b/link/..")
    [snap] = repo("--json", "snapshots").json
    assert snap["paths"] == [f"{t}/data"]


def test_verbose_backup_names_each_file_read(repo, five):
    """-v named nothing more for backup (a contract global); it now lists each file read, new or modified, on
    stderr (stdout keeps the summary; --json stays one document)."""
    first = repo("-v", "backup", five)
    assert f"new      {five}/f0" in first.err and f"{five}/d/g" in first.err
    (five / "f1").write_bytes(b"changed")
    again = repo("-v", "--json", "backup", five)
    assert f"modified {five}/f1" in again.err and f"{five}/f0" not in again.err
    assert again.json["files_changed"] == 1


def test_dot_dot_after_a_symlink_then_a_name_is_that_name_where_the_link_leads(repo, tmp_path):
    """`LINK/../NAME`: the kernel goes up from where the link leads; the text alone pointed next to the link
    (no such entry: exit 1). And `x/../link` with a plain x is the link itself, as `link` is."""
    t = make_tree(tmp_path / "t", {"w": {"x": {}}, "data": {"sub": {"f": b"f"}, "sibling": {"g": b"g"}}})
    os.symlink("../data/sub", t / "w" / "link")
    repo("backup", f"{t}/w/link/../sibling")
    assert repo("--json", "snapshots").json[-1]["paths"] == [f"{t}/data/sibling"]
    repo("backup", f"{t}/w/x/../link")
    assert repo("--json", "snapshots").json[-1]["paths"] == [f"{t}/w/link"]
    entries = {e["path"]: e["type"] for e in repo("--json", "ls", "latest").json["entries"]}
    assert entries[f"{t}/w/link"] == "symlink"


def test_a_path_the_kernel_cannot_resolve_is_an_error_not_what_its_text_normalises_to(repo, tmp_path):
    """`missing/..`, `FILE/.`, `loop/..`: stat and tar refuse them; backup took `missing/..` for `.` (the
    whole directory, exit 0): a typo like /srv/dat/.. backed up all of /srv. And //path is /path (one group,
    one parent)."""
    t = make_tree(tmp_path / "t", {"x": {"f": b"f"}, "file": b"data"})
    os.symlink("loop", t / "loop")
    for bad in ("missing/..", "x/missing/..", "file/.", "file/..", "loop/.."):
        res = repo("backup", f"{t}/{bad}", ok=1)
        assert "nothing to back up" in res.err and bad in res.err, res.err
    assert repo("--json", "snapshots").json == []
    repo("backup", f"/{t}/x")
    again = repo("--json", "backup", f"{t}/x").json
    assert again["files_unmodified"] == 1, again
    assert {tuple(s["paths"]) for s in repo("--json", "snapshots").json} == {(f"{t}/x",)}


def test_exclude_caches_and_exclude_if_present_keep_the_directory_and_its_tag(repo, tmp_path):
    sig = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n"
    src = make_tree(tmp_path / "src", {
        "linked": {"junk": b"j"}, "real.tag": sig,
        "app": {"cache": {"CACHEDIR.TAG": sig, "blob": b"x", "sub": {"deep": b"y"}}, "conf": b"c"},
        "fake": {"CACHEDIR.TAG": b"not the signature", "data": b"d"},
        "vm": {".nobackup": b"", "disk.img": b"i", "named": {"keep.me": b"k"}},
        "other": {"keep": b"k"},
    })
    os.symlink("../real.tag", src / "linked" / "CACHEDIR.TAG")  # (a symlink to a tag counts, as for restic)
    repo("backup", src, src / "vm" / "named", "--exclude-caches", "--exclude-if-present", ".nobackup")
    got = rel(src, paths_in(repo))
    assert got == {"linked", "linked/CACHEDIR.TAG", "real.tag",
                   "app", "app/cache", "app/cache/CACHEDIR.TAG", "app/conf", "fake", "fake/CACHEDIR.TAG",
                   "fake/data", "vm", "vm/.nobackup", "vm/named", "vm/named/keep.me", "other", "other/keep"}, got
    # without the options everything is in; a name with '/' is a usage error
    repo("backup", src)
    assert "app/cache/sub/deep" in rel(src, paths_in(repo))
    assert repo("backup", src, "--exclude-if-present", "a/b", ok=2).code == 2


def test_ls_long_shows_mode_owner_size_and_mtime(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"f.txt": b"12345"}, mtime_ns=1_700_000_000_000_000_000)
    repo("backup", src)
    line = next(ln for ln in repo("ls", "-l", "latest", src / "f.txt").out.splitlines() if ln.endswith("/f.txt"))
    st = (src / "f.txt").stat()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert line.split() == ["-rw-r--r--", str(st.st_uid), str(st.st_gid), "5", *when.split(), str(src / "f.txt")]


def test_files_from_and_files_from_raw(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": {"x": b"1"}, "b": {"y": b"2"}, "c": b"3", os.fsdecode(b"n\xffme"): b"4"})
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"{src / 'a'}\n# a comment\n\n{src / 'c'}\r\n".encode())
    raw = tmp_path / "list.raw"
    raw.write_bytes(os.fsencode(src / "b") + b"\0" + os.fsencode(src) + b"/n\xffme\0")
    snap = repo("--json", "backup", "--files-from", listing, "--files-from-raw", raw).json["snapshot_id"]
    got = rel(src, paths_in(repo, snap))
    assert got == {"a", "a/x", "b", "b/y", "c", os.fsdecode(b"n\xffme")}, got
    # restic's rules: lines trimmed, globs expanded (one that matches nothing skipped, with a warning);
    # --files-from-verbatim takes each line as it is
    globs = tmp_path / "globs.txt"
    globs.write_bytes(f"  {src / 'a'}  \n{src / '[bc]'}\n{src / 'nothing-*'}\n".encode())
    res = repo("--json", "backup", "--files-from", globs)
    assert "nothing-*" in res.err and "matches nothing" in res.err
    assert rel(src, paths_in(repo, res.json["snapshot_id"])) == {"a", "a/x", "b", "b/y", "c"}
    verbatim = tmp_path / "verbatim.txt"
    verbatim.write_bytes(f"{src / 'a'}\n\n{src / '[bc]'}\n".encode())
    assert repo("backup", "--files-from-verbatim", verbatim, ok=3).code == 3  # ('[bc]' is no file of that name)
    assert repo("backup", "--files-from", tmp_path / "missing", ok=2).code == 2
    (tmp_path / "empty").write_bytes(b"# nothing\n")
    assert repo("backup", "--files-from", tmp_path / "empty", ok=2).code == 2


def test_case_insensitive_patterns_in_backup_restore_and_find(repo, tmp_path):
    """restic's --iexclude / --iexclude-file (backup), --iinclude / --iexclude (restore) and find -i: the same
    globs, case ignored (Unicode case for UTF-8 names)."""
    src = make_tree(tmp_path / "src", {"a.JPG": b"1", "b.jpg": b"2", "c.Jpg": b"3", "d.png": b"4",
                                       "Cache": {"x": b"x"}, "ÉTÉ.txt": b"e", "keep.txt": b"k"})
    ex = tmp_path / "ex"
    ex.write_text("# comment\n/**/CACHE\n")
    repo("backup", src, "--iexclude", "*.jpg", "--iexclude-file", ex, "--iexclude", "été.TXT")
    names = {os.path.basename(line) for line in repo("ls", "latest").out.split()}
    assert {"a.JPG", "b.jpg", "c.Jpg", "Cache", "x", "ÉTÉ.txt"}.isdisjoint(names) and {"d.png", "keep.txt"} <= names
    repo("backup", src)
    r = tmp_path / "r"
    repo("restore", "latest", "--target", r, "--iinclude", "*.JPG", "--iexclude", "A.*")
    got = sorted(p.name for p in r.rglob("*") if p.is_file())
    assert got == ["b.jpg", "c.Jpg"]
    found = repo("find", "-i", "*.JPG").out
    assert found.count(".jpg") + found.count(".JPG") + found.count(".Jpg") == 3 and "d.png" not in found
    assert "b.jpg" not in repo("find", "*.JPG").out
    assert repo("backup", "--stdin", "--iexclude", "x", ok=2).err.count("--iexclude") == 1
