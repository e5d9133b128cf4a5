"""Integrity and recovery: each kind of damage is found by verify (exit 20, object, snapshot and files named),
unaffected files still restore, and `repair` brings the repository back to a clean verify with every file whose
data still exists restorable; `repair --from-repo` heals everything from a copy; verify subsets cover every pack;
a new machine with only the repository and the password restores."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import FAST_INIT, PASSWORD, assert_trees_equal, make_tree
from test_damage import layout, pack_path

from vault.backend.local import LocalBackend
from vault.pack import DATA
from vault.repository import Repository

MiB = 1 << 20


@pytest.fixture
def setup(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(99)
    spec = {f"f{i}.bin": rnd.randbytes(MiB + rnd.randrange(200_000)) for i in range(6)}
    spec["small"] = {f"s{i}.txt": f"small {i}\n".encode() * 20 for i in range(4)}
    src = make_tree(tmp_path / "src", spec)
    cli("backup", src, "--time", "2026-03-01T10:00:00Z")
    return src, layout(cli.repo)


def data_pack_of(lay, suffix: str) -> bytes:
    f = next(f for f in lay.files if f.endswith(suffix))
    return lay.blocks[lay.files[f][0]][0]


def restored_files(cli, tmp_path, name: str, spec: str = "latest") -> dict[str, bytes]:
    target = tmp_path / name
    cli("restore", spec, "--target", target)
    out = {}
    for d, _, names in os.walk(target):
        for n in names:
            p = os.path.join(d, n)
            out[p[len(str(target)):]] = Path(p).read_bytes()
    return out


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def test_flipped_byte_then_repair(cli, tmp_path, setup):
    src, lay = setup
    pid = data_pack_of(lay, "/f2.bin")
    victim = min((e for p, e in lay.blocks.values() if p == pid), key=lambda e: e.offset)
    flip(pack_path(cli.repo, pid), victim.offset + 10)
    lost = {f for f, bids in lay.files.items() if victim.block_id in bids}
    rep = cli("--json", "verify", "--read-data", ok=20).json
    assert any(pid.hex() in d["object"] for d in rep["damage"])
    assert any(set(d["files"]) >= lost and lay.snapshot[:8] in d["snapshots"] for d in rep["damage"])
    res = cli("--json", "repair", "--read-data").json
    in_pack = sum(1 for p, _e in lay.blocks.values() if p == pid)
    assert res["verify"]["ok"] is True and res["blocks_lost"] == 1 and res["blocks_salvaged"] == in_pack - 1
    assert set(res["files_dropped"]) == lost
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    got = restored_files(cli, tmp_path, "r")
    for f in lay.files:
        if f in lost:
            assert f not in got
        else:
            assert got[f] == Path(f).read_bytes(), f
    snaps = cli("--json", "snapshots").json
    assert [s["tags"] for s in snaps if s["id"] != lay.snapshot] == [["repaired"]]
    # the damaged pack repair left out of the index (for prune) is never adopted by a later backup, on this
    # machine or a new one: verify stays green
    for cache in (None, tmp_path / "new-machine-cache"):
        if cache is not None:
            cli.cache = cache
        assert cli("--json", "backup", src).json["packs_adopted"] == 0
        assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_a_repaired_original_whose_data_a_later_backup_stored_again_is_called_whole(cli, tmp_path, setup):
    """verify said "references lost data and was repaired" of the original for ever, also once the next backup
    had stored the lost block again and the original restored whole (exit 0)."""
    src, lay = setup
    pid = data_pack_of(lay, "/f2.bin")
    victim = min((e for p, e in lay.blocks.values() if p == pid), key=lambda e: e.offset)
    flip(pack_path(cli.repo, pid), victim.offset + 10)
    cli("repair", "--read-data")
    info = cli("--json", "verify").json["info"]
    assert any(lay.snapshot[:8] in i and "references lost data" in i for i in info), info
    new = next(s["short_id"] for s in cli("--json", "snapshots").json if "repaired" in s["tags"])
    assert any(f"repaired as {new} (tagged 'repaired')" in i for i in info), info  # (which one is which)
    cli("backup", src)  # (the same files: the lost block is stored again)
    rep = cli("--json", "verify", "--read-data").json
    assert rep["ok"] is True
    assert not any("references lost data" in i for i in rep["info"]), rep["info"]
    assert any(lay.snapshot[:8] in i and "restores whole" in i for i in rep["info"]), rep["info"]
    assert restored_files(cli, tmp_path, "whole", lay.snapshot) == {f: Path(f).read_bytes() for f in lay.files}


def test_latest_takes_a_repaired_original_again_once_it_restores_whole(cli, tmp_path, setup):
    """`restore latest` and `--at` took repair's replacement (without the file whose data was lost) even after
    a copy healed the lost block and the original restored whole: that file was left out for nothing."""
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    pid = data_pack_of(lay, "/f2.bin")
    victim = min((e for p, e in lay.blocks.values() if p == pid), key=lambda e: e.offset)
    flip(pack_path(cli.repo, pid), victim.offset + 10)
    cli("repair", "--read-data")  # (no copy named: the file is dropped, a replacement written)
    (lost,) = [f for f, bids in lay.files.items() if victim.block_id in bids]  # (f2, or f1 if their pack is shared)
    assert lost not in restored_files(cli, tmp_path, "before")
    cli("repair", "--from-repo", second)  # the lost block comes back from the copy
    whole = {f: Path(f).read_bytes() for f in lay.files}
    for spec in ("latest", "--at=2026-03-01T10:00:00Z"):
        target = tmp_path / spec[:6]
        res = cli("restore", spec, "--target", target)
        assert f"snapshot {lay.snapshot[:8]} was repaired as" in res.err and "restores whole" in res.err, res.err
        assert "replacement of" not in res.err
        got = {str(p)[len(str(target)):]: p.read_bytes() for p in target.rglob("*") if p.is_file()}
        assert got == whole, sorted(got)
    assert cli("--json", "restore", "latest", "--target", tmp_path / "j").json["snapshot_id"] == lay.snapshot


def test_restoring_repairs_replacement_says_what_it_lacks(cli, tmp_path, setup):
    """After `repair --read-data`, `restore latest` (and --at) takes repair's replacement: it restored without the
    lost files, exit 0, not a word (operations.md's disaster recovery: "a damaged file is named"). It now says
    which snapshot it replaced and how many files were dropped, even with -q; exit 0 (what it holds is whole)."""
    src, lay = setup
    pid = data_pack_of(lay, "/f2.bin")
    victim = min((e for p, e in lay.blocks.values() if p == pid), key=lambda e: e.offset)
    flip(pack_path(cli.repo, pid), victim.offset + 10)
    cli("repair", "--read-data")
    for args in (["-q", "restore", "latest"], ["-q", "restore", "--at", "2026-03-01T10:00:00Z"]):
        res = cli(*args, "--target", tmp_path / args[-1][:6])
        assert f"replacement of {lay.snapshot[:8]}, without 1 file(s) lost then" in res.err, res.err
    out = cli("--json", "restore", "latest", "--target", tmp_path / "j").json
    assert out["repaired_from"] == lay.snapshot


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_pack_then_repair(cli, tmp_path, setup, damage):
    src, lay = setup
    pid = data_pack_of(lay, "/f4.bin")
    path = pack_path(cli.repo, pid)
    if damage == "truncate":
        os.chmod(path, 0o644)
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.unlink()
    lost = lay.files_using(lambda p, e: p == pid)
    assert lost and len(lost) < len(lay.files)
    assert cli("--json", "verify", ok=20).json["ok"] is False
    before = sorted(p.name for p in cli.repo.rglob("*"))
    dry = cli("--json", "repair", "--dry-run").json  # a preview of what the real run drops, changing nothing
    assert sorted(p.name for p in cli.repo.rglob("*")) == before
    res = cli("--json", "repair").json
    assert res["verify"]["ok"] is True
    assert sorted(dry["files_dropped"]) == sorted(res["files_dropped"]) and res["files_dropped"]
    assert [s["files_dropped"] for s in dry["snapshots_rewritten"]] == [s["files_dropped"] for s in res["snapshots_rewritten"]]
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    got = restored_files(cli, tmp_path, "r")
    for f in lay.files:
        if f not in lost:
            assert got[f] == Path(f).read_bytes(), f
    assert not (set(got) & (lost - lay.files_using(lambda p, e: p == pid and damage == "truncate")))


def _listing(repo: Path) -> list:
    return sorted((str(p.relative_to(repo)), p.stat().st_size) for p in repo.rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["index deleted", "tree packs lost, a copy heals them"])
def test_dry_run_on_a_new_machine_predicts_the_real_run(cli, tmp_path, setup, damage):
    """repair --dry-run with a new cache (no cached trees): it loads the trees the new index would locate, and
    those a copy would heal, so it predicts exactly what the real run does -- and changes nothing."""
    src, lay = setup
    extra = []
    if damage == "index deleted":
        for seg in (cli.repo / "index").iterdir():
            seg.unlink()
    else:
        second = tmp_path / "second"
        cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
        cli("copy", "--to", second)
        for p in {p for p, e in lay.blocks.values() if e.kind != DATA}:
            pack_path(cli.repo, p).unlink()
        extra = ["--from-repo", second]
    shutil.rmtree(cli.cache)
    before = _listing(cli.repo)
    dry = cli("--json", "repair", *extra, "--dry-run").json
    assert _listing(cli.repo) == before
    shutil.rmtree(cli.cache)
    res = cli("--json", "repair", *extra).json
    assert res["verify"]["ok"] is True
    keys = ("blocks_healed", "trees_healed", "files_dropped")
    assert [dry[k] for k in keys] == [res[k] for k in keys] and res["files_dropped"] == []
    assert dry["snapshots_rewritten"] == res["snapshots_rewritten"] == []


def test_deleted_index_segment_then_repair(cli, tmp_path, setup):
    src, lay = setup
    for seg in (cli.repo / "index").iterdir():
        seg.unlink()
    shutil.rmtree(cli.cache)
    rep = cli("--json", "verify", ok=20).json
    assert any(d["object"].startswith("tree ") or d["object"].startswith("block ") for d in rep["damage"])
    res = cli("--json", "repair", "index").json
    assert res["verify"]["ok"] is True and res["files_dropped"] == []
    got = restored_files(cli, tmp_path, "r")
    for f in lay.files:
        assert got[f] == Path(f).read_bytes()


def test_corrupt_snapshot_manifest_then_repair(cli, tmp_path, setup):
    """Without a copy the manifest cannot come back, but its data can: the orphaned directory tree becomes a
    snapshot tagged 'recovered' that restores every file."""
    src, lay = setup
    manifest = cli.repo / "snapshots" / lay.snapshot
    flip(manifest, 40)
    rep = cli("--json", "verify", ok=20).json
    assert any(lay.snapshot in d["object"] for d in rep["damage"])
    res = cli("--json", "repair").json
    assert res["verify"]["ok"] is True
    (snap,) = cli("--json", "snapshots").json
    assert snap["tags"] == ["recovered"]
    got = restored_files(cli, tmp_path, "r")
    for f in lay.files:
        assert got[f] == Path(f).read_bytes()


def test_corrupt_key_slot_then_repair(cli, tmp_path, setup):
    pw2 = tmp_path / "pw2"
    pw2.write_text("another password\n")
    cli("key", "add", "--new-password-file", pw2)
    slots = sorted((cli.repo / "keys").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    os.chmod(slots[-1], 0o644)
    slots[-1].write_bytes(b"{not json")
    rep = cli("--json", "verify", ok=20).json
    assert [d["object"] for d in rep["damage"]] == [f"keys/{slots[-1].name}"]
    res = cli("--json", "repair").json
    assert res["verify"]["ok"] is True
    assert not slots[-1].exists() and slots[0].exists()


# --- redundancy: a copy, and healing from it ---------------------------------------------------------------
def test_copy_is_incremental_and_idempotent(cli, tmp_path, setup):
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    first = cli("--json", "copy", "--to", second).json
    assert len(first["copied"]) == 1 and first["blocks_stored"] > 0
    again = cli("--json", "copy", "--to", second).json
    assert again["copied"] == [] and again["skipped"] == [lay.snapshot] and again["blocks_read"] == 0
    # a new backup with one changed file: the next copy reads and stores only the new data
    (src / "f0.bin").write_bytes(random.Random(5).randbytes(300_000))
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    third = cli("--json", "copy", "--to", second).json
    assert len(third["copied"]) == 1 and third["bytes_read"] < 400_000
    # the copy deduplicates like the original (same chunker parameters and seed): about the same size
    size = lambda d: sum(p.stat().st_size for p in (d / "data").rglob("*") if p.is_file())  # noqa: E731
    assert abs(size(second) - size(cli.repo)) < 0.05 * size(cli.repo)
    # the copy stands on its own: its own keys, restores byte-identical, verifies
    snaps = cli("--json", "--repo", second, "snapshots").json
    assert [s["time"][:19] for s in snaps] == ["2026-03-01T10:00:00", "2026-03-02T10:00:00"]
    assert cli("--json", "--repo", second, "verify", "--read-data").json["ok"] is True
    cli("--repo", second, "restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    r = cli("copy", "--to", cli.repo, ok=2)
    assert "same repository" in r.err
    # copying back (the second's snapshots are copies of the first's): nothing is copied twice
    back = cli("--json", "--repo", second, "copy", "--to", cli.repo).json
    assert back["copied"] == [] and len(back["skipped"]) == 2
    assert len(cli("--json", "snapshots").json) == 2


@pytest.mark.parametrize("cache", ["another host's", "the same"])
def test_two_overlapping_copies_write_each_snapshot_once(cli, tmp_path, setup, monkeypatch, cache):
    """Two copies to the same destination at the same time (two hosts, or cron overlapping a manual run) both
    wrote every snapshot, exit 0 both: the mirror held each twice, and its retention kept fewer states."""
    from vault.copier import Copier

    src, _ = setup
    (src / "f0.bin").write_bytes(random.Random(6).randbytes(200_000))
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    real = Copier._checkpoint
    other = []

    def another_copy_meanwhile(self):
        real(self)
        if not other:  # (the other copy runs while this one has copied its first snapshot's data)
            where = ["--cache-dir", tmp_path / "other-host-cache"] if cache == "another host's" else []
            other.append(cli.proc(*where, "copy", "--to", second))  # (the same: the catalog is shared too)

    monkeypatch.setattr(Copier, "_checkpoint", another_copy_meanwhile)
    res = cli("--json", "copy", "--to", second).json
    monkeypatch.undo()
    assert other and other[0].returncode == 0, other[0].stderr
    assert res["copied"] == [] and len(res["skipped"]) == 2, res
    assert len(cli("--json", "--repo", second, "snapshots").json) == 2
    assert cli("--json", "--repo", second, "verify").json["ok"] is True


def test_a_copy_that_wrote_and_finished_while_another_wrote_the_same_is_settled(cli, tmp_path, setup, monkeypatch):
    """The other copy wrote the same snapshot after this one's first look and finished (its second look saw
    nothing yet; or it was killed before it): the rule "the larger id takes itself back" left both when this
    one's id was the smaller. Whoever looks last now keeps the smallest id and takes back the others."""
    from vault.repository import Repository

    src, lay = setup
    for day in range(2, 7):
        (src / "f0.bin").write_bytes(random.Random(day).randbytes(50_000))
        cli("backup", src, "--time", f"2026-03-0{day}T10:00:00Z")
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    real = Repository.commit_snapshot

    def the_other_copy_first(self, snap, check_lock, operation):
        if operation == "copy":  # (the same snapshot, written and finished by another host's copy just now)
            p = cli.proc("--cache-dir", tmp_path / "other-host-cache", "copy", snap.summary["copied_from"],
                         "--to", second)
            assert p.returncode == 0, p.stderr
        return real(self, snap, check_lock, operation)

    monkeypatch.setattr(Repository, "commit_snapshot", the_other_copy_first)
    cli("copy", "--to", second)
    monkeypatch.undo()
    snaps = cli("--json", "--repo", second, "snapshots").json
    assert sorted(s["time"] for s in snaps) == sorted(s["time"] for s in cli("--json", "snapshots").json)
    assert cli("--json", "--repo", second, "verify").json["ok"] is True


def test_heal_from_a_copy(cli, tmp_path, setup):
    src, lay = setup
    second = tmp_path / "second"
    pw2 = tmp_path / "pw2"
    pw2.write_text("the copy's own password\n")
    cli.extra.update({"VAULT_TO_PASSWORD_FILE": str(pw2)})
    pw1 = tmp_path / "pw1"
    pw1.write_text(PASSWORD + "\n")
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo, "--password-file", pw2,
        "--from-password-file", pw1)
    cli("copy", "--to", second)
    # damage the first: delete a data pack, flip a byte in another, delete every tree pack and the index
    data_packs = sorted({p for p, e in lay.blocks.values() if e.kind == DATA})
    pack_path(cli.repo, data_packs[0]).unlink()
    e = min((e for p, e in lay.blocks.values() if p == data_packs[-1]), key=lambda e: e.offset)
    flip(pack_path(cli.repo, data_packs[-1]), e.offset + 5)
    for p in {p for p, e in lay.blocks.values() if e.kind != DATA}:
        pack_path(cli.repo, p).unlink()
    for seg in (cli.repo / "index").iterdir():
        seg.unlink()
    assert cli("--json", "verify", "--read-data", ok=20).json["ok"] is False
    # a mirror that cannot be opened (absent, wrong password) fails the run before anything here is changed
    before = _listing(cli.repo)
    res = cli("repair", "--from-repo", tmp_path / "nowhere", "--from-password-file", pw2, ok=10)
    assert "--from-repo" in res.err
    res = cli("repair", "--from-repo", second, "--from-password-file", pw1, ok=12)
    assert "--from-repo" in res.err and "wrong password" in res.err
    assert _listing(cli.repo) == before
    dry = cli("--json", "repair", "--from-repo", second, "--from-password-file", pw2, "--dry-run").json
    res = cli("--json", "repair", "--from-repo", second, "--from-password-file", pw2).json
    assert res["verify"]["ok"] is True and res["blocks_healed"] >= 1 and res["files_dropped"] == []
    # the dry run foresaw it: the same blocks and trees healed, nothing dropped
    assert (dry["blocks_healed"], dry["trees_healed"], dry["files_dropped"]) == (
        res["blocks_healed"], res["trees_healed"], [])
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    cli("restore", lay.snapshot, "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def _copy_losing_its_listings_and_a_pack_lost_here(cli, tmp_path, lay):
    """A copy made, every tree pack of it deleted, a data pack of this repository (f2.bin's) deleted, and the cache
    emptied (a new machine: no listing of the copy cached here). The copy's path and layout."""
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    theirs = layout(second)
    for p in {p for p, e in theirs.blocks.values() if e.kind != DATA}:
        pack_path(second, p).unlink()
    pack_path(cli.repo, data_pack_of(lay, "f2.bin")).unlink()
    shutil.rmtree(cli.cache)
    return second, theirs


def test_blocks_the_copy_holds_are_healed_even_when_the_copy_lost_the_listings_that_pair_them(cli, tmp_path, setup):
    """The copy lost its directory trees (every tree pack) but holds every data block; this repository lost a data
    pack. Healing paired each snapshot's trees with its copy's, found none, and dropped the files -- "the second
    repository could not supply them", though it stores them. Every pack of the copy is now searched."""
    src, lay = setup
    second, theirs = _copy_losing_its_listings_and_a_pack_lost_here(cli, tmp_path, lay)
    res = cli("--json", "repair", "--from-repo", second).json
    assert res["verify"]["ok"] is True and res["blocks_healed"] >= 1 and res["files_dropped"] == [], res
    assert [s["id"] for s in cli("--json", "snapshots").json] == [lay.snapshot]
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    cli("restore", lay.snapshot, "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    # and the copy heals its lost listings from this repository, whole again
    res = cli("--json", "--repo", second, "repair", "--from-repo", cli.repo).json
    assert res["verify"]["ok"] is True and res["trees_healed"] >= 1 and res["files_dropped"] == [], res


def test_a_copy_that_lost_its_listings_heals_from_a_repository_that_lost_data_of_the_same_files(cli, tmp_path,
                                                                                                  setup):
    """The copy lost every directory listing, this repository a data pack, and the copy is repaired first: its
    snapshot's root could not be rebuilt whole from here (some data is lost here), so the whole listing was
    dropped -- an empty 'repaired' snapshot, though the copy itself still held that data. The blocks this
    repository lacks are now looked for in the copy's own packs, and nothing is lost."""
    src, lay = setup
    second, theirs = _copy_losing_its_listings_and_a_pack_lost_here(cli, tmp_path, lay)
    res = cli("--json", "--repo", second, "repair", "--from-repo", cli.repo).json
    assert res["verify"]["ok"] is True and res["files_dropped"] == [], res
    assert [s["id"] for s in cli("--json", "--repo", second, "snapshots").json] == [theirs.snapshot]
    cli("--repo", second, "restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    res = cli("--json", "repair", "--from-repo", second).json
    assert res["verify"]["ok"] is True and res["files_dropped"] == [] and res["blocks_healed"] >= 1, res


def test_a_lost_listing_rebuilt_from_a_copy_that_lacks_some_data_drops_only_those_files(cli, tmp_path, setup):
    """The copy lost every listing and one file's data, and this repository lost the same file's data: the copy's
    repair dropped its snapshot's whole root listing (every file). Only that one file is dropped now."""
    src, lay = setup
    second, theirs = _copy_losing_its_listings_and_a_pack_lost_here(cli, tmp_path, lay)
    deleted = {}
    for repo_dir, lay_ in ((second, theirs), (cli.repo, lay)):
        f2 = next(f for f in lay_.files if f.endswith("f2.bin"))
        deleted[repo_dir] = {lay_.blocks[b][0] for b in lay_.files[f2]}
        for p in deleted[repo_dir]:
            pack_path(repo_dir, p).unlink(missing_ok=True)
    # lost: the files one of whose blocks is in a deleted pack on both sides (packs hold blocks of other files too)
    lost = {f for f in lay.files if any(lay.blocks[a][0] in deleted[cli.repo] and theirs.blocks[b][0] in deleted[second]
                                        for a, b in zip(lay.files[f], theirs.files[f]))}
    assert lost and len(lost) < len(lay.files)
    res = cli("--json", "--repo", second, "repair", "--from-repo", cli.repo).json
    assert res["verify"]["ok"] is True, res
    assert set(res["files_dropped"]) == lost, (res["files_dropped"], lost)


def test_a_manifest_deleted_without_a_forget_comes_back_from_the_copy_on_a_new_machine(cli, tmp_path, setup):
    """A manifest deleted from the store (no forget) and a new machine (no catalog that had read it): repair
    --from-repo said clean, and the next prune deleted that snapshot's data. The copy's record of it (copied from
    this very repository, and let go by no forget here) now writes it back. A snapshot forgotten here, and one
    the copy got from a third repository, are not."""
    src, lay = setup
    (src / "f9.bin").write_bytes(os.urandom(300_000))
    second, third = tmp_path / "second", tmp_path / "third"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("init", *FAST_INIT, "--repo", third)
    cli("--repo", third, "backup", make_tree(tmp_path / "other", {"o": b"other"}))
    cli("--repo", third, "copy", "--to", second)
    newest = cli("--json", "backup", src, "--time", "2026-03-02T10:00:00Z").json["snapshot_id"]
    forgotten = cli("--json", "backup", src, "--time", "2026-03-03T10:00:00Z", "--tag", "x").json["snapshot_id"]
    cli("copy", "--to", second)
    cli("forget", forgotten)
    (cli.repo / "snapshots" / newest).unlink()
    shutil.rmtree(cli.cache)
    res = cli("--json", "repair", "--from-repo", second).json
    assert res["verify"]["ok"] is True, res
    (entry,) = [e for e in res["snapshots_rewritten"] if e["old"] == newest]
    assert entry["new"] and entry["healed_from_copy"], res
    # (the text says why: it was deleted, not unreadable)
    snaps = cli("--json", "snapshots").json
    assert sorted(s["time"][:10] for s in snaps) == ["2026-03-01", "2026-03-02"], snaps
    cli("prune")
    cli("restore", entry["new"], "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    # a second run has nothing more to write back, and the copy does not take it for a new snapshot
    again = cli("--json", "repair", "--from-repo", second).json
    assert again["snapshots_rewritten"] == [], again
    assert cli("--json", "copy", "--to", second).json["copied"] == []
    # the same accident again, to the snapshot written back: written back again
    (cli.repo / "snapshots" / entry["new"]).unlink()
    shutil.rmtree(cli.cache)
    res = cli("--json", "repair", "--from-repo", second).json
    (entry,) = [e for e in res["snapshots_rewritten"] if e.get("healed_from_copy")]
    assert sorted(s["time"][:10] for s in cli("--json", "snapshots").json) == ["2026-03-01", "2026-03-02"]
    # the snapshot written back, forgotten on purpose, stays forgotten (the write-back let the old id go in logs/)
    cli("forget", entry["new"])
    shutil.rmtree(cli.cache)
    assert cli("--json", "repair", "--from-repo", second).json["snapshots_rewritten"] == []
    assert [s["time"][:10] for s in cli("--json", "snapshots").json] == ["2026-03-01"]


def test_a_forget_record_that_cannot_be_read_stops_the_write_back_of_deleted_manifests(cli, tmp_path, setup):
    """A bit flipped in the logs/ record of a forget: on a new machine repair --from-repo took the forgotten
    snapshot for one deleted without a forget and wrote it back. With a record unreadable, the forgets are not
    all known: nothing is written back, and the repair says why."""
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    cli("copy", "--to", second)
    cli("forget", lay.snapshot)
    (log,) = list((cli.repo / "logs").iterdir())
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(log, 0o600)
    log.write_bytes(bytes(data))
    shutil.rmtree(cli.cache)
    res = cli("repair", "--from-repo", second)
    assert "cannot be read" in res.err and "not written back" in res.err, res.err
    assert [s["time"][:10] for s in cli("--json", "snapshots").json] == ["2026-03-02"]
    # the repair replaced the damaged record with one that says it was lost: verify is clean, and what it let go
    # stays unknown -- the next repair writes nothing back either
    assert not log.exists() and f"logs/{log.name}" in res.err and "replaced by" in res.err, res.err
    cli("verify")
    res = cli("repair", "--from-repo", second)
    assert "stands for" in res.err and "not written back" in res.err, res.err
    assert [s["time"][:10] for s in cli("--json", "snapshots").json] == ["2026-03-02"]


def test_heal_a_lost_manifest_from_a_copy(cli, tmp_path, setup):
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    (cli.repo / "snapshots" / lay.snapshot).unlink()
    manifest_gone = cli("--json", "snapshots").json
    assert manifest_gone == []
    # a deleted manifest is not damage (forget does that); a corrupt one is: write garbage under its name
    (cli.repo / "snapshots" / lay.snapshot).write_bytes(b"garbage")
    out = cli("repair", "--from-repo", second).out  # (it said "rewrite snapshot X -> Y: 0 file(s) dropped")
    (snap,) = cli("--json", "snapshots").json
    assert f"restored snapshot {lay.snapshot[:8]} (manifest unreadable) from the copy's" in out
    assert f"as {snap['short_id']}: a new id" in out and "verify after repair: no errors found" in out
    assert snap["time"].startswith("2026-03-01T10:00:00") and "recovered" not in snap["tags"]
    cli("restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))
    # the nightly copy that follows does not copy the healed manifest back as a second snapshot
    out = cli("--json", "copy", "--to", second).json
    assert out["copied"] == [] and len(out["skipped"]) == 1, out
    assert len(cli("--json", "--repo", second, "snapshots").json) == 1
    # nor does copying back from the mirror: its snapshot is the one the healed manifest was restored from
    out = cli("--json", "--repo", second, "copy", "--to", cli.repo).json
    assert out["copied"] == [] and len(out["skipped"]) == 1, out
    assert len(cli("--json", "snapshots").json) == 1


def test_copies_of_copies_are_never_copied_back_as_second_snapshots(cli, tmp_path, setup):
    """A -> B -> C, then C -> A (or C -> B): every snapshot there is one A (B) holds already, however many
    copies back."""
    src, lay = setup
    b, c = tmp_path / "b", tmp_path / "c"
    for r in (b, c):
        cli("init", *FAST_INIT, "--repo", r, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", b)
    cli("--repo", b, "copy", "--to", c)
    for target in (cli.repo, b):
        out = cli("--json", "--repo", c, "copy", "--to", target).json
        assert out["copied"] == [] and len(out["skipped"]) == 1, out
        assert len(cli("--json", "--repo", target, "snapshots").json) == 1


# --- coverage: 20 nightly 5% subsets read every pack -------------------------------------------------------
def test_twenty_subset_runs_read_every_pack(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(1)
    src = make_tree(tmp_path / "src", {f"f{i}": rnd.randbytes(700_000) for i in range(45)})
    cli("backup", src)
    read = 0
    for night in range(20):
        out = cli("--json", "verify", "--read-data-subset", "5%").json
        assert out["ok"] is True
        read += out["packs_read"]
    (db,) = list(Path(cli.cache).rglob("catalog.db"))
    rows = sqlite3.connect(db).execute("SELECT count(*), count(verified_at) FROM packs").fetchone()
    assert rows[0] >= 20 and rows[0] == rows[1], rows
    cov = cli("--json", "verify", "--read-data-subset", "5%").json["coverage"]
    assert cov["packs_never_read"] == 0 and cov["all_read_within_days"] is not None


def test_max_bytes_caps_what_verify_reads(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    src = make_tree(tmp_path / "src", {f"f{i}": random.Random(i).randbytes(600_000) for i in range(10)})
    cli("backup", src)
    out = cli("--json", "verify", "--max-bytes", "2M").json
    assert 0 < out["bytes_read"] <= 2 * MiB and out["packs_read"] < out["packs"]
    r = cli("verify", "--max-bytes", "lots", ok=2)
    assert "invalid size" in r.err


# --- disaster recovery: only the repository and the password ------------------------------------------------
def test_new_machine_with_only_repository_and_password(cli, tmp_path):
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"etc": {"hosts": b"127.0.0.1 localhost\n", "fstab": b"/ ext4\n"}})
    cli("backup", src, "--time", "2026-05-01T10:00:00Z")
    (src / "etc" / "hosts").write_bytes(b"changed\n")
    cli("backup", src, "--time", "2026-05-02T10:00:00Z")
    shutil.rmtree(cli.cache)
    cli.cache = tmp_path / "brand-new-cache"
    assert len(cli("--json", "snapshots").json) == 2
    cli("restore", "--at", "2026-05-01T12:00:00Z", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    assert json.loads(cli("--json", "stats").out)["snapshots"] == 2
    assert PASSWORD  # the only secret needed


def test_recovering_a_lost_manifest_never_resurrects_a_forgotten_snapshot(cli, tmp_path, setup):
    src, lay = setup
    (src / "f0.bin").write_bytes(b"changed\n")
    second = cli("--json", "backup", src, "--time", "2026-03-02T10:00:00Z").json["snapshot_id"]
    cli("forget", lay.snapshot)  # forgotten, not pruned: its trees are still in the repository
    flip(cli.repo / "snapshots" / second, 40)
    res = cli("--json", "repair").json
    assert res["verify"]["ok"] is True
    snaps = cli("--json", "snapshots").json
    assert [s["tags"] for s in snaps] == [["recovered"]], snaps
    got = restored_files(cli, tmp_path, "r")
    assert got[str(src / "f0.bin")] == b"changed\n"


def test_an_edited_copy_map_row_never_puts_one_files_content_under_another(cli, tmp_path):
    """The destination catalog's map of source to destination block ids was trusted: swapping two rows made the
    next copy store good.txt with secret.txt's content -- exit 0, and the destination verified clean. Its rows
    are sealed now; a row that fails its seal is as if absent."""
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"good.txt": b"G" * 5000, "secret.txt": b"S" * 5000, "changing": b"v1"})
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second)
    cli("backup", src)
    cli("copy", "--to", second)
    (src / "changing").write_bytes(b"v2")
    cli("backup", src)
    def tables(db) -> list[str]:
        return [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE name LIKE 'copy_%'")]

    ((db, names),) = [(db, t) for db in cli.cache.rglob("catalog.db") if (t := tables(db))]
    blocks, trees = sorted(n for n in names if n.startswith("copy_map")), sorted(n for n in names if "trees" in n)
    with sqlite3.connect(db) as conn:
        rows = [(bytes(s), bytes(d)) for s, d in conn.execute(f"SELECT src, dst FROM {blocks[-1]}")]
        sizes = {d: conn.execute("SELECT raw_length FROM blocks WHERE id=?", (d,)).fetchone()[0] for _, d in rows}
        (s1, d1), (s2, d2) = [(s, d) for s, d in rows if sizes[d] == 5000]
        conn.execute(f"UPDATE {blocks[-1]} SET dst=? WHERE src=?", (d2, s1))
        conn.execute(f"UPDATE {blocks[-1]} SET dst=? WHERE src=?", (d1, s2))
        conn.execute(f"DELETE FROM {trees[-1]}")
    cli("copy", "--to", second)
    cli("--repo", second, "restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def test_a_killed_copy_resumes_into_a_sound_destination(cli, tmp_path):
    import subprocess
    import sys

    from conftest import kill_when

    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(8)
    src = make_tree(tmp_path / "src", {f"d{d}": {f"f{i}": rnd.randbytes(300_000) for i in range(12)}
                                       for d in range(8)})
    cli("backup", src)
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--pack-size", "1", "--copy-chunker-params-from", cli.repo)
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "copy", "--to", str(second)],
                         env={**os.environ, **cli.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    data = second / "data"
    kill_when(p, lambda: data.exists() and sum(1 for x in data.rglob("*") if x.is_file()) >= 6, poll=0.001,
              what="the copy")
    left = sum(1 for x in data.rglob("*") if x.is_file() and len(x.name) == 64)
    again = cli("--json", "copy", "--to", second).json
    assert len(again["copied"]) == 1
    # the packs it stored before the kill (no checkpoint yet) are adopted, not sent again
    assert left >= 1 and again["packs_adopted"] >= 1, (left, again)
    assert again["bytes_stored"] <= 8 * 12 * 300_000 - again["packs_adopted"] * 500_000, again
    assert cli("--json", "--repo", second, "verify", "--read-data").json["ok"] is True
    cli("--repo", second, "restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


@pytest.mark.parametrize("cache", ["warm", "fresh"])
def test_a_lost_manifest_whose_tree_a_forgotten_snapshot_shared_is_recovered(cli, tmp_path, setup, cache):
    """Nightly backups of unchanged data share one root tree. When the manifest of the one kept is lost and
    an identical one was forgotten, that tree must still be recovered (it was left out as 'forgotten', and the
    next prune deleted the only copy of its files)."""
    src, lay = setup
    kept = cli("--json", "backup", src, "--time", "2026-03-02T10:00:00Z").json["snapshot_id"]
    cli("forget", lay.snapshot)  # the first one: the same tree as `kept`
    (src / "f0.bin").write_bytes(b"changed\n")
    cli("backup", src, "--time", "2026-03-03T10:00:00Z")
    flip(cli.repo / "snapshots" / kept, 40)
    if cache == "fresh":
        cli.cache = tmp_path / "new-machine-cache"
    out = cli("repair").out  # the text report (it crashed on a recovered tree: internal error, exit 1)
    assert "recover an orphan tree as snapshot" in out, out
    assert cli("--json", "verify").json["ok"] is True
    recovered = [s for s in cli("--json", "snapshots").json if "recovered" in s["tags"]]
    assert len(recovered) == 1, recovered
    cli("prune")
    got = restored_files(cli, tmp_path, "r", recovered[0]["id"])
    assert got[str(src / "f1.bin")] == (src / "f1.bin").read_bytes()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_backup_after_repair_index_stores_lost_data_again(cli, tmp_path, setup, jobs):
    """A pack is lost and only 'repair index' is run (the snapshot is not rewritten): the next backup of the
    unchanged source must not reuse the parent's entries for files whose blocks the index no longer lists --
    it reads them again, so the new snapshot is whole (before, it named the lost blocks: verify exit 20)."""
    from conftest import with_jobs

    src, lay = setup
    pid = data_pack_of(lay, "/f4.bin")
    pack_path(cli.repo, pid).unlink()
    lost = lay.files_using(lambda p, e: p == pid)
    assert lost
    cli("repair", "index", ok=20)  # the old snapshot still names the lost blocks
    res = with_jobs(cli, jobs, "--json", "backup", src).json
    assert res["files_changed"] == len(lost) and res["bytes_added"] > 0
    assert res["files_unmodified"] == len(lay.files) - len(lost)
    new = res["snapshot_id"]
    got = restored_files(cli, tmp_path, "r", new)
    assert {f: got[f] for f in lay.files} == {f: Path(f).read_bytes() for f in lay.files}
    # a re-run now trusts the (re-checked) trees: nothing is read again
    again = with_jobs(cli, jobs, "--json", "backup", src).json
    assert again["files_unmodified"] == len(lay.files) and again["files_changed"] == 0


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_backup_stopped_after_caching_its_trees_leaves_them_unchecked(cli, tmp_path, monkeypatch, jobs):
    """Every pack lost, 'repair index' run. A backup reads sub/f again (its blocks are gone) and so rebuilds the
    parent's very tree for sub; it caches its trees part way (5,000 entries) and is stopped (Ctrl-C) before its
    index is written. The next backup must not trust that tree: it reads f again, and its snapshot is whole
    (the tree was cached as checked at once: f was reused unread and restore found its blocks missing)."""
    from conftest import with_jobs

    from vault import archiver

    cli("init", *FAST_INIT)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(random.Random(1).randbytes(100_000))
    cli("backup", src)
    for d, _, names in os.walk(cli.repo / "data"):
        for n in names:
            os.unlink(os.path.join(d, n))
    cli("repair", "index", ok=20)
    (src / "zbig").mkdir()
    for i in range(5001):
        (src / "zbig" / f"e{i}").write_bytes(b"")
    flush = archiver.Archiver._flush_tree_rows

    def flush_then_ctrl_c(self, force=False):
        n = self._tree_row_nodes
        flush(self, force)
        if not force and n >= 5000:
            raise KeyboardInterrupt

    monkeypatch.setattr(archiver.Archiver, "_flush_tree_rows", flush_then_ctrl_c)
    with_jobs(cli, jobs, "backup", src, ok=130)
    monkeypatch.setattr(archiver.Archiver, "_flush_tree_rows", flush)
    res = with_jobs(cli, jobs, "--json", "backup", src).json
    assert res["files_changed"] >= 1
    cli("restore", res["snapshot_id"], "--target", tmp_path / "out")
    assert (tmp_path / "out" / src.relative_to("/") / "sub" / "f").read_bytes() == (src / "sub" / "f").read_bytes()


def test_repair_asks_for_each_pack_a_listing_missed_before_dropping_it(cli, tmp_path, setup, monkeypatch):
    """A listing of data/ that misses packs (a store's listing cut short, an eventually consistent one): repair
    asked nothing more and rebuilt the index without them, then rewrote every snapshot without their files.
    Each indexed pack the listing lacks is asked for by name first; only one that is really gone is lost."""
    from vault.repository import Repository

    src, lay = setup
    listing = Repository.list_packs
    monkeypatch.setattr(Repository, "list_packs", lambda self: list(listing(self))[:1])
    res = cli("--json", "repair").json
    assert res["packs_missing"] == 0 and res["files_dropped"] == [] and res["verify"]["ok"] is True
    monkeypatch.setattr(Repository, "list_packs", listing)
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    got = restored_files(cli, tmp_path, "r")
    assert all(got[f] == Path(f).read_bytes() for f in lay.files)


def test_a_copy_that_cannot_supply_the_lost_blocks_is_said(cli, tmp_path, setup):
    """The copy damaged too: repair --from-repo healed nothing, dropped files, exit 0, and said nothing of the
    copy ("0 blocks healed", "0 lost"). It now says how many blocks are lost and that the copy could not
    supply them, naming the command that checks it."""
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    data_packs = sorted({p for p, e in lay.blocks.values() if e.kind == DATA})
    pack_path(cli.repo, data_packs[0]).unlink()
    for f in (second / "data").rglob("*"):
        if f.is_file():
            os.truncate(f, 100)
    res = cli("repair", "--from-repo", second)
    assert "could not supply them" in res.err and f"--repo {second} verify --read-data" in res.err
    assert "block(s) that snapshots reference are lost" in res.err
    # the last line does not read as a clean heal (it said "no errors found", as after one)
    assert res.out.strip().splitlines()[-1].endswith("file(s) could not be recovered: dropped from the rewritten "
                                                     "snapshots (listed above)"), res.out


def test_a_healed_damaged_pack_is_deleted_so_a_later_index_repair_stays_clean(cli, tmp_path, setup):
    """repair --from-repo healed the blocks of a pack with a flipped byte but kept the pack ("a copy may still
    heal it"); a later 'repair index' (headers only, as the docs advise for a config problem) listed it again
    and its damaged copy of a block shadowed the healed one: a clean repository turned to exit 20. A kept pack
    whose every block is stored again is now deleted."""
    src, lay = setup
    second = tmp_path / "second"
    cli("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", second)
    data_packs = sorted({p for p, e in lay.blocks.values() if e.kind == DATA})
    e = min((e for p, e in lay.blocks.values() if p == data_packs[0]), key=lambda e: e.offset)
    flip(pack_path(cli.repo, data_packs[0]), e.offset + 5)
    res = cli("repair", "--from-repo", second)
    assert not pack_path(cli.repo, data_packs[0]).exists() and "is kept" not in res.err
    cli.cache = tmp_path / "fresh-cache"
    cli("repair", "index")
    cli("verify", "--read-data")
    cli("restore", lay.snapshot, "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def test_lost_directory_listings_are_stored_again_from_this_machines_catalog(repo, tmp_path):
    """Every tree pack damaged, no copy to heal from: repair declared every listing lost and wrote an empty
    'repaired' snapshot, although this machine's catalog held each tree (sealed when it was validated) -- the
    data was then really lost once that cache went. A cached tree whose canonical encoding gives back its id
    is that very tree: repair stores it again."""
    src = make_tree(tmp_path / "src", {"a": {"f": b"x" * 5000, "g": {"h": b"y" * 7000}}, "top": b"z"})
    repo("backup", src)
    lay = layout(repo.repo)
    tree_packs = {p for p, e in lay.blocks.values() if e.kind == "T"}
    assert tree_packs
    for pid in tree_packs:
        path = pack_path(repo.repo, pid)
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    repo("verify", "--read-data", ok=20)
    res = repo("--json", "repair", "--read-data").json
    assert res["trees_from_cache"] == res["blocks_lost"] >= 1 and res["files_dropped"] == [], res
    repo("verify", "--read-data")
    fresh = tmp_path / "fresh-cache"  # (a new machine: nothing cached)
    repo.extra["VAULT_CACHE_DIR"] = str(fresh)
    repo("restore", "latest", "--target", tmp_path / "out")
    assert_trees_equal(src, tmp_path / "out" / src.relative_to("/"))


def test_repair_from_the_same_repository_is_refused_at_once(cli, tmp_path, setup):
    """--from-repo naming this very repository (another path to it too) is a usage error before any lock is
    asked for: it waited out --lock-wait for its own exclusive lock, then blamed it (exit 11)."""
    link = tmp_path / "same"
    link.symlink_to(cli.repo)
    for other in (cli.repo, link):
        res = cli("--lock-wait", "2s", "repair", "--from-repo", other, ok=2)
        assert "same repository" in res.err and "locked" not in res.err, res.err
    res = cli("--lock-wait", "2s", "copy", "--to", link, ok=2)
    assert "same repository" in res.err
    assert list((cli.repo / "locks").iterdir()) == []


def test_the_nightly_copy_sends_again_what_a_repaired_mirror_lost(cli, tmp_path):
    """The mirror loses a data pack and its repair drops the lost blocks from its index (its trees stay): the
    next copy skipped every unchanged directory it had copied before, so the new snapshot named blocks the
    mirror lacks (verify exit 20, restore exit 20) though the source held them, and copy said nothing."""
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"sub": {"big.bin": random.Random(3).randbytes(3 * MiB)}, "top.txt": b"a\n"})
    cli("backup", src)
    mirror = tmp_path / "mirror"
    cli("init", *FAST_INIT, "--repo", mirror, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", mirror)
    [big] = [p for p in (mirror / "data").rglob("*") if p.is_file() and p.stat().st_size > MiB]
    big.unlink()
    cli("--repo", mirror, "repair")  # (the old snapshot is rewritten without its lost files)
    (src / "top.txt").write_bytes(b"b\n")
    cli("backup", src)
    out = cli("--json", "copy", "--to", mirror).json
    assert len(out["copied"]) == 1 and out["bytes_stored"] >= 3 * MiB, out
    new = out["copied"][0]["destination"]
    cli("--repo", mirror, "restore", new, "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def test_a_manifest_deleted_without_a_forget_is_damage_until_repair_writes_it_again(cli, tmp_path, setup):
    """A snapshot manifest that vanished with no forget (or repair) record letting it go was dropped in
    silence: verify exit 0, repair nothing, and the next prune deleted what only it used. Now verify names it
    (exit 20) and repair writes it again from this machine's catalog; forgets and repairs are not lost ones."""
    src, lay = setup
    (src / "small" / "s0.txt").write_bytes(b"second\n")
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    cli("backup", src, "--time", "2026-03-03T10:00:00Z")
    cli("forget", "--keep-last", "2")  # (recorded: not lost)
    assert cli("--json", "verify").json["ok"] is True
    mirror = tmp_path / "mirror"
    cli("init", *FAST_INIT, "--repo", mirror, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", mirror)
    first, second = cli("--json", "snapshots").json
    (cli.repo / "snapshots" / first["id"]).unlink()
    res = cli("--json", "verify", ok=20)
    assert [d["object"] for d in res.json["damage"]] == [f"snapshots/{first['id'][:8]}"], res.json
    assert "deleted without a forget" in res.json["damage"][0]["problem"]
    assert first["id"][:8] in cli("snapshots").err
    cli("restore", "latest", "--target", tmp_path / "r0")  # (the lost one is older than latest: not passed over)
    dry = cli("repair", "--dry-run").out
    assert f"would write snapshot {first['id'][:8]} again" in dry
    assert cli("--json", "verify", ok=20).json["ok"] is False
    out = cli("repair").out
    assert f"wrote snapshot {first['id'][:8]} again as" in out and "no errors found" in out
    snaps = cli("--json", "snapshots").json
    assert [s["time"] for s in snaps] == [first["time"], second["time"]]
    assert snaps[0]["summary"]["restored_from_catalog"] == first["id"]
    cli("restore", snaps[0]["id"], "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "small" / "s0.txt").read_bytes() == b"second\n"
    assert cli("--json", "verify").json["ok"] is True
    # the mirror holds it already (as the lost id's copy): the nightly copy does not copy it a second time
    out = cli("--json", "copy", "--to", mirror).json
    assert out["copied"] == [] and len(cli("--json", "--repo", mirror, "snapshots").json) == 2, out


def test_a_manifest_repair_removed_is_not_lost_to_a_catalog_that_had_read_it(cli, tmp_path, setup):
    src, lay = setup
    other = ("--cache-dir", tmp_path / "other-cache")
    assert cli(*other, "--json", "snapshots").json  # this other machine reads the manifest while it is whole
    (cli.repo / "snapshots" / lay.snapshot).write_bytes(b"garbage")
    cli("repair")  # removes the unreadable manifest (recovering its tree as a snapshot)
    res = cli(*other, "--json", "verify")
    assert res.json["ok"] is True, res.json


def test_a_huge_object_in_data_never_makes_repair_read_it_whole(cli, tmp_path, setup):
    """A stray 1 GB object named like a pack: `repair --read-data` read it whole, twice at once (2 GB RSS for
    it; 9.4 GB for a 3 GiB one). No pack vault writes is that big: it is now read a block at a time."""
    import subprocess
    import sys

    src, lay = setup
    stray = cli.repo / "data" / "ff" / ("ff" * 32)
    stray.parent.mkdir(exist_ok=True)
    with open(stray, "wb") as f:
        f.truncate(1 << 30)  # (sparse: no disk space)
    out = tmp_path / "out"
    peak = 0  # KiB: the high-water mark of the process's own memory (ru_maxrss would count this test process's
    with open(out, "w") as f:  # RSS at the fork: Linux carries it over the exec)
        p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "repair", "--read-data"], stdout=f,
                             stderr=subprocess.STDOUT, env={**os.environ, **cli.env()})
        while p.poll() is None:
            try:
                status = (Path("/proc") / str(p.pid) / "status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
    text = out.read_text()
    assert p.returncode == 0 and "Traceback" not in text, text
    assert ("ff" * 8) in text
    assert 0 < peak < 300 * 1024, f"peak RSS {peak // 1024} MiB"
    assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_a_lost_manifest_one_machine_repaired_or_a_forget_record_read_late_settles_everywhere(cli, tmp_path, setup):
    """Two machines had read a manifest deleted without a forget: once one repair wrote it again (and recorded
    the old id), the other kept reporting it lost and its repair wrote it a second time. A forget record that
    could not be read at the first sync likewise made a forgotten snapshot lost for good."""
    src, lay = setup
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    b = ("--cache-dir", tmp_path / "machine-b")
    first, second = cli(*b, "--json", "snapshots").json
    (cli.repo / "snapshots" / first["id"]).unlink()
    assert cli(*b, "--json", "verify", ok=20).json["ok"] is False
    assert cli("--json", "verify", ok=20).json["ok"] is False
    cli("repair")
    assert cli(*b, "--json", "verify").json["ok"] is True
    cli(*b, "repair")
    assert len(cli("--json", "snapshots").json) == 2
    # a forget whose record machine b cannot read at its first sync after it
    cli(*b, "snapshots")
    cli("forget", "--keep-last", "1")
    [log] = sorted((cli.repo / "logs").iterdir(), key=lambda p: p.stat().st_mtime)[-1:]
    good = log.read_bytes()
    log.write_bytes(b"not readable now")
    cli(*b, "snapshots")
    log.write_bytes(good)
    assert cli(*b, "--json", "verify").json["ok"] is True
    cli(*b, "repair")
    assert len(cli("--json", "snapshots").json) == 1


def test_a_snapshot_forgotten_while_verify_runs_is_not_damage(cli, tmp_path, setup, monkeypatch):
    """forget and verify both take shared locks: a manifest another machine forgets between verify's sync and
    its reading the manifests again was called damaged (exit 20, "not found"); its forget record lets it go."""
    import subprocess
    import sys

    from vault.checker import Checker

    src, lay = setup
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    first = cli("--json", "snapshots").json[0]["id"]
    real = Checker._load_snapshots

    def a_forget_elsewhere_first(self):
        subprocess.run([sys.executable, "-m", "vault.cli.main", "--cache-dir", str(tmp_path / "elsewhere"), "-q",
                        "forget", first], env={**os.environ, **cli.env()}, check=True)
        return real(self)

    monkeypatch.setattr(Checker, "_load_snapshots", a_forget_elsewhere_first)
    res = cli("--json", "verify")
    assert res.json["ok"] is True and res.json["snapshots"] == 1, res.json
    monkeypatch.setattr(Checker, "_load_snapshots", real)
    assert cli("--json", "verify").json["ok"] is True


@pytest.mark.parametrize("heal", ["catalog", "copy"])
def test_a_lost_manifest_whose_tree_pack_is_lost_too_is_rebuilt_not_let_go(cli, tmp_path, setup, heal):
    """Manifest deleted without a forget and its tree pack lost: repair said "directory tree is lost too", let
    the snapshot go everywhere (exit 0) and the next prune deleted its files' data -- though this machine's
    catalog held every listing, or a copy held the snapshot whole."""
    src, lay = setup
    if heal == "copy":
        mirror = tmp_path / "mirror"
        cli("init", *FAST_INIT, "--repo", mirror, "--copy-chunker-params-from", cli.repo)
        cli("copy", "--to", mirror)
    cli("ls", lay.snapshot)  # (this machine reads the manifest and its listings)
    for p in {p for p, e in lay.blocks.values() if e.kind != DATA}:
        pack_path(cli.repo, p).unlink()
    (cli.repo / "snapshots" / lay.snapshot).unlink()
    assert cli("--json", "verify", ok=20).json["ok"] is False  # (the catalog knows the manifest is lost)
    if heal == "copy":  # (the copy heals it, not this machine's cached listings)
        with sqlite3.connect(next(cli.cache.rglob("catalog.db"))) as conn:
            conn.execute("DELETE FROM trees")
    res = cli("--json", "repair", *(("--from-repo", mirror) if heal == "copy" else ()))
    assert res.json["verify"]["ok"] is True and res.json["files_dropped"] == [], res.json
    cli("prune")
    [snap] = cli("--json", "snapshots").json
    cli("restore", snap["id"], "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


@pytest.mark.parametrize("how", ["recovered", "healed"])
def test_a_manifest_an_older_repair_removed_without_a_record_is_not_lost(cli, tmp_path, setup, how):
    """An older vault's repair removes an unreadable manifest with no logs/ record, after recovering its tree
    as a 'recovered' snapshot or healing it from a copy (same time, host, paths): a machine that had read the
    manifest called it lost (exit 20 for good) and its repair wrote the same state a second time."""
    from datetime import datetime, timezone

    from vault.model import Snapshot

    src, lay = setup
    other = ("--cache-dir", tmp_path / "b")
    [old] = cli(*other, "--json", "snapshots").json
    r = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    tree = bytes.fromhex(old["tree"])
    if how == "recovered":
        snap = Snapshot(time=datetime.now(timezone.utc), host="recovered", paths=["/recovered"], tree=tree,
                        tags=["recovered"], summary={"recovered_tree": tree.hex()})
    else:
        snap = Snapshot(time=datetime.fromisoformat(old["time"].replace("Z", "+00:00")), host=old["host"],
                        paths=old["paths"], tree=tree, tags=old["tags"], summary={"restored_from_copy": "x" * 64})
    r.save_snapshot(snap)
    (cli.repo / "snapshots" / old["id"]).unlink()  # (no record, as the older repair did)
    assert cli(*other, "--json", "verify").json["ok"] is True
    cli(*other, "repair")
    assert len(cli("--json", "snapshots").json) == 1


def test_a_snapshot_the_mirror_lost_is_not_copied_again_beside_its_repair(cli, tmp_path, setup):
    """The mirror lost a manifest without a forget: the next copy copied the snapshot again, then the mirror's
    repair wrote the lost one as well -- two equal snapshots there."""
    src, lay = setup
    mirror = tmp_path / "mirror"
    cli("init", *FAST_INIT, "--repo", mirror, "--copy-chunker-params-from", cli.repo)
    cli("copy", "--to", mirror)
    [copied] = cli("--json", "--repo", mirror, "snapshots").json
    (mirror / "snapshots" / copied["id"]).unlink()
    out = cli("--json", "copy", "--to", mirror).json
    assert out["copied"] == [], out
    cli("--repo", mirror, "repair")
    assert len(cli("--json", "--repo", mirror, "snapshots").json) == 1
    assert cli("--json", "--repo", mirror, "verify").json["ok"] is True


def _index_listing(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (repo / "index").iterdir()}


def test_repair_of_a_healthy_repository_leaves_its_index_as_it_is(cli, tmp_path, setup):
    """`repair` by habit (from cron) on a repository with nothing wrong rewrote the whole index every time: new
    segments, the old ones deleted, and every machine's catalog reloaded all of it at its next command. An index
    found intact is now left alone, with or without --read-data."""
    src, lay = setup
    cli("backup", src, "--time", "2026-03-02T10:00:00Z")
    before = _index_listing(cli.repo)
    for extra in ((), ("--read-data",)):
        res = cli("--json", "repair", *extra).json
        assert res["index_rewritten"] is False and res["segments_written"] == 0 and res["segments_deleted"] == 0
        assert res["packs_checked"] == len(set(p for p, _ in lay.blocks.values())) and res["verify"]["ok"] is True
        assert _index_listing(cli.repo) == before
    assert "the index is intact" in cli("repair").out


def test_repair_rewrites_an_index_segment_damaged_after_this_machine_loaded_it(cli, tmp_path, setup):
    """The catalog's copy of a segment is fine, the store's is not: the index is not intact, and repair writes it
    again (verify reports the damaged segment until then)."""
    src, lay = setup
    seg = next((cli.repo / "index").iterdir())
    flip(seg, 40)
    assert any(d["object"] == f"index/{seg.name}" for d in cli("--json", "verify", ok=20).json["damage"])
    res = cli("--json", "repair", "index").json
    assert res["index_rewritten"] is True and res["verify"]["ok"] is True and res["files_dropped"] == []
    assert seg.name not in _index_listing(cli.repo)
    got = restored_files(cli, tmp_path, "r")
    assert all(got[f] == Path(f).read_bytes() for f in lay.files)


def test_packs_that_agreed_before_a_stray_pack_are_listed_again(cli, tmp_path, setup, monkeypatch):
    """The index agrees with the first packs, then a pack no segment lists (an interrupted backup's) turns up:
    the index is written again with every pack, those that agreed before included (a segment at a time)."""
    import vault.repairer as repairer

    src, lay = setup
    monkeypatch.setattr(repairer, "SEGMENT_PACKS", 2)
    packs = sorted(set(p for p, _ in lay.blocks.values()))
    stray_src = make_tree(tmp_path / "more", {"late.bin": random.Random(5).randbytes(300_000)})
    segs = set(_index_listing(cli.repo))
    cli("backup", stray_src, "--time", "2026-03-02T10:00:00Z")
    for name in set(_index_listing(cli.repo)) - segs:
        (cli.repo / "index" / name).unlink()  # (its pack stays: no index lists it)
    shutil.rmtree(cli.cache)
    res = cli("--json", "repair", "index").json
    assert res["index_rewritten"] is True and res["packs_checked"] > len(packs)
    assert res["verify"]["ok"] is True and res["files_dropped"] == [] and res["snapshots_rewritten"] == []
    assert len(_index_listing(cli.repo)) >= (len(packs) + 1) // 2
    shutil.rmtree(cli.cache)
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    got = restored_files(cli, tmp_path, "r", "latest")
    assert got[str(stray_src / "late.bin")] == (stray_src / "late.bin").read_bytes()


@pytest.mark.parametrize("how", ["wrong size", "shifted", "twice"])
def test_a_second_listing_of_a_pack_is_not_an_intact_index(cli, tmp_path, setup, how):
    """This machine's catalog keeps a pack's first listing only: a second segment listing the same pack (another
    size, swapped offsets, or the same again) was invisible to the intact-index check, so repair left it -- and
    every machine with a fresh catalog then failed verify. Every pack must be listed exactly once."""
    from vault import index as index_mod
    from vault.pack import PackEntry

    src, lay = setup
    cli("snapshots")  # (this machine's catalog loads the index as it is)
    r = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    pid, size = next((p, n) for p, n in sorted(r.list_packs()) if len(r.read_pack_header(p, n)) > 1)
    entries = r.read_pack_header(pid, size)
    if how == "wrong size":
        size += 7
    elif how == "shifted":  # (two blocks' ids swapped, every entry's place kept: a listing that still parses --
        a, b = entries[0], entries[1]  # swapped offsets could put an entry past the pack's end, refused at load)
        entries = [PackEntry(a.kind, b.block_id, a.offset, a.length, b.raw_length),
                   PackEntry(b.kind, a.block_id, b.offset, b.length, a.raw_length), *entries[2:]]
    r.save_index(index_mod.from_packs([(pid, size, entries)]))
    res = cli("--json", "repair").json
    assert res["index_rewritten"] is True and res["verify"]["ok"] is True, res
    shutil.rmtree(cli.cache)
    assert cli("--json", "verify", "--read-data").json["ok"] is True
    assert cli("--json", "repair").json["index_rewritten"] is False
