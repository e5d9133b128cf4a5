"""restore SNAPSHOT:PATH (restic's syntax): one directory's content straight into the target."""

from __future__ import annotations

from conftest import assert_trees_equal, make_tree


def test_restore_a_directory_of_a_snapshot_into_the_target_itself(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"www": {"index.html": b"<html>", "img": {"a.png": b"png"}, "x.tmp": b"t"},
                                       "other": {"f": b"f"}})
    sid = repo("--json", "backup", src).json["snapshot_id"]
    repo("restore", f"latest:{src / 'www'}", "--target", tmp_path / "r1")
    assert_trees_equal(src / "www", tmp_path / "r1")  # (its content, not /.../src/www below the target)
    repo("restore", f"{sid[:8]}:{src / 'www'}", "--target", tmp_path / "r2", "--exclude", "*.tmp",
         "--include", "/img")  # (patterns are paths within the directory)
    assert sorted(p.name for p in (tmp_path / "r2").rglob("*")) == ["a.png", "img"]
    assert repo("restore", f"latest:{src / 'www' / 'index.html'}", "--target", tmp_path / "r3", ok=1).err.count(
        "vault dump") == 1
    assert repo("restore", f"latest:{src / 'nope'}", "--target", tmp_path / "r4", ok=1).code == 1
    assert repo("restore", "latest:", "--target", tmp_path / "r5", ok=2).code == 2
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4").exists()


def test_snapshot_colon_slash_is_the_whole_snapshot(repo, tmp_path):
    """`latest:/` restored only the content of the snapshot's first top-level directory (exit 0)."""
    one = make_tree(tmp_path / "one", {"f": b"1"})
    two = make_tree(tmp_path / "two", {"g": b"2"})
    repo("backup", one, two)
    repo("restore", "latest:/", "--target", tmp_path / "r1")
    repo("restore", "latest", "--target", tmp_path / "r2")
    assert_trees_equal(tmp_path / "r2", tmp_path / "r1")
    assert (tmp_path / "r1" / str(two).lstrip("/") / "g").read_bytes() == b"2"


def test_what_a_subtree_restore_names_is_named_by_its_path_in_the_snapshot(repo, tmp_path):
    """`restore ID:/srv/www` named a file it could not restore "/sub/b": neither its path in the snapshot nor
    in the target, and it looked like a path on this machine."""
    src = make_tree(tmp_path / "src", {"www": {"sub": {"b": b"b", "c": b"c"}}})
    repo("backup", src)
    (tmp_path / "r" / "sub" / "b").mkdir(parents=True)  # (a directory in the way of file b)
    res = repo("--json", "restore", f"latest:{src / 'www'}", "--target", tmp_path / "r", ok=1).json
    assert [e["path"] for e in res["errors"]] == [str(src / "www" / "sub" / "b")], res
    assert (tmp_path / "r" / "sub" / "c").read_bytes() == b"c"
