"""vault tag: change a snapshot's tags (restic's tag); the old manifest is let go, not lost."""

from __future__ import annotations

import shutil

from conftest import FAST_INIT, make_tree


def test_tag_add_remove_set_keeps_the_state_and_copy_knows_it(cli, tmp_path):
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"data"})
    first = cli("--json", "backup", src, "--tag", "nightly", "--time", "2026-01-01T10:00:00Z").json["snapshot_id"]
    cli("backup", src, "--time", "2026-01-02T10:00:00Z")
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    res = cli("--json", "tag", "--add", "release,keep", first[:8]).json
    ((old, new, tags),) = [(c["old"], c["new"], c["tags"]) for c in res["changed"]]
    assert old == first and new != first and tags == ["keep", "nightly", "release"]
    snaps = {s["id"]: s for s in cli("--json", "snapshots").json}
    assert first not in snaps and snaps[new]["tags"] == tags and snaps[new]["time"].startswith("2026-01-01T10:00:00")
    # the same tree: restores as before; forget --keep-tag sees the new tag
    cli("restore", new, "--target", tmp_path / "r")
    assert (tmp_path / "r" / str(src).lstrip("/") / "f").read_bytes() == b"data"
    assert cli("--json", "tag", "--add", "release", new).json["unchanged"] == [new]
    third = cli("--json", "tag", "--remove", "keep", "--remove", "nightly", new).json["changed"][0]
    assert third["tags"] == ["release"]
    assert cli("--json", "tag", "--set", "", third["new"]).json["changed"][0]["tags"] == []
    assert cli("--json", "tag", "--set", "a", "--set", "b", "latest").json["changed"][0]["tags"] == ["a", "b"]
    # nothing is called lost, from this catalog or a new one; the mirror still has it: copy skips it
    assert cli("--json", "verify").json["ok"] is True
    shutil.rmtree(cli.cache)
    assert cli("--json", "verify").json["ok"] is True
    again = cli("--json", "copy", "--to", second).json
    assert again["copied"] == [] and len(again["skipped"]) == 2, again
    # usage
    assert cli("tag", "latest", ok=2).code == 2
    assert cli("tag", "--set", "a", "--add", "b", "latest", ok=2).code == 2
    assert cli("tag", "--add", "x", "ffffffff", ok=1).code == 1


def test_copy_warns_when_a_snapshot_was_retagged_since_it_was_copied(cli, tmp_path):
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"data"})
    cli("backup", src)
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    assert "other tags" not in cli("copy", "--to", second).err
    cli("tag", "--add", "release", "latest")
    res = cli("copy", "--to", second)
    assert "1 snapshot(s) already there have other tags" in res.err and " tag ... " in res.err, res.err
    assert len(cli("--json", "copy", "--to", second).json["tags_differ"]) == 1


def test_ctrl_c_right_after_the_new_manifest_is_written_still_lets_the_old_one_go(cli, tmp_path, monkeypatch):
    """A Ctrl-C landing between the retagged manifest's write and the old one's delete left both snapshots (the
    same time and tree; retention and copy then saw two). It now takes effect once that snapshot is done."""
    import signal

    from vault.repository import Repository

    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"x"})
    old = cli("--json", "backup", src).json["snapshot_id"]
    real = Repository.commit_snapshot

    def commit_then_ctrl_c(self, *a, **k):
        sid = real(self, *a, **k)
        signal.raise_signal(signal.SIGINT)
        return sid

    monkeypatch.setattr(Repository, "commit_snapshot", commit_then_ctrl_c)
    cli("tag", "--add", "x", "latest", ok=130)
    monkeypatch.setattr(Repository, "commit_snapshot", real)
    snaps = cli("--json", "snapshots").json
    assert [s["tags"] for s in snaps] == [["x"]] and snaps[0]["id"] != old


def test_without_snapshot_ids_the_filters_choose_as_restic_tag_does(cli, tmp_path):
    """restic's `tag --add X --host H` retags every snapshot of host H (every snapshot with no filter); vault
    refused any call without ids (usage error)."""
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"data"})
    for host in ("h1", "h1", "h2"):
        cli("backup", src, "--host", host)
    res = cli("--json", "tag", "--add", "weekly", "--host", "h1").json
    assert len(res["changed"]) == 2 and res["unchanged"] == []
    assert sorted((s["host"], s["tags"]) for s in cli("--json", "snapshots").json) == [
        ("h1", ["weekly"]), ("h1", ["weekly"]), ("h2", [])]
    res = cli("--json", "tag", "--add", "all").json
    assert len(res["changed"]) == 3
    assert cli("--json", "tag", "--remove", "weekly", "--tag", "weekly,all", "--host", "h1").json["unchanged"] == []
    assert [s["tags"] for s in cli("--json", "snapshots").json] == [["all"]] * 3
    assert "0 snapshot(s) changed" in cli("tag", "--add", "x", "--host", "nobody").out


def test_a_tag_that_fails_after_writing_the_new_manifest_says_so_and_a_second_run_does_not_write_it_twice(
        cli, tmp_path, monkeypatch):
    """A full disk on the logs/ record after the retagged manifest was written: exit 1 with no word of the new
    snapshot, and the same command run again wrote a second retagged copy (two snapshots of one state, forever)."""
    from vault.errors import VaultError
    from vault.repository import Repository

    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"x"})
    old = cli("--json", "backup", src).json["snapshot_id"]
    real = Repository.save_log

    def full_disk(self, *a, **k):
        raise VaultError("disk full writing logs/x")

    monkeypatch.setattr(Repository, "save_log", full_disk)
    res = cli("tag", "--add", "x", old[:8], ok=1)
    assert "already written anew" in res.err and "run the same 'vault tag' again" in res.err, res.err
    monkeypatch.setattr(Repository, "save_log", real)
    assert sorted(s["tags"] for s in cli("--json", "snapshots").json) == [[], ["x"]]
    new = cli("--json", "tag", "--add", "x", old[:8]).json["changed"][0]["new"]
    snaps = cli("--json", "snapshots").json
    assert [(s["id"], s["tags"]) for s in snaps] == [(new, ["x"])]
    assert cli("--json", "verify").json["ok"] is True
    # another change than the failed one: the old one is let go, the change applies to the one written anew
    for args, want in ((["--set", "final", "latest"], ["final"]), (["--remove", "z", "latest"], ["final"]),
                       (["--add", "w", "OLD"], ["final", "w", "z"])):
        monkeypatch.setattr(Repository, "save_log", full_disk)
        cli("tag", "--add", "z", "latest", ok=1)
        monkeypatch.setattr(Repository, "save_log", real)
        assert len(cli("--json", "snapshots").json) == 2
        first = next(s["id"] for s in cli("--json", "snapshots").json if "z" not in s["tags"])
        cli("tag", *(first[:8] if a == "OLD" else a for a in args))
        assert [s["tags"] for s in cli("--json", "snapshots").json] == [want], args
    cli("tag", "--set", "x", "latest")
    # the same with `latest`, which may name either of the two (the same time): the old one is let go all the same
    for _ in range(6):
        monkeypatch.setattr(Repository, "save_log", full_disk)
        cli("tag", "--add", "y", "latest", ok=1)
        monkeypatch.setattr(Repository, "save_log", real)
        cli("tag", "--add", "y", "latest")
        assert [s["tags"] for s in cli("--json", "snapshots").json] == [["x", "y"]]
        cli("tag", "--remove", "y", "latest")
