"""Damage made by hand on a fresh repository (flipped byte, truncated pack, deleted pack): restore names each
affected file, leaves none of them under its final name, restores everything else byte-identical and exits 20;
verify (with and without --read-data) finds it and names the object, the snapshot and the files."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAST_INIT, PASSWORD, make_tree

from vault.backend.local import LocalBackend
from vault.model import DIR, FILE
from vault.pack import DATA, TREE, PackEntry
from vault.pack import pack_name
from vault.repository import Repository

MiB = 1024 * 1024


@dataclass
class Layout:
    snapshot: str  # full id
    blocks: dict[bytes, tuple[bytes, PackEntry]]  # block id -> (pack id, entry)
    files: dict[str, list[bytes]]  # snapshot path -> block ids
    pack_sizes: dict[bytes, int]

    def pack_kind(self, pid: bytes) -> str:
        return next(e.kind for p, e in self.blocks.values() if p == pid)

    def files_using(self, pred) -> set[str]:
        return {f for f, bids in self.files.items() if any(pred(*self.blocks[b]) for b in bids)}


def layout(repo_dir: Path) -> Layout:
    r = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    blocks, sizes = {}, {}
    for sid in r.list_index():
        seg = r.load_index(sid)
        sizes.update(seg.sizes)
        for pid, e in seg.entries():
            blocks[e.block_id] = (pid, e)
    (sid,) = r.list_snapshots()
    snap = r.load_snapshot(sid)
    files: dict[str, list[bytes]] = {}
    stack = [(b"", snap.tree)]
    while stack:
        base, tid = stack.pop()
        for n in r.load_tree(*blocks[tid]).nodes:
            p = base + b"/" + n.name
            if n.type == DIR and n.subtree:
                stack.append((p, n.subtree))
            elif n.type == FILE:
                files[os.fsdecode(p)] = n.blocks
    return Layout(sid, blocks, files, sizes)


@pytest.fixture
def damaged_setup(cli, tmp_path):
    """A repository with 1 MiB packs and a tree of ~2 MiB random files (so they spread over packs)."""
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(2024)
    spec = {f"f{i}.bin": rnd.randbytes(2 * MiB + rnd.randrange(100_000)) for i in range(8)}
    spec["small"] = {f"s{i}.txt": f"small file {i}\n".encode() * 10 for i in range(5)}
    spec["empty"] = b""
    src = make_tree(tmp_path / "src", spec)
    cli("backup", src)
    lay = layout(cli.repo)
    assert len({p for p, e in lay.blocks.values() if e.kind == DATA}) >= 8
    return src, lay


def pack_path(repo_dir: Path, pid: bytes) -> Path:
    return repo_dir / pack_name(pid)


def first_data_pack_of(lay: Layout, path_suffix: str) -> bytes:
    f = next(f for f in lay.files if f.endswith(path_suffix))
    return lay.blocks[lay.files[f][0]][0]


def check_restore(cli, tmp_path, src: Path, lay: Layout, must_fail: set[str], may_fail: set[str]) -> None:
    target = tmp_path / "restore"
    res = cli("restore", "latest", "--target", target, ok=20)
    assert "Traceback" not in res.err
    named = {f for f in lay.files if f"{f}:" in res.err or f.encode() in res.err.encode()}
    assert must_fail <= named, f"not named on stderr: {must_fail - named}\n{res.err}"
    assert named <= must_fail | may_fail, f"named but not damaged: {named - must_fail - may_fail}"
    for f in lay.files:
        final = Path(str(target) + f)
        if f in named:
            assert not os.path.lexists(final), f"damaged file {f} left under its final name"
        else:
            assert final.read_bytes() == (Path(f)).read_bytes(), f"{f} not restored identically"
    leftovers = [os.path.join(d, n) for d, _, names in os.walk(target) for n in names if n.startswith(".vault-")]
    assert not leftovers, f"temp files left behind: {leftovers}"
    # the damaged files are also reported in --json
    resj = cli("--json", "restore", "latest", "--target", tmp_path / "restore2", ok=20).json
    assert must_fail <= {d["path"] for d in resj["damaged"]}


def check_verify(cli, lay: Layout, pid: bytes, must_fail: set[str], read_data: bool) -> None:
    args = ["--json", "verify"] + (["--read-data"] if read_data else [])
    res = cli(*args, ok=20)
    assert "Traceback" not in res.err
    rep = res.json
    assert rep["ok"] is False
    objects = [d["object"] for d in rep["damage"]]
    assert any(pid.hex() in o for o in objects), f"pack {pid.hex()[:16]} not named: {objects}"
    short = lay.snapshot[:8]
    for f in must_fail:
        hits = [d for d in rep["damage"] if f in d["files"]]
        assert hits, f"verify does not name {f}: {rep['damage']}"
        assert all(short in d["snapshots"] for d in hits), hits
        # the object named alongside the file is one of its blocks or the pack
        assert any(o.startswith("block ") and bytes.fromhex(o.split()[1]) in lay.files[f]
                   or pid.hex() in o for o in (d["object"] for d in hits))
    text = cli(*args[1:], ok=20)
    assert "Traceback" not in text.err and short in text.err


def test_flipped_byte_in_pack(cli, tmp_path, damaged_setup):
    src, lay = damaged_setup
    pid = first_data_pack_of(lay, "/f3.bin")
    entries = sorted((e for p, e in lay.blocks.values() if p == pid), key=lambda e: e.offset)
    victim = entries[0]
    path = pack_path(cli.repo, pid)
    data = bytearray(path.read_bytes())
    data[victim.offset + victim.length // 2] ^= 0x40
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    must = {f for f, bids in lay.files.items() if victim.block_id in bids}
    assert must and len(must) < len(lay.files)
    check_restore(cli, tmp_path, src, lay, must, set())
    check_verify(cli, lay, pid, must, read_data=True)
    rep = cli("--json", "verify", "--read-data", ok=20).json
    assert any(d["object"] == f"block {victim.block_id.hex()}" for d in rep["damage"])


def test_truncated_pack(cli, tmp_path, damaged_setup):
    src, lay = damaged_setup
    pid = first_data_pack_of(lay, "/f5.bin")
    path = pack_path(cli.repo, pid)
    size = path.stat().st_size
    cut = size // 2
    os.chmod(path, 0o644)
    os.truncate(path, cut)
    must = lay.files_using(lambda p, e: p == pid and e.offset + e.length > cut)
    may = lay.files_using(lambda p, e: p == pid)
    assert must and len(may) < len(lay.files)
    check_restore(cli, tmp_path, src, lay, must, may)
    check_verify(cli, lay, pid, must, read_data=False)
    check_verify(cli, lay, pid, must, read_data=True)


def test_deleted_pack(cli, tmp_path, damaged_setup):
    src, lay = damaged_setup
    pid = first_data_pack_of(lay, "/f1.bin")
    pack_path(cli.repo, pid).unlink()
    must = lay.files_using(lambda p, e: p == pid)
    assert must and len(must) < len(lay.files)
    check_restore(cli, tmp_path, src, lay, must, set())
    check_verify(cli, lay, pid, must, read_data=False)
    check_verify(cli, lay, pid, must, read_data=True)
    rep = cli("--json", "verify", ok=20).json
    assert any(d["object"] == pack_name(pid) and "missing" in d["problem"] for d in rep["damage"])


def test_two_damaged_packs_all_files_named(cli, tmp_path, damaged_setup):
    src, lay = damaged_setup
    p1 = first_data_pack_of(lay, "/f0.bin")
    p2 = first_data_pack_of(lay, "/f7.bin")
    if p1 == p2:
        pytest.skip("both files start in one pack")
    pack_path(cli.repo, p1).unlink()
    path = pack_path(cli.repo, p2)
    data = bytearray(path.read_bytes())
    for p, e in lay.blocks.values():  # damage every block of the pack
        if p == p2:
            data[e.offset + e.length // 2] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    must = lay.files_using(lambda p, e: p in (p1, p2))
    check_restore(cli, tmp_path, src, lay, must, set())
    rep = cli("--json", "verify", "--read-data", ok=20).json
    for f in must:
        assert any(f in d["files"] for d in rep["damage"]), f


def test_missing_tree_pack(cli, tmp_path, damaged_setup):
    """The directory listings themselves are lost: verify says so; restore with a fresh catalog exits 20."""
    src, lay = damaged_setup
    tree_packs = {p for p, e in lay.blocks.values() if e.kind == TREE}
    for pid in tree_packs:
        pack_path(cli.repo, pid).unlink()
    rep = cli("--json", "verify", ok=20).json
    assert any(d["object"].startswith("tree ") for d in rep["damage"])
    assert all(lay.snapshot[:8] in d["snapshots"] for d in rep["damage"] if d["object"].startswith("tree "))
    res = cli("--cache-dir", tmp_path / "fresh-cache", "restore", "latest", "--target", tmp_path / "r", ok=20)
    assert "Traceback" not in res.err
    for f in lay.files:
        assert not os.path.lexists(str(tmp_path / "r") + f)


@pytest.mark.parametrize("read_data", [False, True])
def test_flipped_byte_in_a_tree_block(cli, tmp_path, damaged_setup, read_data):
    """A directory listing damaged in the repository is found whether verify loads it from the repository or
    (--read-data: every pack is read anyway) walks this machine's cached copy: it is named as a tree of the
    snapshot, and a fresh machine cannot restore the files below it."""
    src, lay = damaged_setup
    small = next(p for p in lay.files if p.endswith("/small/s0.txt")).rsplit("/", 1)[0]
    tid = next(n.subtree for n in _tree_nodes(cli.repo, lay) if n.name == b"small")
    pid, e = lay.blocks[tid]
    path = pack_path(cli.repo, pid)
    data = bytearray(path.read_bytes())
    data[e.offset + e.length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    rep = cli("--json", "verify", *(["--read-data"] if read_data else []), ok=20).json
    (d,) = [d for d in rep["damage"] if d["object"] == f"tree {tid.hex()}"]
    assert d["snapshots"] == [lay.snapshot[:8]] and d["files"] == [small + " (directory listing)"]
    res = cli("--cache-dir", tmp_path / "fresh-cache", "restore", "latest", "--target", tmp_path / "r", ok=20)
    assert "Traceback" not in res.err
    assert not os.path.lexists(str(tmp_path / "r") + small + "/s0.txt")
    assert Path(str(tmp_path / "r") + next(f for f in lay.files if f.endswith("/f0.bin"))).exists()


def _tree_nodes(repo_dir: Path, lay: Layout) -> list:
    """The nodes of the directory that holds ``small`` (the source root)."""
    r = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    stack = [r.load_snapshot(lay.snapshot).tree]
    while stack:
        nodes = r.load_tree(*lay.blocks[stack.pop()]).nodes
        if any(n.name == b"small" for n in nodes):
            return nodes
        stack.extend(n.subtree for n in nodes if n.type == DIR and n.subtree)
    raise AssertionError("no directory holds 'small'")


def test_tree_missing_from_the_index_is_found_by_read_data(cli, tmp_path, damaged_setup):
    """The second backup's index segment (it lists only that backup's tree pack) and its pack are lost. The
    catalog still holds the trees (a cache outlives index rebuilds): verify --read-data must not walk them from
    there, it must report the tree as missing, as a structure verify does."""
    src, lay = damaged_setup
    os.chmod(src / "small" / "s0.txt", 0o600)
    snap2 = cli("--json", "backup", src).json["snapshot_id"]
    r = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    newest = max(r.list_index(), key=lambda sid: os.stat(cli.repo / "index" / sid).st_mtime_ns)
    lost = r.load_index(newest)
    assert all(e.kind == TREE for _, e in lost.entries())
    os.unlink(cli.repo / "index" / newest)
    for pid in lost.sizes:
        pack_path(cli.repo, pid).unlink()
    for args in (["--read-data"], []):
        rep = cli("--json", "verify", *args, ok=20).json
        missing = [d for d in rep["damage"] if d["object"].startswith("tree ") and "missing" in d["problem"]]
        assert missing and all(snap2[:8] in d["snapshots"] for d in missing), (args, rep["damage"])


def test_undamaged_repository_is_clean(cli, tmp_path, damaged_setup):
    src, lay = damaged_setup
    rep = cli("--json", "verify", "--read-data").json
    assert rep["ok"] is True and rep["damage"] == []
    assert rep["packs_read"] == len({p for p, _ in lay.blocks.values()})
    cli("restore", "latest", "--target", tmp_path / "r")
    for f in lay.files:
        assert Path(str(tmp_path / "r") + f).read_bytes() == Path(f).read_bytes()


def test_corrupt_key_slot_is_reported_and_the_good_one_still_opens(repo, tmp_path):
    import os as _os

    newpw = tmp_path / "pw2"
    newpw.write_text("second password\n")
    repo("key", "add", "--new-password-file", newpw)
    slots = sorted((repo.repo / "keys").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    slots[-1].write_bytes(b'{"v": 1, "kdf": "garbage"')  # the newest slot: not the one our password opens
    r = repo("--json", "verify", ok=20)
    names = [d["object"] for d in r.json["damage"]]
    assert names == [f"keys/{slots[-1].name}"], names
    assert _os.path.exists(repo.repo / "config")


def test_damage_shared_by_snapshots_names_each_of_them(cli, tmp_path, damaged_setup):
    """Verify walks each tree once; the files a damaged block affects are still named for every snapshot
    that shares it (a second snapshot of the unchanged tree, and a third of a subdirectory)."""
    src, lay = damaged_setup
    second = cli("--json", "backup", src).json["snapshot_id"][:8]
    third = cli("--json", "backup", src / "small").json["snapshot_id"][:8]
    victim = next(bids[0] for f, bids in lay.files.items() if f.endswith("/small/s2.txt"))
    pid, entry = lay.blocks[victim]
    path = pack_path(cli.repo, pid)
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    for args in (["--read-data"], ["--read-data", "--jobs", "1"]):
        rep = cli("--json", "verify", *args, ok=20).json
        (d,) = [d for d in rep["damage"] if d["object"] == f"block {victim.hex()}"]
        assert set(d["snapshots"]) == {lay.snapshot[:8], second, third}
        assert any(f.endswith("/small/s2.txt") for f in d["files"])
        assert rep["blocks_referenced"] == len({b for bids in lay.files.values() for b in bids})


def test_damaged_newest_manifest_on_a_cold_cache_is_named_not_skipped(repo, tmp_path):
    """A new machine (empty cache) whose newest snapshot manifest is damaged: 'snapshots' and 'restore latest'
    say so (restore exits 20 after restoring the newest readable one), and naming it is damage (exit 20), not
    'no such snapshot'. Before, 'latest' silently restored the older snapshot with exit 0."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("old")
    repo("backup", src)
    (src / "f").write_text("new")
    new_id = repo("--json", "backup", src).json["snapshot_id"]
    manifest = repo.repo / "snapshots" / new_id
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 1
    manifest.write_bytes(bytes(data))
    repo.cache = tmp_path / "cold-cache"

    listed = repo("snapshots")
    assert new_id[:8] in listed.err and "cannot be read" in listed.err
    assert "1 snapshot(s)" in listed.out
    assert repo("-q", "snapshots").err == ""  # -q: the listing's warning is left out (exit 0)

    out = tmp_path / "out"
    res = repo("--json", "restore", "latest", "--target", out, ok=20)
    assert res.json["unreadable_snapshots"] == [new_id] and new_id[:8] in res.err
    assert (out / src.relative_to("/") / "f").read_text() == "old"
    named = repo("restore", new_id[:10], "--target", tmp_path / "out2", ok=20)
    assert "cannot be read" in named.err and "no snapshot" not in named.err
    assert not (tmp_path / "out2").exists()


def _flip_manifest(manifest: Path) -> None:
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(manifest, 0o644)
    manifest.write_bytes(bytes(data))


def test_unreadable_manifests_make_latest_and_at_exit_20(repo, tmp_path):
    """Cold cache, damaged manifests: with none readable, 'latest' is damage (exit 20, named), not 'no
    snapshots' (1); '--at' before every readable one is damage too (the damaged one may be the one meant); and
    a local error (exit 1) does not hide that 'latest' passed one over (exit 20)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    first = repo("--json", "backup", src, "--time", "2026-01-01T00:00:00Z").json["snapshot_id"]
    second = repo("--json", "backup", src, "--time", "2026-02-01T00:00:00Z").json["snapshot_id"]
    third = repo("--json", "backup", src, "--time", "2026-03-01T00:00:00Z").json["snapshot_id"]
    _flip_manifest(repo.repo / "snapshots" / first)
    _flip_manifest(repo.repo / "snapshots" / third)
    repo.cache = tmp_path / "cold"
    res = repo("restore", "--at", "2026-01-15T00:00:00Z", "--target", tmp_path / "o1", ok=20)
    assert first[:8] in res.err and third[:8] in res.err
    out = tmp_path / "o2"
    out.mkdir()
    (out / src.relative_to("/").parts[0]).write_text("in the way")  # a local error: exit 1 on its own
    res = repo("--json", "restore", "latest", "--target", out, ok=20)
    assert res.json["snapshot_id"] == second and res.json["errors"]
    _flip_manifest(repo.repo / "snapshots" / second)
    repo.cache = tmp_path / "colder"
    res = repo("restore", "latest", "--target", tmp_path / "o3", ok=20)
    assert "3 snapshots" in res.err and "Traceback" not in res.err


def test_a_manifest_forgotten_while_the_catalog_syncs_is_not_damage(repo, tmp_path, monkeypatch):
    """Another host's 'vault forget' (a shared lock: it runs beside this restore) deletes a manifest between
    this sync's listing and its reading: gone, not damaged -- 'latest' exits 0."""
    from vault.repository import Repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    old = repo("--json", "backup", src, "--time", "2026-01-01T00:00:00Z").json["snapshot_id"]
    repo("backup", src, "--time", "2026-02-01T00:00:00Z")
    repo.cache = tmp_path / "cold"
    listing = Repository.list_snapshots

    def listing_then_forget(self):
        ids = listing(self)
        path = repo.repo / "snapshots" / old
        if path.exists():
            os.chmod(path, 0o644)
            path.unlink()
        return ids

    monkeypatch.setattr(Repository, "list_snapshots", listing_then_forget)
    res = repo("restore", "latest", "--target", tmp_path / "out")
    assert "cannot be read" not in res.err


@pytest.mark.parametrize("how", ["flip", "truncate", "junk"])
def test_a_damaged_forget_record_is_found_by_verify(repo, tmp_path, how):
    """A ``logs/`` record (what a forget let go) is part of the repository: one that no longer opens is damage
    verify names (exit 20), not a clean report -- a machine that had not read it would call the forgotten
    snapshot lost, and repair --from-repo stops writing deleted manifests back while it stays."""
    src = make_tree(tmp_path / "src", {"a": b"one"})
    repo("backup", src, "--time", "2026-01-01T00:00:00Z")
    (src / "a").write_bytes(b"two")
    repo("backup", src, "--time", "2026-01-02T00:00:00Z")
    repo("forget", "--keep-last", "1")
    repo("verify")  # (a readable record: clean)
    (log,) = (repo.repo / "logs").iterdir()
    data = bytearray(log.read_bytes())
    os.chmod(log, 0o644)
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        del data[len(data) // 2:]
    else:
        data = bytearray(b"not a record at all")
    log.write_bytes(bytes(data))
    res = repo("--json", "verify", ok=20)
    import json
    damage = json.loads(res.out)["damage"]
    assert [d["object"] for d in damage] == [f"logs/{log.name}"], damage
    assert "let go" in damage[0]["problem"]
    res = repo("verify", ok=20)
    assert f"logs/{log.name}" in res.out + res.err and "Traceback" not in res.err
    # repair settles it: a record that it was lost stands for it (what it let go stays unknown), verify is clean
    assert "would be replaced" in repo("repair", "--dry-run").err
    assert log.exists()
    res = repo("repair")
    assert "replaced by" in res.err and not log.exists(), res.err
    repo("verify")
    assert len(list((repo.repo / "logs").iterdir())) == 1


def big_file_over_packs(cli, tmp_path) -> tuple[Path, Layout, str, list[bytes]]:
    """A repository of 1 MiB packs holding one 3 MiB file, big.bin, over at least two packs: (source, layout,
    the file's snapshot path, its packs in file order)."""
    cli("init", *FAST_INIT, "--pack-size", "1")
    src = make_tree(tmp_path / "src", {"big.bin": random.Random(9).randbytes(3 * MiB)})
    cli("backup", src, "--jobs", "1")
    lay = layout(cli.repo)
    (path,) = [f for f in lay.files if f.endswith("big.bin")]
    packs: list[bytes] = []
    for bid in lay.files[path]:
        if lay.blocks[bid][0] not in packs:
            packs.append(lay.blocks[bid][0])
    assert len(packs) >= 2, "the file must span two packs"
    return src, lay, path, packs


def flip_in_file(cli, lay: Layout, path: str, pid: bytes) -> None:
    """Flip a bit in the middle of the first block of ``path`` that pack ``pid`` holds."""
    entry = next(lay.blocks[b][1] for b in lay.files[path] if lay.blocks[b][0] == pid)
    p = pack_path(cli.repo, pid)
    data = bytearray(p.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x10
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))
