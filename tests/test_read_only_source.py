"""A repository on a read-only mount (an offsite disk mounted ro, read-only S3 credentials) can still feed
every command that only reads it: restore and dump, copy (as the source) and repair --from-repo (as the
copy healed from), with --no-lock; without it the lock failure names --no-lock."""
import subprocess

from conftest import FAST_INIT, Cli, assert_trees_equal, make_tree, tmpfs


def _read_only(mnt) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_read_only_repository_feeds_restore_dump_copy_and_repair(tmp_path, capfd):
    src = make_tree(tmp_path / "src", {"a": b"alpha" * 5000, "d": {"b": b"beta" * 3000}})
    with tmpfs(tmp_path / "ro", "32m") as mnt:
        first = Cli(capfd, mnt / "repo", tmp_path / "cache")
        first("init", *FAST_INIT)
        first("backup", src)
        second = Cli(capfd, tmp_path / "second", tmp_path / "cache")
        second("init", *FAST_INIT)
        first("copy", "--to", second.repo)
        _read_only(mnt)

        for args in (("restore", "latest", "--target", tmp_path / "r0"), ("dump", "latest", f"{src}/a"),
                     ("copy", "--to", tmp_path / "third")):
            res = first(*args, ok=1)
            assert "--no-lock" in res.err and "Traceback" not in res.err, res.err
        first("--no-lock", "restore", "latest", "--target", tmp_path / "r1")
        assert_trees_equal(src, tmp_path / "r1" / src.relative_to("/"))
        assert first("--no-lock", "dump", "latest", f"{src}/a").out == "alpha" * 5000

        # copy from the read-only repository into a new one: complete, and it restores
        third = Cli(capfd, tmp_path / "third", tmp_path / "cache")
        third("init", *FAST_INIT)
        first("--no-lock", "copy", "--to", third.repo)
        third("restore", "latest", "--target", tmp_path / "r2")
        assert_trees_equal(src, tmp_path / "r2" / src.relative_to("/"))

        # the second repository loses its packs: healed from the read-only one
        for pack in (second.repo / "data").rglob("*"):
            if pack.is_file():
                pack.unlink()
        second("verify", ok=20)
        res = second("repair", "--from-repo", first.repo, ok=1)
        assert "--no-lock" in res.err and "--from-repo" in res.err, res.err
        second("--no-lock", "repair", "--from-repo", first.repo)
        second("verify", "--read-data")
        second("restore", "latest", "--target", tmp_path / "r3")
        assert_trees_equal(src, tmp_path / "r3" / src.relative_to("/"))
