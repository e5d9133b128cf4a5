"""forget and prune: retention end to end, space freed, crash safety, concurrency, S3 (same tests)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_INIT, PASSWORD, Cli, assert_trees_equal, kill_when, make_tree

MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def anyrepo(request) -> Cli:
    """An initialised repository with 1 MiB packs, local or on the moto S3 server."""
    cli = request.getfixturevalue("cli" if request.param == "local" else "s3cli")
    cli("init", *FAST_INIT, "--pack-size", "1")
    cli.kind = request.param
    return cli


def repo_bytes(cli: Cli) -> int:
    if isinstance(cli.repo, Path):
        return sum(p.stat().st_size for p in cli.repo.rglob("*") if p.is_file() and "locks" not in p.parts)
    total = 0
    for page in cli.client.get_paginator("list_objects_v2").paginate(Bucket=cli.bucket, Prefix=cli.prefix + "/"):
        total += sum(o["Size"] for o in page.get("Contents", []) if "/locks/" not in o["Key"])
    return total


def versions(tmp_path: Path, cli: Cli, n: int, unique: int = MiB) -> tuple[Path, list[tuple[str, Path]]]:
    """n snapshots of one changing tree: shared content plus `unique` random bytes only that version has.
    Returns the source dir and (snapshot id, copy of that version) pairs, oldest first. Backed up with one
    worker (``--jobs 1``), so that each version's new blocks share one pack, whatever the machine: the tests
    of repacking need packs that hold blocks of several versions (with several workers, each fills a pack
    of its own, and which file goes to which worker is a matter of timing)."""
    src = tmp_path / "src"
    rng = random.Random(7)
    shared = rng.randbytes(2 * MiB)
    out = []
    for i in range(n):
        if src.exists():
            shutil.rmtree(src)
        make_tree(src, {"shared.bin": shared, "notes.txt": f"version {i}\n".encode(),
                        "sub": {f"unique-{i}.bin": rng.randbytes(unique)}}, mtime_ns=1_700_000_000_000_000_000 + i)
        sid = cli("--json", "backup", src, "--jobs", "1",
                  "--time", f"2026-01-{i + 1:02d}T10:00:00Z").json["snapshot_id"]
        copy = tmp_path / f"v{i}"
        shutil.copytree(src, copy, symlinks=True)
        out.append((sid, copy))
    return src, out


def restores(cli: Cli, sid: str, src: Path, expected: Path, target: Path) -> None:
    cli("restore", sid, "--target", target)
    got = target / src.relative_to("/")
    assert_trees_equal(expected, got)


# --- must-show 2: 10 snapshots, keep the last 3 -------------------------------------------------------------
def test_forget_keep_last_3_prune_frees_the_forgotten_data(anyrepo, tmp_path):
    src, vs = versions(tmp_path, anyrepo, 10)
    before = repo_bytes(anyrepo)
    res = anyrepo("--json", "forget", "--keep-last", "3", "--prune").json
    assert len(res["removed"]) == 7
    snaps = anyrepo("--json", "snapshots").json
    assert sorted(s["id"] for s in snaps) == sorted(sid for sid, _ in vs[-3:])
    for i, (sid, copy) in enumerate(vs[-3:]):
        restores(anyrepo, sid, src, copy, tmp_path / f"r{i}")
    freed = before - repo_bytes(anyrepo)
    only_forgotten = 7 * MiB  # the unique random file of each forgotten version (incompressible)
    assert freed >= 0.8 * only_forgotten, (freed, only_forgotten)
    assert res["prune"]["packs_deleted"] + res["prune"]["packs_repacked"] > 0
    assert anyrepo("--json", "verify", "--read-data").json["ok"] is True
    # nothing left to do: a second prune deletes nothing
    again = anyrepo("--json", "prune").json
    assert again["packs_deleted"] == 0 and again["packs_repacked"] == 0 and again["packs_unindexed_deleted"] == 0


def test_dry_run_changes_nothing_and_explains(anyrepo, tmp_path):
    src, vs = versions(tmp_path, anyrepo, 4, unique=64 * 1024)
    before = repo_bytes(anyrepo)
    res = anyrepo("--json", "forget", "--keep-last", "2", "--dry-run", "--prune").json
    assert res["dry_run"] is True and len(res["removed"]) == 2
    (group,) = res["groups"]
    reasons = {d["id"]: d["reasons"] for d in group["decisions"]}
    assert reasons[vs[-1][0]] == ["newest", "last #1"] and reasons[vs[0][0]] == []
    assert res["prune"]["dry_run"] is True and res["prune"]["bytes_freed"] >= 0
    assert len(anyrepo("--json", "snapshots").json) == 4
    assert repo_bytes(anyrepo) == before
    text = anyrepo("forget", "--keep-last", "2", "--dry-run").out
    assert "would forget 2" in text and "newest, last #1" in text


def test_forget_named_snapshot_and_refusals(repo, tmp_path):
    src, vs = versions(tmp_path, repo, 3, unique=1000)
    res = repo("--json", "forget", vs[0][0][:8]).json
    assert res["removed"] == [vs[0][0]]
    assert len(repo("--json", "snapshots").json) == 2
    # the decision is recorded in the repository (encrypted), before the manifest was deleted
    from vault.backend.local import LocalBackend
    from vault.repository import Repository

    r = Repository.open(LocalBackend(repo.repo), PASSWORD.encode())
    (log,) = [r.load_log(lid) for lid in r.list_logs()]
    assert log["operation"] == "forget" and [d["id"] for d in log["decisions"] if not d["keep"]] == [vs[0][0]]
    r = repo("forget", ok=2)
    assert "refusing" in r.err and "Traceback" not in r.err
    r = repo("forget", vs[1][0][:8], "--keep-last", "1", ok=2)
    assert "either" in r.err
    r = repo("forget", "--keep-within", "3 days", ok=2)
    assert "cannot parse duration" in r.err
    r = repo("forget", "--keep-last", "-1", ok=2)
    r = repo("forget", "nosuchid", ok=1)
    assert len(repo("--json", "snapshots").json) == 2


def test_forget_filters_and_tags(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a": b"1"})
    ids = {}
    for host in ("web", "db"):
        for day in range(1, 5):
            tags = ["release"] if (host, day) == ("web", 1) else []
            args = ["--tag", "release"] if tags else []
            ids[(host, day)] = repo("--json", "backup", src, "--host", host, "--time", f"2026-02-0{day}T00:00:00Z",
                                    *args).json["snapshot_id"]
    res = repo("--json", "forget", "--host", "web", "--keep-last", "1", "--keep-tag", "release").json
    assert sorted(res["removed"]) == sorted([ids[("web", 2)], ids[("web", 3)]])
    left = {s["id"] for s in repo("--json", "snapshots").json}
    assert {ids[("db", d)] for d in range(1, 5)} <= left and ids[("web", 1)] in left and ids[("web", 4)] in left


# --- safety: prune refuses when it cannot know what is referenced ---------------------------------------------
def test_prune_refuses_when_a_tree_is_missing(repo, tmp_path):
    src, vs = versions(tmp_path, repo, 2, unique=1000)
    tree_packs = []
    for p in (repo.repo / "data").rglob("*"):
        if p.is_file():
            tree_packs.append(p)
    # remove the whole cache and every index segment: referenced blocks are then unlocatable
    for p in (repo.repo / "index").iterdir():
        p.unlink()
    shutil.rmtree(repo.cache)
    files_before = sorted(p.name for p in (repo.repo / "data").rglob("*") if p.is_file())
    r = repo("prune", ok=1)
    assert "prune refused" in r.err and "nothing deleted" in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in (repo.repo / "data").rglob("*") if p.is_file()) == files_before


# --- crash safety: SIGKILL at several points --------------------------------------------------------------
def _count(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _names(path: Path) -> set[str]:
    return {p.name for p in path.rglob("*") if p.is_file()} if path.exists() else set()


@pytest.mark.parametrize("point", ["early", "repack", "deletes"])
def test_prune_killed_at_any_point_leaves_a_restorable_repository(repo, tmp_path, point):
    repo.repo.joinpath("x").exists()
    # many small packs, each holding blocks of several versions, so prune both repacks and deletes
    src, vs = versions(tmp_path, repo, 12, unique=700 * 1024)
    repo("forget", "--keep-last", "4")
    data0, index0 = _names(repo.repo / "data"), _names(repo.repo / "index")
    env = {**os.environ, **repo.env()}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "prune", "--max-unused", "0%"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = {
        "early": lambda: _count(repo.repo / "locks") > 0,
        "repack": lambda: bool(_names(repo.repo / "data") - data0),
        "deletes": lambda: bool(index0 - _names(repo.repo / "index") or data0 - _names(repo.repo / "data")),
    }[point]
    kill_when(p, ready, poll=0.0005, what=f"prune (kill point {point!r})")
    # every remaining snapshot restores, from a fresh catalog as well as from the old one
    assert repo("--json", "verify").json["ok"] is True
    for i, (sid, copy) in enumerate(vs[-4:]):
        restores(repo, sid, src, copy, tmp_path / f"r{i}")
    shutil.rmtree(repo.cache)
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    # the next prune finishes the job and leaves a clean repository
    repo("prune", "--max-unused", "0%")
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    for i, (sid, copy) in enumerate(vs[-4:]):
        restores(repo, sid, src, copy, tmp_path / f"s{i}")
    again = repo("--json", "prune", "--max-unused", "0%").json
    assert again["packs_deleted"] == again["packs_unindexed_deleted"] == 0


def test_prune_removes_the_leftovers_of_a_killed_backup(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(30):
        (src / f"f{i}").write_bytes(rng.randbytes(MiB))
    env = {**os.environ, **repo.env()}
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", str(src)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(p, lambda: _count(repo.repo / "data") >= 3, what="the backup")
    assert _count(repo.repo / "snapshots") == 0
    res = repo("--json", "prune").json
    assert res["packs_unindexed_deleted"] + res["packs_deleted"] >= 1
    assert _count(repo.repo / "data") == 0
    assert repo("--json", "verify").json["ok"] is True


# --- concurrency: backup and prune at the same time --------------------------------------------------------
def test_backup_and_prune_at_the_same_time(repo, tmp_path):
    src, vs = versions(tmp_path, repo, 6, unique=300 * 1024)
    repo("forget", "--keep-last", "2")
    other = make_tree(tmp_path / "other", {f"f{i}": random.Random(i).randbytes(200 * 1024) for i in range(40)})
    env = {**os.environ, **repo.env()}
    cmd = [sys.executable, "-m", "vault.cli.main", "--lock-wait", "120s", "--json"]
    procs = [subprocess.Popen(cmd + ["backup", str(other), "--host", "second"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE),
             subprocess.Popen(cmd + ["prune", "--max-unused", "0%"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    new_id = json.loads(outs[0][0])["snapshot_id"]
    restores(repo, new_id, other, other, tmp_path / "r-new")
    for i, (sid, copy) in enumerate(vs[-2:]):
        restores(repo, sid, src, copy, tmp_path / f"r{i}")
    assert repo("--json", "verify", "--read-data").json["ok"] is True


# --- scale: 10,000 packs, bounded memory, no pack body read unless repacked ------------------------------
@pytest.mark.slow
def test_prune_of_10000_packs_is_bounded_and_reads_only_what_it_repacks(tmp_path):
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "prune_scale.py"), "--packs", "10000",
                        "--workdir", str(tmp_path / "w"), "--json", str(out)], capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["packs_before"] >= 10000 and res["verify_ok"] is True
    assert res["packs_deleted"] >= 4900
    assert res["prune_peak_rss_mib"] < 150, res
    # GETs: config + key slot + index segments (each read at most three times: sync, and prune's two passes)
    # + the packs it repacks + a handful; never the ~10,000 pack bodies
    assert res["GET"] <= 3 * res["index_segments_before"] + res["packs_repacked"] + 20, res


def test_prune_refuses_while_a_snapshot_cannot_be_read(repo, tmp_path):
    """A damaged manifest still counts on its data (repair can recover it): prune must not free that data."""
    src, vs = versions(tmp_path, repo, 2, unique=200_000)
    manifest = repo.repo / "snapshots" / vs[0][0]
    data = bytearray(manifest.read_bytes())
    data[40] ^= 1
    os.chmod(manifest, 0o644)
    manifest.write_bytes(bytes(data))
    shutil.rmtree(repo.cache)  # a new machine: the catalog cannot load that manifest
    before = _names(repo.repo / "data")
    r = repo("prune", ok=1)
    assert "prune refused" in r.err and vs[0][0][:8] in r.err
    assert _names(repo.repo / "data") == before


def test_dry_run_forget_and_prune_counts_what_the_forgotten_snapshots_free(repo, tmp_path):
    src, vs = versions(tmp_path, repo, 5, unique=MiB)
    dry = repo("--json", "forget", "--keep-last", "2", "--prune", "--dry-run").json
    real = repo("--json", "forget", "--keep-last", "2", "--prune").json
    assert dry["prune"]["packs_deleted"] == real["prune"]["packs_deleted"] > 0
    assert abs(dry["prune"]["bytes_freed"] - real["prune"]["bytes_freed"]) < 0.1 * real["prune"]["bytes_freed"]


def test_pack_list_is_compact_and_lossless():
    import os as _os

    from vault.pruner import _PackList, _Plan

    pairs = [(_os.urandom(32), i * 1000 + 7) for i in range(2500)]
    pl = _PackList(pairs)
    assert len(pl) == 2500 and list(pl) == pairs and pl.total() == sum(s for _, s in pairs)
    with pytest.raises(ValueError):
        pl.append(b"short", 1)
    plan = _Plan(delete=_PackList(pairs[:3]), repack=_PackList(pairs[3:5]), unindexed=_PackList(pairs[5:6]))
    assert list(plan.removed) == pairs[:6] and plan.removed_bytes() == sum(s for _, s in pairs[:6])
    assert not _PackList() and _PackList(pairs[:1])


def test_prune_dry_run_predicts_the_repacking(repo, tmp_path):
    """--dry-run reported '0 blocks into 0 new packs' where the real run repacked 115 blocks."""
    versions(tmp_path, repo, 12, unique=700 * 1024)  # small packs holding blocks of several versions
    repo("forget", "--keep-last", "4")
    preview = repo("--json", "prune", "--dry-run", "--max-unused", "0%").json
    real = repo("--json", "prune", "--max-unused", "0%").json
    assert real["blocks_repacked"] > 0, real
    for k in ("packs_deleted", "packs_repacked", "blocks_repacked"):
        assert preview[k] == real[k], (k, preview, real)
    assert abs(preview["packs_written"] - real["packs_written"]) <= 1, (preview, real)


def test_the_catalog_drops_the_trees_of_pruned_snapshots(repo, tmp_path):
    """Nightly backup + forget --keep-last 1 --prune: the repository stays one snapshot, but the catalog's
    cached trees grew by every night's changed directories, for ever (only 'catalog rebuild' reclaimed them)."""
    import sqlite3

    src = make_tree(tmp_path / "src", {f"d{i}": {"f": b"0"} for i in range(30)})
    counts = []
    for night in range(4):
        for i in range(30):
            (src / f"d{i}" / "f").write_bytes(b"%d" % night)
        repo("backup", src)
        repo("forget", "--keep-last", "1", "--prune")
        with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
            counts.append(conn.execute("SELECT count(*) FROM trees").fetchone()[0])
    assert counts[-1] == counts[0], counts


def test_a_damaged_catalog_row_never_makes_prune_delete_a_referenced_block(repo, tmp_path):
    """The catalog is a cache and SQLite has no page checksums: one flipped bit moved a live block's row to
    another pack, prune repacked the pack really holding it without the block, deleted it and said 'freed',
    exit 0. It now checks its plan on the repository's own (authenticated) index before anything is deleted."""
    import sqlite3

    rnd = random.Random(11)
    src = make_tree(tmp_path / "src", {f"f{i}": rnd.randbytes(60_000) for i in range(400)})
    repo("backup", src)
    with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
        conn.execute("UPDATE blocks SET pack=(SELECT max(rowid) FROM packs WHERE kind='D') WHERE id=(SELECT id FROM "
                     "blocks WHERE kind='D' AND pack=(SELECT min(rowid) FROM packs WHERE kind='D') LIMIT 1)")
    res = repo("prune", "--max-unused", "0%", ok=1)
    assert "catalog rebuild" in res.err and "stopped before deleting anything" in res.err, res.err
    fresh = ("--cache-dir", tmp_path / "fresh")
    assert repo(*fresh, "--json", "verify", "--read-data").json["ok"] is True
    repo("catalog", "rebuild")
    repo("prune", "--max-unused", "0%")
    assert repo(*fresh, "--json", "verify", "--read-data").json["ok"] is True
    repo(*fresh, "restore", "latest", "--target", tmp_path / "r")
    assert_trees_equal(src, tmp_path / "r" / src.relative_to("/"))


def test_a_block_row_the_catalog_lost_is_named_as_the_catalogs_damage(repo, tmp_path):
    """A referenced block's row deleted from the catalog: prune advised 'vault repair index' (which rewrites an
    intact index) where verify, on the same catalog, says 'vault catalog rebuild'."""
    import sqlite3

    src = make_tree(tmp_path / "src", {"a": b"a" * 5000, "b": b"b" * 7000})
    repo("backup", src)
    with sqlite3.connect(next(repo.cache.rglob("catalog.db"))) as conn:
        conn.execute("DELETE FROM blocks WHERE id=(SELECT min(id) FROM blocks WHERE kind='D')")
    for args in (["prune"], ["forget", "--keep-last", "1", "--prune"]):
        res = repo(*args, ok=1)
        assert "catalog rebuild" in res.err and "repair index" not in res.err, res.err
    repo("catalog", "rebuild")
    repo("prune")
    assert repo("--json", "verify", "--read-data").json["ok"] is True


def test_a_repack_that_fails_takes_back_the_packs_no_segment_names(cli, tmp_path, monkeypatch):
    """prune on a nearly full disk: the repack failed ('disk full') and kept every pack it had written, so each
    retry found less room and failed at the same point. Those not named by a segment yet are deleted again."""
    from vault import pruner
    from vault.errors import PermanentError

    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(5)
    src = make_tree(tmp_path / "src", {f"f{i:02d}": rnd.randbytes(100_000) for i in range(60)})
    first = cli("--json", "backup", src, "--jobs", "1").json["snapshot_id"]
    for i in range(0, 60, 2):
        os.unlink(src / f"f{i:02d}")
    cli("backup", src, "--jobs", "1")
    cli("forget", first)  # every pack holds live and unused blocks: all are repacked
    packs = tmp_path / "repo" / "data"
    before = _names(packs)
    real_add, added = pruner.PackWriter.add, []

    def add_until_full(self, kind, bid, data):
        added.append(len(data))
        if sum(added) > 1.2 * MiB:
            raise PermanentError("disk full writing data/xx (test)")
        return real_add(self, kind, bid, data)

    monkeypatch.setattr(pruner.PackWriter, "add", add_until_full)
    res = cli("prune", "--max-unused", "0%", ok=1)
    assert "disk full" in res.err and "--max-unused 100%" in res.err  # (what to do: operations.md's way out)
    assert _names(packs) == before
    monkeypatch.undo()
    assert cli("--json", "prune", "--max-unused", "0%").json["blocks_repacked"] > 0
    assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_a_comma_in_a_backup_tag_makes_two_tags_that_filters_and_keep_tag_select(repo, tmp_path):
    """`backup --tag release,v1` (restic's form) stored one tag "release,v1" that no filter selected ("a,b" means
    both tags): `forget --keep-last 1 --keep-tag release,v1` forgot it. It is two tags now, as restic takes it."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src, "--tag", "release,v1", "--time", "2026-11-01T00:00:00Z")
    repo("backup", src, "--time", "2026-11-03T00:00:00Z")
    snaps = repo("--json", "snapshots").json
    assert sorted(snaps[0]["tags"]) == ["release", "v1"]
    assert [s["id"] for s in repo("--json", "snapshots", "--tag", "release").json] == [snaps[0]["id"]]
    out = repo("--json", "forget", "--keep-last", "1", "--keep-tag", "release,v1", "--dry-run").json
    assert out["removed"] == []


def test_prune_removes_only_its_own_temp_files_where_it_writes_them(repo, tmp_path):
    """data/ a symlink (to another disk, or planted): prune walked the whole target and deleted every `.tmp-*`
    file below it, at any depth and of any name. Only `.tmp-<16 hex>` files, in data/<2 hex>/ and the flat
    directories, are vault's."""
    import os as os_mod

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os_mod.urandom(10_000))
    repo("backup", src)
    other = tmp_path / "other-disk"
    os_mod.rename(repo.repo / "data", other)
    os_mod.symlink(other, repo.repo / "data")
    (other / "deep" / "er").mkdir(parents=True)
    theirs = [other / ".tmp-precious", other / "deep" / "er" / ".tmp-0123456789abcdef", other / "ab" / ".tmp-x"]
    (other / "ab").mkdir(exist_ok=True)
    for p in theirs:
        p.write_text("not vault's")
    sub = next(d for d in other.iterdir() if len(d.name) == 2 and d.name != "ab" and d.is_dir())
    ours = [sub / ".tmp-0123456789abcdef", repo.repo / "index" / ".tmp-fedcba9876543210"]
    for p in ours:
        p.write_text("a killed writer's")
    repo("prune")
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
    repo("verify", "--read-data")


# --- small index segments are merged -------------------------------------------------------------------------
def _segments(cli: Cli) -> int:
    if isinstance(cli.repo, Path):
        return _count(cli.repo / "index")
    pages = cli.client.get_paginator("list_objects_v2").paginate(Bucket=cli.bucket, Prefix=cli.prefix + "/index/")
    return sum(len(page.get("Contents", [])) for page in pages)


def test_prune_merges_the_small_index_segments_every_backup_writes(anyrepo, tmp_path, monkeypatch):
    """Every backup writes an index segment of its own, and nothing merged them: a year of hourly backups was
    8,800 segments that a new machine's first sync, a catalog rebuild and verify read one request each."""
    import vault.pruner

    monkeypatch.setattr(vault.pruner, "MERGE_AT", 5)
    src, vs = versions(tmp_path, anyrepo, 8, unique=20_000)
    before = _segments(anyrepo)
    assert before >= 8
    assert anyrepo("--json", "prune", "--dry-run").json["segments_merged"] >= 5  # (what it would merge)
    assert _segments(anyrepo) == before
    res = anyrepo("--json", "prune").json  # (nothing to delete: merging alone is the work)
    assert res["segments_merged"] >= 5 and res["packs_deleted"] == 0, res
    assert _segments(anyrepo) <= before - res["segments_merged"] + res["segments_written"] < before
    assert anyrepo("--json", "verify", "--read-data").json["ok"] is True
    for i, (sid, copy) in enumerate(vs):
        restores(anyrepo, sid, src, copy, tmp_path / f"r{i}")
    shutil.rmtree(anyrepo.cache)  # (a new machine loads the merged segments)
    assert anyrepo("--json", "verify", "--read-data").json["ok"] is True
    restores(anyrepo, vs[0][0], src, vs[0][1], tmp_path / "fresh")
    again = anyrepo("--json", "prune").json
    assert again["segments_merged"] == again["segments_written"] == 0, again


def test_a_merge_stopped_before_its_deletes_leaves_every_snapshot_restorable(repo, tmp_path, monkeypatch):
    """Killed after the merged segment is written, before the merged ones are deleted: both are present, every
    reader takes the merged one, and the next prune deletes the old ones."""
    import vault.pruner

    monkeypatch.setattr(vault.pruner, "MERGE_AT", 5)
    src, vs = versions(tmp_path, repo, 8, unique=20_000)
    before = _segments(repo)
    assert repo("verify").code == 0  # (the catalog knows the small segments)
    monkeypatch.setattr(vault.pruner.Pruner, "_delete_all", lambda self, names: (_ for _ in ()).throw(KeyboardInterrupt))
    repo("prune", ok=130)
    monkeypatch.undo()
    assert _segments(repo) > before  # (the merged ones and what merges them)
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    for i, (sid, copy) in enumerate(vs):
        restores(repo, sid, src, copy, tmp_path / f"r{i}")
    res = repo("--json", "prune").json
    assert res["segments_deleted"] >= 5 and _segments(repo) < before, res
    shutil.rmtree(repo.cache)
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    restores(repo, vs[3][0], src, vs[3][1], tmp_path / "fresh")


def test_a_cache_disk_full_after_the_prune_is_a_warning_not_a_failed_prune(repo, tmp_path, monkeypatch):
    """The cache filled up while the catalog reloaded the index the prune had rewritten: exit 1, "disk full",
    for a prune that had done all its work (the next one found nothing to do) -- a monitoring job saw a failure."""
    from vault.catalog import Catalog
    from vault.errors import CacheUnavailable

    src, vs = versions(tmp_path, repo, 4, unique=300_000)
    repo("forget", "--keep-last", "2")
    real, calls = Catalog.sync, []

    def sync_then_full(self, r):
        calls.append(1)
        if len(calls) == 2:  # (the one after the prune)
            raise CacheUnavailable("the disk under the cache directory is full (test)")
        return real(self, r)

    monkeypatch.setattr(Catalog, "sync", sync_then_full)
    res = repo("--json", "prune", "--max-unused", "0%")
    monkeypatch.undo()
    assert res.json["packs_deleted"] + res.json["packs_repacked"] > 0
    assert any("prune is done" in w for w in res.json["warnings"]), res.json["warnings"]
    again = repo("--json", "prune", "--max-unused", "0%").json
    assert again["packs_deleted"] == again["packs_repacked"] == 0
    assert repo("--json", "verify", "--read-data").json["ok"] is True
    for i, (sid, copy) in enumerate(vs[-2:]):
        restores(repo, sid, src, copy, tmp_path / f"r{i}")


@pytest.mark.parametrize("why", ["locked", "interrupted"])
def test_forget_prune_whose_prune_cannot_run_still_reports_the_forget(repo, tmp_path, monkeypatch, why):
    """`forget --prune` forgot the snapshots, then its prune found the repository locked (a backup, a verify or a
    restore held it longer than --lock-wait): exit 11, "repository is locked" and nothing else -- no JSON, no
    list of what was forgotten, and 11 tells a script that nothing happened. The forget's report now comes out
    first; then the prune's error, with its exit code."""
    from vault import api
    from vault.errors import RepositoryLocked

    src = tmp_path / "src"
    for day in range(1, 5):
        make_tree(src, {"f": str(day).encode()})
        repo("backup", src, "--time", f"2025-01-0{day}T00:00:00Z")

    def refuse(*_a, **_k):
        if why == "locked":
            raise RepositoryLocked("repository is locked: shared lock held by backup (pid 1 on h, 5s ago)")
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "prune_repository", refuse)
    res = repo("--json", "forget", "--keep-last", "1", "--prune", ok=11 if why == "locked" else 130)
    doc = json.loads(res.out)
    assert len(doc["removed"]) == 3 and doc["prune"] is None and doc["prune_error"]
    assert "forgot 3 snapshot(s), but the prune did not run to its end" in res.err
    assert len(repo("--json", "snapshots").json) == 1
    res = repo("forget", "--keep-last", "1", "--prune", ok=11 if why == "locked" else 130)
    assert "forgot 0 snapshot(s)" in res.out


def test_temp_files_of_killed_runs_are_counted_by_prune_and_named_by_verify(repo, tmp_path):
    """prune deleted a killed backup's staged packs (data/xx/.tmp-*) but said "freed 0 B", its dry run said
    nothing of them, and verify never mentioned them: 245 MiB piled up under repeated kills, unseen."""
    src = make_tree(tmp_path / "src", {"a": b"x" * 1000})
    repo("backup", src)
    fan = repo.repo / "data" / "ab"
    fan.mkdir(exist_ok=True)
    staged = fan / ".tmp-0123456789abcdef"
    staged.write_bytes(os.urandom(300_000))
    info = repo("--json", "verify").json["info"]
    assert any("1 temp file(s)" in i for i in info), info
    dry = repo("--json", "prune", "--dry-run").json  # (no lock: it may be a write under way -- found, not freed)
    assert dry["temp_files_removed"] == 1 and dry["temp_bytes_removed"] >= 300_000 and staged.exists(), dry
    assert dry["bytes_freed"] < 300_000, dry
    assert "of a write under way" in repo("prune", "--dry-run").out
    out = repo("--json", "prune").json
    assert out["temp_files_removed"] == 1 and out["bytes_freed"] >= 300_000 and not staged.exists(), out
    # a second name of a published pack (a writer killed between its link and its unlink) frees nothing
    pack = next(p for p in (repo.repo / "data").rglob("*") if p.is_file())
    os.link(pack, pack.parent / ".tmp-00000000000000aa")
    out = repo("--json", "prune").json
    assert out["temp_files_removed"] == 1 and out["temp_bytes_removed"] == 0 and pack.exists(), out
