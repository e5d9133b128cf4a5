"""Hostile repository contents (crafted with the repository key, as a compromised host sharing the repository
could) are rejected, never followed: restore writes nothing outside its target and fails with a short
message, never a traceback. Garbage packs, index segments and snapshots are reported, not crashed on."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import resource
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard
from conftest import FAST_INIT, PASSWORD, Symlink, make_tree

from vault import index as index_mod
from vault.backend.local import LocalBackend
from vault.errors import IntegrityError
from vault.model import Snapshot
from vault.pack import DATA, TREE, PackEntry, encode_header
from vault.pack import pack_name
from vault.repository import Repository


@pytest.fixture(autouse=True)
def default_recursion_limit():
    """In-process runs get the recursion limit a real ``vault`` process has (other tests' tools, e.g.
    hypothesis, may leave it raised, which would hide parsers that recurse on hostile nesting)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(old)


class Crafter:
    """Stores hand-made blocks, trees (raw JSON node dicts), packs, index segments and snapshots."""

    def __init__(self, repo_dir: Path):
        self.r = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
        self.pending: dict[str, list[tuple[bytes, bytes, int]]] = {DATA: [], TREE: []}

    def data(self, content: bytes) -> str:
        bid = self.r.block_id(content)
        self.pending[DATA].append((bid, self.r.seal_block(bid, content), len(content)))
        return bid.hex()

    def tree(self, nodes: list[dict]) -> str:
        raw = json.dumps({"v": 1, "nodes": nodes}, separators=(",", ":")).encode()
        tid = self.r.block_id(raw)
        self.pending[TREE].append((tid, self.r.seal_block(tid, raw), len(raw)))
        return tid.hex()

    def raw_tree(self, raw: bytes) -> str:
        tid = self.r.block_id(raw)
        self.pending[TREE].append((tid, self.r.seal_block(tid, raw), len(raw)))
        return tid.hex()

    def flush(self, header_lie: int = 0) -> list[tuple[bytes, int, list[PackEntry]]]:
        packs = []
        for kind, blocks in self.pending.items():
            if not blocks:
                continue
            body, entries, claimed = b"", [], []
            for bid, sealed, raw in blocks:
                entries.append(PackEntry(kind, bid, len(body), len(sealed), raw))
                claimed.append(PackEntry(kind, bid, len(body), len(sealed) + header_lie, raw))
                body += sealed
            data = body + encode_header(claimed, self.r.cipher)
            pid = self.r.put_pack(data)
            packs.append((pid, len(data), entries))
        self.pending = {DATA: [], TREE: []}
        self.r.save_index(index_mod.from_packs(packs))
        return packs

    def snapshot(self, root: str, paths: tuple[str, ...] = ("/hostile",)) -> str:
        self.flush()
        snap = Snapshot(time=datetime.now(timezone.utc), host="evil", paths=list(paths), tree=bytes.fromhex(root))
        return self.r.save_snapshot(snap)


def name_field(name: bytes | str) -> dict:
    if isinstance(name, str):
        return {"name": name}
    return {"name_b64": base64.b64encode(name).decode()}


def fnode(name, block: str, size: int, mode: int = 0o644) -> dict:
    return {**name_field(name), "type": "file", "mode": mode, "size": size, "blocks": [block],
            "mtime_ns": 1_700_000_000_000_000_000}


def dnode(name, subtree: str) -> dict:
    return {**name_field(name), "type": "dir", "mode": 0o755, "subtree": subtree}


def lnode(name, target: str) -> dict:
    return {**name_field(name), "type": "symlink", "mode": 0o777, "target": target}


def state(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Names, types, sizes and mtimes of everything below root (not following links), minus ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in dirnames + filenames:
            p = d / n
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


@pytest.fixture
def box(tmp_path):
    """tmp/box/target is the restore target; tmp/box/outside is a directory an attack would aim at."""
    b = tmp_path / "box"
    make_tree(b / "outside", {"victim": b"do not touch", "sub": {"deep": b"nor me"}})
    (b / "target").mkdir()
    return b


def watched(tmp_path: Path, box: Path) -> dict:
    return state(tmp_path, {tmp_path / "repo", tmp_path / "cache", tmp_path / "home", box / "target"})


def assert_rejected(res) -> None:
    assert res.code != 0, f"hostile snapshot restored without complaint\n{res.out}\n{res.err}"
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, f"expected a short error, got:\n{res.err}"
    assert all(len(ln) < 400 for ln in lines), res.err


def hostile_roots(c: Crafter, box: Path) -> dict[str, str]:
    """Name -> root tree id of each hostile snapshot."""
    payload = b"pwned\n"
    blk = c.data(payload)
    size = len(payload)
    outside = str(box / "outside")
    leaf = c.tree([fnode("escaped", blk, size), fnode("victim", blk, size)])
    return {
        "dotdot-file": c.tree([fnode("..", blk, size)]),
        "dotdot-dir": c.tree([dnode("..", c.tree([dnode("outside", leaf), fnode("escaped", blk, size)]))]),
        "dotdot-dir-nested": c.tree([dnode("a", c.tree([dnode("..", c.tree([dnode("..", leaf)]))]))]),
        "dotdot-b64": c.tree([dnode(b"..", leaf)]),
        "dot-dir": c.tree([dnode(".", leaf)]),
        "slash-in-name": c.tree([fnode("../outside/victim", blk, size), fnode("a/b", blk, size)]),
        "slash-through-symlink": c.tree([lnode("a", outside), fnode("a/victim", blk, size)]),
        "absolute-name": c.tree([fnode(outside + "/escaped", blk, size)]),
        "empty-name": c.tree([fnode("", blk, size)]),
        "nul-in-name": c.tree([fnode("x\0y", blk, size)]),
        "duplicate-file": c.tree([fnode("x", blk, size), fnode("x", c.data(b"other"), 5)]),
        "symlink-and-dir": c.tree([lnode("x", outside), dnode("x", leaf)]),
        "dir-and-symlink": c.tree([dnode("x", leaf), lnode("x", outside)]),
        "duplicate-b64": c.tree([lnode("x", outside), dnode(b"x", leaf)]),
        "dup-in-subdir": c.tree([dnode("d", c.tree([lnode("x", outside), dnode("x", leaf)]))]),
        # malformed listings
        "root-is-a-data-block": blk,
        "tree-json-list": c.raw_tree(b"[]"),
        "tree-not-json": c.raw_tree(b"\xff\xfe\x00garbage"),
        "tree-deep-json": c.raw_tree(b'{"v":1,"nodes":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        "node-not-object": c.raw_tree(b'{"v":1,"nodes":[1]}'),
        "name-not-string": c.raw_tree(b'{"v":1,"nodes":[{"name":5,"type":"file"}]}'),
        "bad-type": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"door"}]}'),
        "negative-size": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"file","size":-1}]}'),
        "bool-mode": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"file","mode":true}]}'),
        "null-block": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"file","blocks":[null]}]}'),
        "blocks-string": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"file","blocks":"abcd"}]}'),
        "bad-subtree": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"dir","subtree":"zz"}]}'),
        "nul-in-target": c.raw_tree(b'{"v":1,"nodes":[{"name":"x","type":"symlink","target":"a\\u0000b"}]}'),
    }


def test_hostile_trees_are_rejected(repo, tmp_path, box):
    c = Crafter(repo.repo)
    roots = hostile_roots(c, box)
    ids = {kind: c.snapshot(root) for kind, root in roots.items()}
    # control: a benign crafted snapshot restores fine (the crafting itself is sound)
    blk = c.data(b"fine\n")
    ok = c.snapshot(c.tree([fnode("ok", blk, 5), dnode("d", c.tree([fnode("inner", blk, 5)])),
                            lnode("l", str(box / "outside"))]))
    repo("restore", ok, "--target", box / "target" / "control")
    assert (box / "target" / "control" / "d" / "inner").read_bytes() == b"fine\n"
    assert os.readlink(box / "target" / "control" / "l") == str(box / "outside")
    before = watched(tmp_path, box)
    failures = []
    for kind, sid in ids.items():
        target = box / "target" / kind
        res = repo("restore", sid, "--target", target, ok=False)
        try:
            assert_rejected(res)
        except AssertionError as exc:
            failures.append(f"{kind}: {exc}")
        after = watched(tmp_path, box)
        if after != before:
            failures.append(f"{kind}: wrote outside the target: {set(after) ^ set(before) or 'content changed'}")
            before = after
    assert (box / "outside" / "victim").read_bytes() == b"do not touch"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", [["ls", "{sid}"], ["find", "*"], ["diff", "{sid}", "{sid}"]])
def test_hostile_tree_browse_commands_fail_cleanly(repo, tmp_path, box, command):
    c = Crafter(repo.repo)
    sid = c.snapshot(hostile_roots(c, box)["dotdot-dir"])
    args = [a.format(sid=sid) for a in command]
    res = repo(*args, ok=False)
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    if command[0] != "diff":  # a snapshot compared with itself needs no tree
        assert res.code != 0


def test_hostile_tree_reported_by_verify(repo, tmp_path, box):
    c = Crafter(repo.repo)
    sid = c.snapshot(hostile_roots(c, box)["symlink-and-dir"])
    res = repo("--json", "verify", ok=20)
    assert "Traceback" not in res.err
    rep = res.json
    assert any(sid[:8] in d["snapshots"] for d in rep["damage"]), rep["damage"]


def test_existing_symlink_in_target_is_not_followed(repo, tmp_path, box):
    """Restoring over an earlier restore where a directory/file was a symlink to elsewhere."""
    outside = box / "outside"
    src = tmp_path / "src"
    make_tree(src, {"x": Symlink(str(outside)), "y": Symlink(str(outside / "victim")), "z": b"z"})
    s1 = repo("--json", "backup", src).json["snapshot_id"]
    (src / "x").unlink()
    (src / "y").unlink()
    make_tree(src, {"x": {"victim": b"pwned", "new": b"pwned"}, "y": b"pwned via y"})
    s2 = repo("--json", "backup", src).json["snapshot_id"]
    target = box / "target"
    repo("restore", s1, "--target", target)
    before = watched(tmp_path, box)
    res = repo("restore", s2, "--target", target, ok=False)
    assert "Traceback" not in res.err
    assert watched(tmp_path, box) == before, "restore wrote through a symlink in the target"
    assert (outside / "victim").read_bytes() == b"do not touch"
    assert not (outside / "new").exists()
    dst = Path(str(target) + str(src))
    # y is in the snapshot as a file: the symlink is replaced (not followed) or kept and named
    if res.code == 0:
        assert not (dst / "y").is_symlink() and (dst / "y").read_bytes() == b"pwned via y"
        assert not (dst / "x").is_symlink() and (dst / "x" / "new").read_bytes() == b"pwned"
    else:
        assert "/x" in res.err or "/y" in res.err, res.err


# --- garbage objects -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lie", ["lengths", "trailer", "garbage-header"])
def test_pack_header_lies(repo, tmp_path, lie):
    c = Crafter(repo.repo)
    blk = c.data(b"honest data\n" * 10)
    root = c.tree([fnode("f", blk, 120)])
    if lie == "lengths":
        packs = c.flush(header_lie=1000)  # header claims blocks 1000 bytes longer each: past the pack end
    else:
        packs = c.flush()
    c.r.save_snapshot(Snapshot(time=datetime.now(timezone.utc), host="h", paths=["/p"], tree=bytes.fromhex(root)))
    pid, size, _ = next(p for p in packs if p[2][0].kind == DATA)
    if lie != "lengths":
        # rewrite the pack with a lying tail, under the hash of its new bytes, and index it
        path = repo.repo / pack_name(pid)
        data = path.read_bytes()
        if lie == "trailer":
            data = data[:-4] + (2**31 + 5).to_bytes(4, "little")
        else:
            n = int.from_bytes(data[-4:], "little")
            data = data[: -4 - n] + os.urandom(n) + data[-4:]
        entries = next(p for p in packs if p[0] == pid)[2]
        pid = c.r.put_pack(data)
        c.r.save_index(index_mod.from_packs([(pid, len(data), entries)]))
    res = repo("--json", "verify", "--read-data", ok=20)
    assert "Traceback" not in res.err
    assert any(pid.hex() in d["object"] for d in res.json["damage"]), res.json["damage"]
    # other commands do not crash on it either
    for args in (["snapshots"], ["ls", "latest"], ["verify"]):
        r = repo(*args, ok=False)
        assert "Traceback" not in r.err and "internal error" not in r.err, (args, r.err)


def write_named(root: Path, prefix: str, data: bytes) -> str:
    sid = hashlib.sha256(data).hexdigest()
    (root / prefix).mkdir(exist_ok=True)
    (root / prefix / sid).write_bytes(data)
    return sid


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (384 * 1024 * 1024, 384 * 1024 * 1024))


def garbage_index_variants(c: Crafter) -> dict[str, bytes]:
    seal = lambda plain: c.r.cipher.seal(zstandard.ZstdCompressor().compress(plain), index_mod.AAD)  # noqa: E731
    return {
        "random": os.urandom(500),
        "empty": b"",
        "sealed-bad-magic": seal(b"NOPE" + bytes(100)),
        "sealed-truncated": seal(b"VIX1" + (0).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"\1" * 20),
        "sealed-huge-count": seal(b"VIX1" + (2**32 - 1).to_bytes(4, "little")),
        "sealed-not-zstd": c.r.cipher.seal(b"definitely not zstd", index_mod.AAD),
        "sealed-bad-kind": seal(b"VIX1" + bytes(4) + (1).to_bytes(4, "little") + bytes(32) + b"Q"
                                + bytes(4) + bytes(8)),
    }


@pytest.mark.parametrize("variant", ["random", "empty", "sealed-bad-magic", "sealed-truncated", "sealed-huge-count",
                                     "sealed-not-zstd", "sealed-bad-kind", "wrong-name", "not-hex-name"])
def test_garbage_index_segment(repo, tmp_path, variant):
    src = make_tree(tmp_path / "src", {"a": b"hello"})
    good = repo("--json", "backup", src).json["snapshot_id"]
    c = Crafter(repo.repo)
    if variant == "wrong-name":
        (repo.repo / "index" / ("ab" * 32)).write_bytes(os.urandom(100))
        bad = "ab" * 32
    elif variant == "not-hex-name":
        (repo.repo / "index" / "README").write_bytes(b"hello")
        bad = None
    else:
        bad = write_named(repo.repo, "index", garbage_index_variants(c)[variant])
    # a fresh catalog must load the repository despite it; first in a child process with bounded memory and
    # time, so that a parser looping on a hostile count fails this test instead of taking the machine down
    fresh = ["--cache-dir", tmp_path / "fresh"]
    try:
        proc = repo.proc(*fresh, "--json", "snapshots", timeout=60, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail("'vault snapshots' hangs on a hostile index segment")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"'vault snapshots' failed on a hostile index segment: {err[-2000:]}"
    assert [s["id"] for s in json.loads(proc.stdout)] == [good]
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    res = repo(*fresh, "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "a").read_bytes() == b"hello"
    v = repo(*fresh, "--json", "verify", ok=False)
    assert "Traceback" not in v.err
    if bad is not None:
        assert v.code == 20
        assert any(bad[:16] in d["object"] for d in v.json["damage"]), v.json["damage"]
    repo(*fresh, "backup", src)


def garbage_snapshot_variants(c: Crafter) -> dict[str, bytes]:
    from vault.repository import SNAPSHOT_AAD

    seal = lambda plain: c.r.cipher.seal(plain, SNAPSHOT_AAD)  # noqa: E731
    good = {"v": 1, "time": "2024-01-01T00:00:00.000000Z", "host": "h", "paths": ["/p"], "tags": [],
            "tree": "00" * 32}
    return {
        "random": os.urandom(300),
        "empty": b"",
        "sealed-not-json": seal(b"\xff\xfe not json"),
        "sealed-json-list": seal(b"[1, 2, 3]"),
        "sealed-bad-time": seal(json.dumps({**good, "time": "yesterday"}).encode()),
        "sealed-bad-tree": seal(json.dumps({**good, "tree": "zz"}).encode()),
        "sealed-missing-fields": seal(json.dumps({"v": 1}).encode()),
        "sealed-wrong-types": seal(json.dumps({**good, "paths": 5, "tags": {"a": 1}}).encode()),
        "sealed-huge-version": seal(json.dumps({**good, "v": 10**30}).encode()),
        "sealed-deep-json": seal(b"[" * 200_000 + b"]" * 200_000),
    }


@pytest.mark.parametrize("variant", ["random", "empty", "sealed-not-json", "sealed-json-list", "sealed-bad-time",
                                     "sealed-bad-tree", "sealed-missing-fields", "sealed-wrong-types",
                                     "sealed-huge-version", "sealed-deep-json"])
def test_garbage_snapshot(repo, tmp_path, variant):
    src = make_tree(tmp_path / "src", {"a": b"hello"})
    good = repo("--json", "backup", src).json["snapshot_id"]
    c = Crafter(repo.repo)
    bad = write_named(repo.repo, "snapshots", garbage_snapshot_variants(c)[variant])
    fresh = ["--cache-dir", tmp_path / "fresh"]
    res = repo(*fresh, "--json", "snapshots")
    assert "Traceback" not in res.err
    assert [s["id"] for s in res.json] == [good]
    assert bad[:8] in res.err  # named on stderr, not silently skipped
    # latest: the newest readable one is restored, the unreadable manifest named (it may be newer): exit 20
    r = repo(*fresh, "restore", "latest", "--target", tmp_path / "r", ok=20)
    assert bad[:8] in r.err and "Traceback" not in r.err
    assert (tmp_path / "r" / src.relative_to("/") / "a").read_bytes() == b"hello"
    v = repo(*fresh, "--json", "verify", ok=20)
    assert "Traceback" not in v.err
    assert any(bad[:8] in d["object"] for d in v.json["damage"]), v.json["damage"]
    res = repo(*fresh, "restore", bad[:12], "--target", tmp_path / "r2", ok=False)
    assert res.code != 0 and "Traceback" not in res.err and "internal error" not in res.err, res.err


def test_snapshot_pointing_at_missing_tree(repo, tmp_path):
    c = Crafter(repo.repo)
    sid = c.r.save_snapshot(Snapshot(time=datetime.now(timezone.utc), host="h", paths=["/p"], tree=bytes(32)))
    res = repo("restore", sid, "--target", tmp_path / "r", ok=False)
    assert res.code == 20 and "Traceback" not in res.err, res.err
    v = repo("--json", "verify", ok=20)
    assert any(sid[:8] in d["snapshots"] for d in v.json["damage"])


def test_file_size_disagreeing_with_blocks(repo, tmp_path):
    """A node whose size does not match its blocks is damage, not a silently truncated or padded file."""
    c = Crafter(repo.repo)
    blk = c.data(b"0123456789")
    root = c.tree([fnode("short", blk, 5), fnode("long", blk, 1 << 40)])
    sid = c.snapshot(root)
    target = tmp_path / "r"
    res = repo("restore", sid, "--target", target, ok=False)
    assert "Traceback" not in res.err
    problems = []
    for name in ("short", "long"):
        p = target / name
        if p.exists() and p.stat().st_size != 10:
            problems.append(f"{name}: 10 bytes of blocks restored as a file of {p.stat().st_size} bytes")
        if f"/{name}" not in res.err:
            problems.append(f"{name}: not named on stderr")
    if res.code != 20:
        problems.append(f"exit {res.code}, wanted 20")
    assert not problems, "\n".join(problems) + "\n" + res.err


def test_verify_names_files_whose_size_their_blocks_contradict(repo, tmp_path):
    """verify must not call clean what restore calls damaged: a file recorded with a size its (intact) blocks
    do not hold -- one block, several blocks, none -- is named with its snapshot; honest files are not."""
    c = Crafter(repo.repo)
    a, b = c.data(b"0123456789"), c.data(b"abcdef")
    two = {**fnode("two", a, 17), "blocks": [a, b]}
    none = {**fnode("none", a, 3), "blocks": []}
    honest = [fnode("ok", a, 10), {**fnode("ok2", a, 16), "blocks": [a, b]}, {**fnode("empty", a, 0), "blocks": []}]
    sub = c.tree([fnode("short", a, 5), *honest])
    root = c.tree([dnode("d", sub), two, none, *honest])
    sid = c.snapshot(root)
    c.snapshot(root)  # a second snapshot sharing the tree: each file is named once
    for args in ((), ("--read-data",)):
        res = repo("--json", "verify", *args, ok=False)
        assert res.code == 20, res.out + res.err
        files = [f for d in res.json["damage"] for f in d["files"]]
        named = sorted(f.split(" (")[0] for f in files)
        assert named == ["/d/short", "/none", "/two"], files
        assert any(sid[:8] in d["snapshots"] for d in res.json["damage"])
        assert "/two (its blocks hold 16 bytes, the file is recorded as 17)" in files


@pytest.mark.parametrize("variant", ["random", "empty", "json-list", "deep-json", "wrong-types", "bad-base64"])
def test_garbage_key_slot_does_not_lock_out(repo, tmp_path, variant):
    """Anyone who can write to the store (no key needed) can add a file under keys/: a malformed slot is
    skipped, and the repository still opens with the right password."""
    src = make_tree(tmp_path / "src", {"a": b"hello"})
    good = repo("--json", "backup", src).json["snapshot_id"]
    slot = {
        "random": os.urandom(200),
        "empty": b"",
        "json-list": b"[1, 2]",
        "deep-json": b"[" * 200_000 + b"]" * 200_000,
        "wrong-types": json.dumps({"v": 1, "kdf": ["argon2id"], "salt": 5, "wrapped": None}).encode(),
        "bad-base64": json.dumps({"v": 1, "kdf": {"name": "argon2id", "iterations": 1, "memory_kib": 1024,
                                                  "lanes": 1}, "salt": "!!!", "wrapped": "???"}).encode(),
    }[variant]
    (repo.repo / "keys" / ("00" * 32)).write_bytes(slot)  # sorts first
    res = repo("--json", "snapshots", ok=False)
    assert res.code == 0, res.err
    assert [s["id"] for s in res.json] == [good]
    listed = repo("--json", "key", "list", ok=False)
    assert listed.code == 0 and "Traceback" not in listed.err, listed.err
    assert any(k["damaged"] for k in listed.json)


def test_an_index_placing_two_blocks_at_one_offset_never_restores_the_wrong_bytes(repo, tmp_path):
    """An authentic but hostile index segment (loaded first) says block B lies where block A does: restore
    checks each block id against the bytes on its own, so b is named damaged (exit 20) -- never written with
    a's content and exit 0 (it was: the blob at an offset was checked against one id and written for all)."""
    c = Crafter(repo.repo)
    a_content, b_content = b"AAAAAAAAAAAAAAAA secret of a\n", b"BBBBBBBBBBBBBBBB content b!\n"
    a, b = c.data(a_content), c.data(b_content)
    root = c.tree([fnode("a", a, len(a_content)), fnode("b", b, len(b_content))])
    c.snapshot(root)
    segs = {s: c.r.load_index(s) for s in c.r.list_index()}
    pid, entries = next((p, e) for s in segs.values() for p, e in s.packs.items() if e[0].kind == DATA)
    ea = next(e for e in entries if e.block_id.hex() == a)
    size = next(s.sizes[pid] for s in segs.values() if pid in s.sizes)
    lie = index_mod.IndexSegment(packs={pid: [PackEntry(DATA, bytes.fromhex(b), ea.offset, ea.length, len(b_content))]},
                                 sizes={pid: size})
    first = min(segs)
    while True:  # a name that sorts before the real segment, so its entry for B is the one loaded
        stored = index_mod.encode(lie, c.r.cipher)
        name = hashlib.sha256(stored).hexdigest()
        if name < first:
            break
    c.r.backend.put(f"index/{name}", stored)
    res = repo("--json", "restore", "latest", "--target", tmp_path / "r", ok=20)
    out = res.json
    assert [d["path"] for d in out["damaged"]] == ["/b"], out
    assert (tmp_path / "r" / "a").read_bytes() == a_content
    assert not (tmp_path / "r" / "b").exists()


def test_segments_an_interrupted_prune_superseded_stay_ignored_on_later_syncs(repo, tmp_path):
    """An interrupted prune leaves its new segment (superseding the old ones) beside the old ones. A new
    machine's first sync ignores the old ones; its next sync must not take them for new and load them: they
    list blocks in packs the prune is about to delete, and a backup would dedup against those."""
    c = Crafter(repo.repo)
    gone = c.data(b"only in a pack the prune deletes")
    c.flush()
    kept = c.data(b"still referenced")
    root = c.tree([fnode("f", kept, len(b"still referenced"))])
    c.snapshot(root)
    old = sorted(c.r.list_index())
    packs, sizes = {}, {}
    for sid in old:
        seg = c.r.load_index(sid)
        for pid, entries in seg.packs.items():
            if all(e.block_id.hex() != gone for e in entries):
                packs[pid], sizes[pid] = entries, seg.sizes[pid]
    c.r.save_index(index_mod.IndexSegment(packs=packs, sizes=sizes,
                                          supersedes=[bytes.fromhex(s) for s in old]))
    fresh = ("--cache-dir", tmp_path / "fresh")
    for _ in range(2):  # the first sync and the one after it
        repo(*fresh, "snapshots")
        db = next((tmp_path / "fresh").rglob("catalog.db"))
        conn = sqlite3.connect(db)
        present = conn.execute("SELECT count(*) FROM blocks WHERE id=?", (bytes.fromhex(gone),)).fetchone()[0]
        conn.close()
        assert present == 0
    repo(*fresh, "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / "f").read_bytes() == b"still referenced"


def test_an_owner_beyond_this_systems_range_is_a_warning(repo, tmp_path):
    """The format allows owners up to 2**64-1: restoring one this system cannot represent is a warning for
    that entry (as root; the rest restores), never an internal error."""
    c = Crafter(repo.repo)
    big, ok = c.data(b"owned by 2**40"), c.data(b"fine")
    root = c.tree([{**fnode("big", big, 14), "uid": 1 << 40, "gid": 1 << 40}, fnode("ok", ok, 4)])
    c.snapshot(root)
    res = repo("--json", "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / "ok").read_bytes() == b"fine" and (tmp_path / "r" / "big").read_bytes() == b"owned by 2**40"
    if os.geteuid() == 0:
        assert any("out of this system's range" in w["warning"] for w in res.json["warnings"]), res.json
    assert "internal error" not in res.err and not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".vault-")]


def test_a_repaired_from_that_is_not_an_id_or_does_not_match_is_ignored(repo, tmp_path):
    """summary.repaired_from of another type crashed every command that resolves 'latest'; one naming the
    newest snapshot from an older, different manifest made that one 'latest'. Both are ignored now."""
    c = Crafter(repo.repo)
    real = c.tree([fnode("f", c.data(b"real"), 4)])
    c.flush()
    newest = c.r.save_snapshot(Snapshot(time=datetime(2026, 1, 1, tzinfo=timezone.utc), host="h", paths=["/hostile"],
                                        tree=bytes.fromhex(real)))
    other = c.tree([fnode("f", c.data(b"fake"), 4)])
    c.flush()
    for summary in ({"repaired_from": ["x"]}, {"repaired_from": {"a": 1}}, {"repaired_from": newest}):
        c.r.save_snapshot(Snapshot(time=datetime(2000, 1, 1, tzinfo=timezone.utc), host="h", paths=["/hostile"],
                                   tree=bytes.fromhex(other), summary=summary))
    out = repo("--json", "restore", "latest", "--target", tmp_path / "r").json
    assert out["snapshot_id"] == newest and (tmp_path / "r" / "f").read_bytes() == b"real"
    repo("verify")


def test_snapshot_times_before_year_1000(repo, tmp_path):
    """--time 0001-01-01: the manifest's time is written with a four-digit year (it was '1-01-01...', which
    every later command rejected), and it lists, restores and verifies."""
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", src, "--time", "0001-01-01T00:00:00Z")
    repo("backup", src, "--time", "0999-06-01T12:00:00Z")
    times = sorted(s["time"] for s in repo("--json", "snapshots").json)
    assert times == ["0001-01-01T00:00:00.000000Z", "0999-06-01T12:00:00.000000Z"]
    assert "0999-06-01" in repo("snapshots").out
    repo("restore", "--at", "0999-06-01T12:00:00Z", "--target", tmp_path / "r")
    repo("verify")


def test_names_of_one_inode_with_different_contents_are_not_linked(repo, tmp_path):
    """A crafted tree gives two entries the same dev/inode (nlink 2) but different blocks: each is restored
    with its own content, not b hardlinked to a's bytes."""
    c = Crafter(repo.repo)
    a, b = c.data(b"a" * 18), c.data(b"B" * 1000)
    same = {"inode": 77, "dev": 5, "nlink": 2}
    c.snapshot(c.tree([{**fnode("a", a, 18), **same}, {**fnode("b", b, 1000), **same}]))
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / "a").read_bytes() == b"a" * 18
    assert (tmp_path / "r" / "b").read_bytes() == b"B" * 1000
    assert os.stat(tmp_path / "r" / "a").st_ino != os.stat(tmp_path / "r" / "b").st_ino


def test_catalog_rebuild_and_copy_name_a_snapshot_with_a_malformed_tree(repo, tmp_path):
    """One snapshot whose tree is malformed: catalog rebuild finishes and lists it as a problem; copy names
    the snapshot in its one-line error (exit 20)."""
    c = Crafter(repo.repo)
    bad = c.snapshot(c.tree([{**fnode("f", c.data(b"x"), 1), "mode": 0o77777}]))
    out = repo("--json", "catalog", "rebuild").json
    assert any(p.startswith(f"snapshot {bad[:8]}") for p in out["problems"]), out
    second = tmp_path / "second"
    repo("init", *FAST_INIT, "--repo", second, "--copy-chunker-params-from", repo.repo)
    res = repo("copy", "--to", second, ok=20)
    assert f"snapshot {bad[:8]}" in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_a_host_that_is_not_utf8_is_refused_and_an_old_manifest_with_one_stays_usable(repo, tmp_path):
    """An older vault wrote a manifest whose host held lone surrogates (bytes that are not UTF-8 on the command
    line); the catalog could not store it and every command failed. Now --host must be text, and such a
    manifest is read with U+FFFD in place of those bytes."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    bad = os.fsdecode(b"h\xff")
    r = repo("backup", src, "--host", bad, ok=2)
    assert "--host" in r.err and "Traceback" not in r.err
    assert not repo("--json", "snapshots").json, "refused before anything is written"
    repo("backup", src)
    c = Crafter(repo.repo)
    root = repo("--json", "snapshots").json[0]
    snap = c.r.load_snapshot(root["id"])
    c.r.save_snapshot(Snapshot(time=datetime.now(timezone.utc), host=bad, paths=snap.paths, tree=snap.tree,
                               username=bad))
    for args in (["snapshots"], ["ls", "latest"], ["verify"], ["catalog", "rebuild"], ["stats"]):
        r = repo("--json", *args)
        assert "Traceback" not in r.err, (args, r.err)
    hosts = {s["host"] for s in repo("--json", "snapshots").json}
    assert "h\ufffd" in hosts, hosts


def test_a_directory_swapped_for_a_symlink_during_restore_is_not_followed(repo, tmp_path, box, monkeypatch):
    """Root restoring over a directory a local user can write: the user swaps a directory of the restore for a
    symlink to somewhere else after vault made it. Nothing may be written, chmod-ed or renamed through it."""
    from vault import restorer

    src = make_tree(tmp_path / "src", {"aaa": {"victim": b"mallory's content"}, "zz": {"f": b"z"},
                                       "bulk": {f"f{i}": os.urandom(3000) for i in range(5)}})
    os.chmod(src / "zz", 0o777)
    repo("backup", src)
    outside = box / "outside"
    os.chmod(outside / "victim", 0o600)
    before = watched(tmp_path, box)
    restored = box / "target" / str(src).lstrip("/")
    orig = restorer.Restorer._write_block
    marker = tmp_path / "cache" / "swapped"  # (a file: the writes run in forked worker processes)

    def swap_then_write(self, task, offset, plain, **kw):
        try:  # the first write of any worker; the directories exist now, no file has been written yet
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            for name, dest in (("aaa", outside), ("zz", outside / "victim")):
                os.rename(restored / name, restored / (name + ".old"))
                os.symlink(dest, restored / name)
        return orig(self, task, offset, plain, **kw)

    monkeypatch.setattr(restorer.Restorer, "_write_block", swap_then_write)
    res = repo("restore", "latest", "--target", box / "target", ok=False)
    assert marker.exists() and "Traceback" not in res.err
    assert (outside / "victim").read_bytes() == b"do not touch"
    assert stat.S_IMODE(os.stat(outside / "victim").st_mode) == 0o600, "the swapped-in link was chmod-ed through"
    assert watched(tmp_path, box) == before
    assert (restored / "bulk" / "f0").read_bytes() == (src / "bulk" / "f0").read_bytes(), "the rest is restored"


# --- a hostile-input round (session 10): each of these ended in "internal error" or worse -------------------------
def test_an_index_segment_claiming_a_pack_of_2_64_bytes_is_rejected_not_fatal(repo, tmp_path):
    """A segment naming a real pack with size 2**64-1 made every command fail ("internal error: OverflowError:
    Python int too large to convert to SQLite INTEGER"), repair included. It is now a bad segment: verify names it."""
    src = make_tree(tmp_path / "src", {"a": b"x" * 3000})
    repo("backup", src)
    c = Crafter(repo.repo)
    pid, entries = next((pid, e) for pid, _k, e in _indexed(c.r))
    c.r.save_index(index_mod.from_packs([(pid, (1 << 64) - 1, entries)]))
    fresh = ["--cache-dir", tmp_path / "fresh"]
    res = repo(*fresh, "snapshots", ok=False)
    assert "internal error" not in res.err and "Traceback" not in res.err
    v = repo(*fresh, "--json", "verify", ok=20)
    assert any("index" in d["object"] for d in v.json["damage"])


def _indexed(r):
    for sid in r.list_index():
        for pid, entries in r.load_index(sid).packs.items():
            yield pid, entries[0].kind, entries


def test_malformed_locks_are_stale_not_fatal(repo, tmp_path):
    """Lock objects anyone with write access could leave: a pid too large for the kernel, a pid of -1 (kill(-1, 0)
    asks about every process), refreshed = NaN or infinity (never stale), 100 KB of junk. Each made locking
    commands and 'unlock' fail with "internal error", or blocked them for ever; they are malformed: stale. (A
    finite time in the future stays live: a host whose clock runs ahead may be running a backup.)"""
    import socket

    src = make_tree(tmp_path / "src", {"a": b"x"})
    repo("backup", src)
    host = socket.gethostname()
    for doc in ({"host": host, "pid": 99999999999, "exclusive": True, "time": 1, "refreshed": float("inf")},
                {"host": host, "pid": -1, "exclusive": True, "time": 1, "refreshed": 2e9},
                {"host": "elsewhere", "pid": 5, "exclusive": True, "time": 1, "refreshed": float("nan")}):
        (repo.repo / "locks" / os.urandom(16).hex()).write_bytes(json.dumps(doc).encode())  # (a lock's name)
    (repo.repo / "locks" / ("ab" * 16)).write_bytes(b"x" * 100_000)
    for args in (["backup", src], ["prune"], ["unlock"]):
        res = repo("--lock-wait", "0", *args)
        assert "internal error" not in res.err
    assert not list((repo.repo / "locks").iterdir())


def test_summary_fields_copy_and_repair_match_on_must_be_text(repo, tmp_path):
    """copied_from / restored_from_copy holding a list or an object: copy and repair --from-repo failed with
    "internal error: TypeError: unhashable type"; such a field is now ignored."""
    from vault.model import Snapshot

    src = make_tree(tmp_path / "src", {"a": b"x"})
    good = repo("--json", "backup", src).json["snapshot_id"]
    c = Crafter(repo.repo)
    tree = next(s for s in [c.r.load_snapshot(good)]).tree
    c.r.save_snapshot(Snapshot(time=datetime.now(timezone.utc), host="h", paths=["/p"], tree=tree,
                               summary={"copied_from": ["x"], "restored_from_copy": {"a": 1}}))
    second = tmp_path / "second"
    repo("init", *FAST_INIT, "--repo", second)
    repo("copy", "--to", second)
    repo("--repo", second, "copy", "--to", repo.repo)
    assert len(repo("--json", "--repo", second, "snapshots").json) == 2


@pytest.mark.parametrize("change", ["chunker-is-text", "deep-json", "version-true", "level-float"])
def test_a_malformed_config_is_one_line_not_internal_error(repo, tmp_path, change):
    path = repo.repo / "config"
    cfg = json.loads(path.read_bytes())
    if change == "chunker-is-text":
        cfg["chunker"] = "x"
        data = json.dumps(cfg).encode()
    elif change == "deep-json":
        data = b"[" * 100_000
    elif change == "version-true":
        cfg["version"] = True
        data = json.dumps(cfg).encode()
    else:
        cfg["compression"]["level"] = 1.5
        data = json.dumps(cfg).encode()
    os.chmod(path, 0o644)
    path.write_bytes(data)
    res = repo("snapshots", ok=False)
    assert res.code in (0, 1, 20) and "internal error" not in res.err and "config" in res.err, res.err
    # (0: the copy sealed in the key slot stands in, with a warning; verify reports it, repair writes it back)
    assert res.code != 0 or ("sealed" in res.err and "config" in repo("verify", ok=20).err)
    if res.code == 0:
        repo("repair")
        assert repo("snapshots").err == ""


def test_a_frame_without_a_size_is_never_given_its_claimed_size_up_front():
    """A 19-byte zstd frame with no declared size, whose index entry claims 4 GiB: decompression allocated the
    claimed size up front (MemoryError under a memory limit). It is streamed now, bounded by what it holds."""
    import zstandard

    from vault.compress import bounded_decompress

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1000)
    with _memory_limit(512 * 1024 * 1024):
        assert bounded_decompress(frame, (1 << 32) - 1) == b"\0" * 1000
        with pytest.raises(IntegrityError):
            bounded_decompress(frame, 999)
        with pytest.raises(IntegrityError):  # a cut frame is refused, not streamed as far as it goes
            bounded_decompress(frame[:-3], (1 << 32) - 1)


@contextlib.contextmanager
def _memory_limit(n: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_pack_mixing_block_kinds_is_salvaged_by_repair_not_fatal(repo, tmp_path):
    """A pack holding a data block and a tree block (no writer makes one; no index segment can list one): repair
    failed with "internal error: ValueError: a pack holds blocks of one kind". Its blocks are stored again."""
    src = make_tree(tmp_path / "src", {"a": b"x" * 2000})
    repo("backup", src)
    c = Crafter(repo.repo)
    blocks = [(DATA, b"some data " * 50), (TREE, json.dumps({"v": 1, "nodes": []}).encode())]
    body, entries = b"", []
    for kind, plain in blocks:
        bid = c.r.block_id(plain)
        sealed = c.r.seal_block(bid, plain)
        entries.append(PackEntry(kind, bid, len(body), len(sealed), len(plain)))
        body += sealed
    c.r.put_pack(body + encode_header(entries, c.r.cipher))
    for args in (["repair", "index"], ["repair", "--read-data"]):
        res = repo(*args, ok=False)
        assert res.code in (0, 20) and "internal error" not in res.err, res.err
    assert repo("--json", "verify", "--read-data").json["ok"] is True


def test_a_huge_object_named_by_its_hash_under_snapshots_is_not_read_whole(repo, tmp_path, monkeypatch):
    """70 MB of junk under snapshots/, named by its own SHA-256: read whole (snapshots took 1.27 GB for 600 MB).
    A manifest is at most 64 MiB; past that it is damage, read only that far."""
    from vault import repository as repository_mod

    monkeypatch.setattr(repository_mod, "MAX_MANIFEST", 1 << 20)  # (the same rule, a smaller file)
    src = make_tree(tmp_path / "src", {"a": b"x"})
    repo("backup", src)
    bad = write_named(repo.repo, "snapshots", os.urandom(3 << 20))
    res = repo("--cache-dir", tmp_path / "fresh", "snapshots")
    assert bad[:8] in res.err and "over 1048576 bytes" in res.err


def test_planted_names_that_are_not_the_formats_are_ignored(repo, tmp_path):
    """Names were taken by their last component through bytes.fromhex: `data/zz/<id of an intact pack>` (5 bytes
    of junk each) was listed as that pack with its own size, verify called every pack damaged, and repair
    unindexed them and wrote empty "repaired" snapshots; a file `snapshots/ab ab ... ab` made every command an
    internal error. Only exactly canonical names (lowercase, `data/<2>/<64>`) are objects of the format."""
    src = make_tree(tmp_path / "src", {"f": os.urandom(50_000), "g": b"small"})
    repo("backup", src)
    packs = list((repo.repo / "data").glob("*/*"))
    (repo.repo / "data" / "zz").mkdir()
    for p in packs:
        (repo.repo / "data" / "zz" / p.name).write_bytes(b"junk\n")
        (repo.repo / "data" / p.parent.name / (p.name.upper())).write_bytes(b"junk\n")
    spaced = " ".join(["ab"] * 32)
    for d in ("snapshots", "index", "keys", "logs"):
        (repo.repo / d).mkdir(exist_ok=True)
        (repo.repo / d / spaced).write_bytes(b"junk\n")
    repo("verify", "--read-data")
    repo("repair")
    assert repo("--json", "restore", "latest", "--target", tmp_path / "r").json["files"] == 2
    assert [s["tags"] for s in repo("--json", "snapshots").json] == [[]]
    assert all(p.exists() for p in packs)


def test_planted_giant_objects_are_not_read_whole(repo, tmp_path):
    """A 1 GiB junk `config` cost every command 4.2 GB of memory, a junk index segment 2-3 GB, a junk log or
    key slot 1-2 GB: they were read whole (up to three times) with no bound. Each kind now has one."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    junk = {"config": repo.repo / "config", "index": repo.repo / "index" / ("a" * 64),
            "logs": repo.repo / "logs" / ("e" * 64), "keys": repo.repo / "keys" / ("c" * 64)}
    junk["logs"].parent.mkdir(exist_ok=True)
    for path in junk.values():
        with open(path, "wb") as f:
            f.truncate(1 << 30)  # (sparse: no disk)
    probe = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'vault.cli.main'] + "
             "sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, **repo.env()}
    for args in (["snapshots"], ["verify"], ["key", "list"], ["forget", "--keep-last", "1"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True)
        assert int(out.stdout.strip()) < 400_000, (args, out.stdout, out.stderr)  # KiB


def test_an_index_segment_prune_superseded_put_back_later_is_not_loaded_again(repo, tmp_path):
    """prune replaced a segment (some of its packs deleted); the old segment put back afterwards (a copy of an
    old store, or anyone who can write it) was loaded as new by the catalog that saw the prune -- it had let the
    superseded id go -- and the next backup deduplicated against its deleted packs: "1 new", exit 0, a snapshot
    that does not restore."""
    import shutil

    cli = repo
    src = tmp_path / "src"
    src.mkdir()
    (src / "base.txt").write_text("base")
    data = os.urandom(3_000_000)
    (src / "f.bin").write_bytes(data)
    cli("backup", src, "--time", "2026-01-01T00:00:00Z")
    shutil.copytree(cli.repo / "index", tmp_path / "old-index")
    (src / "f.bin").unlink()
    cli("backup", src, "--time", "2026-01-02T00:00:00Z")
    cli("forget", "--keep-last", "1", "--prune")
    for old in (tmp_path / "old-index").iterdir():
        if not (cli.repo / "index" / old.name).exists():
            shutil.copy(old, cli.repo / "index" / old.name)
    (src / "f.bin").write_bytes(data)
    cli("backup", src)
    cli("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "f.bin").read_bytes() == data


def test_an_index_segment_prune_emptied_put_back_on_a_new_machine_is_not_loaded(repo, tmp_path):
    """prune deleted a segment all of whose packs went, superseded by nothing: a copy of it put back later was a
    valid segment to every reader (a new machine, a rebuilt catalog), and the next backup deduplicated against
    its deleted packs ("1 new", exit 0, a snapshot that does not restore). Such segments are superseded now, by
    one segment of no packs that the next such prune takes over."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3_000_000)
    for round_ in range(2):  # (twice: the second prune takes the first one's segment of no packs over)
        (src / "f.bin").write_bytes(data if round_ == 0 else os.urandom(10))
        repo("backup", src)
        shutil.copytree(repo.repo / "index", tmp_path / f"old-index-{round_}")
        (src / "f.bin").unlink()
        (src / "other.txt").write_text(f"other {round_}")
        repo("backup", src)
        repo("forget", "--keep-last", "1", "--prune")
    for d in (tmp_path / "old-index-0", tmp_path / "old-index-1"):
        for old in d.iterdir():
            if not (repo.repo / "index" / old.name).exists():
                shutil.copy(old, repo.repo / "index" / old.name)
    repo.cache = tmp_path / "new-machine"
    (src / "f.bin").write_bytes(data)
    repo("backup", src)
    repo("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "f.bin").read_bytes() == data
    repo("prune")  # (the copies put back are superseded: left by "an interrupted prune", deleted)
    repo("verify", "--read-data")


def test_prune_names_a_foreign_manifest_and_the_way_out(repo, tmp_path):
    """A junk object named by its own hash under snapshots/ blocked prune for good with "run 'vault verify' and
    'vault repair'" -- but repair leaves such an object alone (it may be another repository's). Prune now says
    what it is and what to do."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    junk = os.urandom(100)
    (repo.repo / "snapshots" / hashlib.sha256(junk).hexdigest()).write_bytes(junk)
    res = repo("prune", ok=1)
    assert "keys in use do not open it" in res.err and "by hand" in res.err, res.err


@pytest.mark.parametrize("kind", ["snapshots", "index"])
def test_a_foreign_object_is_named_alike_by_verify_repair_and_prune(repo, tmp_path, kind):
    """A junk object named by its own hash: verify exits 20 naming it, but repair's closing verify said "no
    errors found" (exit 0) -- it left out what the catalog's sync had found; and under index/ prune still sent the
    user to repair, which leaves such an object alone."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    junk = os.urandom(100)
    name = hashlib.sha256(junk).hexdigest()
    (repo.repo / kind / name).write_bytes(junk)
    assert f"{kind}/{name[:8]}" in repo("verify", ok=20).err
    res = repo("repair", ok=20)
    assert f"{kind}/{name[:8]}" in res.err and "no errors found" not in res.out, res.out + res.err
    res = repo("prune", ok=1)
    assert "keys in use do not open it" in res.err and "by hand" in res.err, res.err
    (repo.repo / kind / name).unlink()
    repo("prune")
    repo("verify")
