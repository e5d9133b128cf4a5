"""verify --read-data of a local repository: packs are checked by forked worker processes, each reading a pack a
piece at a time (whole blocks per piece, hashed as they come) while the main process walks the trees. Every
byte of a pack is still checked: a byte flipped anywhere (a block, a block bigger than a piece, the header, the
trailer) is found, and the report is the same as with one process (--jobs 1) and with whole-pack reads."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest
from conftest import FAST_INIT, make_tree, with_jobs
import test_damage
from test_damage import layout, pack_path

from vault import checker

MiB = 1024 * 1024
damaged_setup = test_damage.damaged_setup  # (a fixture: 1 MiB packs, data spread over them)


@pytest.fixture
def two_packs(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "4")
    rnd = random.Random(7)
    spec = {"big.bin": rnd.randbytes(3 * MiB), "mid.bin": rnd.randbytes(700_000)}
    spec["small"] = {f"s{i}.txt": rnd.randbytes(3000) for i in range(40)}
    src = make_tree(tmp_path / "src", spec)
    cli("backup", src)
    return src, layout(cli.repo)


def _catalog_edit(cli, sql: str, *params) -> None:
    """Edit this machine's catalog behind vault's back (a flipped bit in a cache, a hand-edited row)."""
    import sqlite3

    with sqlite3.connect(next(cli.cache.rglob("catalog.db"))) as conn:
        assert conn.execute(sql, params).rowcount


def _report(cli, jobs: str) -> tuple[list, dict]:
    rep = with_jobs(cli, jobs, "--json", "verify", "--read-data", ok=False)
    assert rep.code in (0, 20) and "Traceback" not in rep.err, rep.err
    j = rep.json
    return sorted((d["object"], d["problem"], tuple(d["files"])) for d in j["damage"]), j


@pytest.mark.parametrize("where", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, "header", "trailer"])
def test_a_flipped_byte_anywhere_is_found_the_same_way_in_every_mode(cli, two_packs, monkeypatch, where):
    src, lay = two_packs
    monkeypatch.setattr(checker, "READ_PIECE", 256 * 1024)  # many pieces per pack, and blocks bigger than one
    pid = lay.blocks[lay.files[str(src / "big.bin")][0]][0]
    path = pack_path(cli.repo, pid)
    data = bytearray(path.read_bytes())
    body_end = max(e.offset + e.length for p, e in lay.blocks.values() if p == pid)
    at = {"header": body_end + 20, "trailer": len(data) - 2}.get(where) if isinstance(where, str) \
        else int(body_end * where)
    data[at] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    hit = {e.block_id for p, e in lay.blocks.values() if p == pid and e.offset <= at < e.offset + e.length}
    want_files = {f for f, bids in lay.files.items() if hit & set(bids)}

    reports = {}
    for mode in ("2", "1"):  # worker processes with pieces; one process (threads) with pieces
        reports[mode], j = _report(cli, mode)
        assert j["ok"] is False
        assert any(pid.hex() in o and "hash mismatch" in p for o, p, _ in reports[mode]), reports[mode]
        named = {f for _, _, files in reports[mode] for f in files}
        assert named == want_files, (named, want_files)
        if isinstance(where, str):
            assert any("header unreadable" in p for _, p, _ in reports[mode]), reports[mode]
    assert reports["2"] == reports["1"]


def test_a_clean_repository_reads_every_byte_once_in_worker_processes(cli, two_packs, monkeypatch):
    """Every pack read whole (bytes_read is the sum of the pack sizes), no damage, and the workers' requests
    are counted in --json."""
    src, lay = two_packs
    monkeypatch.setattr(checker, "READ_PIECE", 256 * 1024)
    _, j = _report(cli, "2")
    assert j["ok"] is True and j["packs_read"] == len(lay.pack_sizes)
    assert j["bytes_read"] == sum(lay.pack_sizes.values())
    assert j["bytes_down"] >= j["bytes_read"]


def test_a_worker_that_dies_fails_verify_in_one_line(cli, two_packs, monkeypatch):
    monkeypatch.setattr(checker.Checker, "_check_in_child", lambda self, msg: os._exit(9))
    res = cli("verify", "--read-data", ok=1)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "worker process died" in lines[0], res.err


def test_overlapping_index_entries_past_the_first_piece_are_damage_not_a_crash(cli, two_packs, monkeypatch):
    """Index lengths one byte too long, after the first piece: each entry then reaches into the next, so the
    pieces chain past the buffer sized for them. The entries come from this machine's catalog here (edited),
    so verify finds the catalog, not the repository, to blame: exit 1 and a rebuild hint -- never an internal
    error. After the rebuild the repository verifies clean."""
    monkeypatch.setattr(checker, "READ_PIECE", 256 * 1024)
    cli("verify")  # (the catalog is synced)
    _catalog_edit(cli, "UPDATE blocks SET length = length + 1 WHERE kind = 'D' AND offset > 300000")
    for jobs in ("2", "1"):
        res = with_jobs(cli, jobs, "verify", "--read-data", ok=1)
        assert "catalog disagrees" in res.err and "catalog rebuild" in res.err, res.err
        assert "internal error" not in res.err and "damaged:" not in res.err, res.err
    cli("catalog", "rebuild")
    assert cli("--json", "verify", "--read-data").json["ok"] is True


def test_the_report_does_not_depend_on_which_finished_first(cli, two_packs, tmp_path):
    """A damaged tree block: the reads (in the workers) and the walk (here) both meet it. Each run, with a fresh
    cache (so trees are read from the repository), gives the report --jobs 1 gives."""
    import shutil

    src, lay = two_packs
    tree_pid = next(p for p, e in lay.blocks.values() if e.kind == "T")
    path = pack_path(cli.repo, tree_pid)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    seen = set()
    for mode in ("1", "2", "2", "2", "2"):
        shutil.rmtree(cli.cache, ignore_errors=True)
        seen.add(tuple(_report(cli, mode)[0]))
    assert len(seen) == 1, seen


@pytest.mark.parametrize("args", [[], ["--read-data"]])
def test_an_index_segment_damaged_after_the_catalog_synced_it_is_found(cli, two_packs, args):
    """The nightly verify runs with a warm cache: a segment damaged since this machine synced it must still be
    reported (a new machine could restore nothing from it), in every mode."""
    cli("verify")  # (synced: this machine's catalog holds the segment)
    seg = sorted((cli.repo / "index").iterdir())[0]
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.chmod(0o644)
    seg.write_bytes(bytes(data))
    for jobs in ("2", "1"):
        j = with_jobs(cli, jobs, "--json", "verify", *args, ok=20).json
        assert [d["object"] for d in j["damage"]].count(f"index/{seg.name}") == 1, j["damage"]


def test_restore_blames_a_disagreeing_catalog_not_the_repository(cli, two_packs, tmp_path):
    """A catalog row edited (its offset one byte off): the block fails its check when restored. The repository's
    own index says otherwise, so the restore exits 1 naming the catalog (rebuild it), not 20; after the rebuild
    the same restore is whole."""
    src, lay = two_packs
    _catalog_edit(cli, "UPDATE blocks SET offset = offset + 1 WHERE kind = 'D' AND offset > 0")
    for jobs in ("2", "1"):
        res = with_jobs(cli, jobs, "restore", "latest", "--target", tmp_path / f"t{jobs}", ok=1)
        assert "catalog disagrees" in res.err and "catalog rebuild" in res.err, res.err
    cli("catalog", "rebuild")
    cli("restore", "latest", "--target", tmp_path / "t3")
    assert (tmp_path / "t3" / str(src / "big.bin")[1:]).read_bytes() == (src / "big.bin").read_bytes()


def test_real_damage_is_never_hidden_behind_a_disagreeing_catalog(cli, damaged_setup, tmp_path):
    """A byte flipped in one pack (the repository's damage) and a catalog row edited for a block of another
    pack (the cache's): verify and restore report the real damage, exit 20 -- the catalog only gets a note."""
    src, lay = damaged_setup  # (1 MiB packs)
    big_pid = lay.blocks[lay.files[str(src / "f2.bin")][0]][0]
    other = {p for p, e in lay.blocks.values() if e.kind == "D" and p != big_pid}
    assert other, "the fixture must spread data over two packs"
    victim = min((e for p, e in lay.blocks.values() if p == big_pid), key=lambda e: e.offset)
    hit = next(f for f, bids in lay.files.items() if victim.block_id in bids)
    path = pack_path(cli.repo, big_pid)
    data = bytearray(path.read_bytes())
    data[victim.offset + 20] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    cli("verify")  # (synced)
    _catalog_edit(cli, "UPDATE blocks SET offset = offset + 1 WHERE pack = (SELECT rowid FROM packs WHERE id = ?)",
                  sorted(other)[0])
    for jobs in ("2", "1"):
        j = with_jobs(cli, jobs, "--json", "verify", "--read-data", ok=20).json
        r = with_jobs(cli, jobs, "--json", "restore", "latest", "--target", tmp_path / f"t{jobs}", ok=20).json
        assert any(big_pid.hex() in d["object"] for d in j["damage"]), j["damage"]
        assert any(hit in d["files"] for d in j["damage"]), j["damage"]
        assert any("catalog disagrees" in i for i in j["info"]), j["info"]
        assert any(d["path"] == hit for d in r["damaged"]) and "catalog_problem" not in r, r


def test_packs_of_thousands_of_blocks_all_damaged_never_block_the_pipe(cli, tmp_path):
    """Packs are sent to a worker ahead of time only when they fit in the socket's buffer; a pack of 3,000 tiny
    blocks (a bigger message) waits for an idle worker. Its reply, damage for every block, is bigger than the
    buffer too: verify must still finish, with the same report as one process."""
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(11)
    make_tree(tmp_path / "src", {f"d{d}": {f"f{i}.txt": rnd.randbytes(200) for i in range(1500)}
                                 for d in range(4)})
    with_jobs(cli, "1", "backup", tmp_path / "src")  # (one pack writer: packs of 3,000+ blocks)
    packs = sorted((p for p in (cli.repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    for at in range(100, len(data) - 200, 150):  # every block
        data[at] ^= 0x01
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    two, j = _report(cli, "2")
    one, _ = _report(cli, "1")
    assert j["ok"] is False and two == one and len(two) > 1000


def test_the_verify_subset_rotation_survives_a_prune(cli, tmp_path):
    """Every prune makes the next sync reload the catalog's index, and that threw away each pack's last
    verification time: a nightly `forget --prune` then made `verify --read-data-subset 25%` read the same
    lowest-id packs every night (6 nights read 9 of 24 packs). The times are carried over the reload."""
    cli("init", *FAST_INIT, "--pack-size", "1")
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    for i in range(16):
        (src / f"f{i}").write_bytes(rnd.randbytes(1_000_000))
    cli("backup", src)
    seen: set[str] = set()
    for night in range(5):
        (src / "small").write_text(f"night {night}")
        cli("backup", src)
        cli("forget", "--keep-last", "1", "--prune")
        cli("verify", "--read-data-subset", "25%")
        (db,) = list(cli.cache.glob("*/catalog.db"))
        con = sqlite3.connect(db)
        seen |= {bytes(r[0]).hex() for r in con.execute("SELECT id FROM packs WHERE verified_at IS NOT NULL")}
        total = con.execute("SELECT count(*) FROM packs").fetchone()[0]
        con.close()
    assert len(seen) >= total, f"{len(seen)} of {total} packs read in 5 nights at 25 %"


def test_the_slices_of_read_data_subset_read_every_pack_once_for_any_m(cli, two_packs):
    """n/m was packed into one integer (n * 1,000,000 + m): an m of a million or more came apart wrong --
    `1/1000000` crashed verify ("internal error: ZeroDivisionError"), `1/1000001` read no pack at all."""
    total = cli("--json", "verify").json["packs"]
    assert total >= 3
    for m in (3, 1_000_000, 1_000_001, 2**40):
        read = 0
        for n in (range(1, m + 1) if m <= 3 else (1, m)):
            res = cli("--json", "verify", "--read-data-subset", f"{n}/{m}", ok=False)
            assert res.code == 0 and "Traceback" not in res.err, res.err
            read += res.json["packs_read"]
        assert read == total if m <= 3 else read <= total
