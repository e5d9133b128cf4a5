"""The smallest end-to-end promise: back up a tree, restore it byte- and metadata-identical."""

from conftest import Hardlink, Symlink, assert_trees_equal, make_tree


def test_backup_restore_roundtrip(repo, tmp_path):
    src = make_tree(tmp_path / "src", {
        "a.txt": b"hello\n", "empty": b"", "dir": {"b.bin": bytes(range(256)) * 5000, "sub": {}},
        "link": Symlink("a.txt"), "dangling": Symlink("nowhere"), "hard": Hardlink("a.txt"),
    })
    out = repo("--json", "backup", src).json
    assert out["files_new"] == 4 and out["snapshot_id"]
    repo("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def test_second_backup_reads_nothing(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"x" * 1000, "b": {"c": b"y" * 10}})
    repo("backup", src)
    out = repo("--json", "backup", src).json
    assert (out["files_new"], out["files_changed"], out["files_unmodified"]) == (0, 0, 2)
