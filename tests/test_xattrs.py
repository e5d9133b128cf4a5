"""Extended attributes (on Linux also POSIX ACLs and file capabilities) are backed up and restored, carried
over unchanged files, read again for a parent snapshot that predates them, and validated when read back."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tree, with_jobs

from vault import archiver, fsmeta
from vault.errors import IntegrityError
from vault.model import XATTR_MAX_TOTAL, Node, Tree

IS_ROOT = os.geteuid() == 0
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # v2, permitted+effective: cap_net_raw


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries)


ACL_ACCESS = _acl((0x01, 6, 0xFFFFFFFF), (0x02, 6, 65534), (0x04, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
                  (0x20, 4, 0xFFFFFFFF))  # u::rw- u:65534:rw- g::r-- m::rw- o::r--
ACL_DEFAULT = _acl((0x01, 7, 0xFFFFFFFF), (0x04, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))


def xattrs(p: Path) -> dict[bytes, bytes]:
    return {os.fsencode(n): os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}


def _set(p: Path, name: bytes, value: bytes) -> None:
    try:
        os.setxattr(p, name, value, follow_symlinks=False)
    except OSError as exc:
        pytest.skip(f"cannot set {name!r} here: {exc.strerror}")


def _tree(tmp_path: Path) -> tuple[Path, dict[str, dict[bytes, bytes]]]:
    src = make_tree(tmp_path / "src", {"f": b"data\n", "plain": b"none", "d": {"g": b"x" * 300_000}, "empty-d": {}})
    want = {"f": {b"user.a": b"1", b"user.caf\xe9": bytes(range(256)), b"user.empty": b""},
            "d": {b"user.dir": b"\0\xff", b"system.posix_acl_default": ACL_DEFAULT},
            "d/g": {b"user.big": os.urandom(3000), b"system.posix_acl_access": ACL_ACCESS}}
    if IS_ROOT:
        os.symlink("f", src / "l")
        os.mkfifo(src / "p")
        want["f"][b"trusted.t"] = b"tt"
        want["f"][b"security.capability"] = CAP_NET_RAW
        want["l"] = {b"trusted.link": b"on the link itself"}
        want["p"] = {b"trusted.fifo": b"z"}
    for rel, attrs in want.items():
        for name, value in attrs.items():
            _set(src / rel, name, value)
    for rel in want:  # what the kernel keeps (an ACL may be stored in its own canonical form)
        want[rel] = xattrs(src / rel)
    os.utime(src / "d", ns=(1_700_000_000_123_456_789,) * 2)
    return src, want


def _check(target: Path, src: Path, want: dict) -> None:
    base = target / src.relative_to("/")
    for rel, attrs in want.items():
        assert xattrs(base / rel) == attrs, rel
    assert xattrs(base / "plain") == {}
    assert os.stat(base / "d").st_mtime_ns == 1_700_000_000_123_456_789  # (set after the attributes)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_extended_attributes_acls_and_capabilities_come_back(repo, tmp_path, jobs):
    src, want = _tree(tmp_path)
    with_jobs(repo, jobs, "backup", src)
    with_jobs(repo, jobs, "restore", "latest", "--target", tmp_path / "out")
    _check(tmp_path / "out", src, want)
    entries = {e["path"]: e for e in repo("--json", "ls", "latest", src).json["entries"]}
    assert entries[str(src / "d" / "g")]["xattrs"] == sorted(os.fsdecode(k) for k in want["d/g"])
    assert "xattrs" not in entries[str(src / "plain")]


def test_unchanged_files_keep_theirs_and_a_changed_attribute_is_stored(repo, tmp_path):
    src, want = _tree(tmp_path)
    repo("backup", src)
    first = repo("--json", "backup", src).json
    assert first["files_unmodified"] == 3 and first["files_new"] == 0
    repo("restore", first["snapshot_id"], "--target", tmp_path / "out1")
    _check(tmp_path / "out1", src, want)
    os.setxattr(src / "d" / "g", b"user.big", b"changed")  # only an attribute: the ctime moves
    want["d/g"][b"user.big"] = b"changed"
    os.setxattr(src / "d", b"user.dir", b"new")
    want["d"][b"user.dir"] = b"new"
    second = repo("--json", "backup", src).json
    diff = repo("--json", "diff", first["snapshot_id"], second["snapshot_id"]).json
    assert {str(src / "d"), str(src / "d" / "g")} <= set(diff["modified"]), diff
    repo("restore", second["snapshot_id"], "--target", tmp_path / "out2")
    _check(tmp_path / "out2", src, want)


def test_a_parent_from_before_attributes_were_stored_does_not_hide_them(repo, tmp_path, monkeypatch):
    """Upgrading: the first snapshot was taken without attributes. The next backup finds every file
    unchanged, yet must read the attributes of each (not its data) instead of carrying over "none"."""
    src, want = _tree(tmp_path)
    with monkeypatch.context() as m:  # (an older vault: reads none, writes no mark)
        m.setattr(archiver, "read_xattrs", lambda target: (None, None))
        m.setattr("vault.filereader.read_xattrs", lambda target: (None, None))
        m.setattr(archiver, "XATTRS_MARK", "something-else")
        with_jobs(repo, "1", "backup", src)
    repo("restore", "latest", "--target", tmp_path / "old")
    assert xattrs(tmp_path / "old" / src.relative_to("/") / "f") == {}  # (the simulation holds)
    res = repo("--json", "backup", src).json
    assert res["files_unmodified"] == 3 and res["bytes_added"] > 0
    repo("restore", "latest", "--target", tmp_path / "out")
    _check(tmp_path / "out", src, want)


def test_without_root_trusted_and_security_attributes_are_left_out(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    monkeypatch.setattr(fsmeta, "IS_ROOT", False)
    problems, _ = fsmeta.apply_xattrs(os.fsencode(f), ((b"security.capability", CAP_NET_RAW), (b"trusted.t", b"1"),
                                                        (b"user.u", b"2")))
    assert problems == []
    assert xattrs(f) == {b"user.u": b"2"}


def test_a_file_system_without_attributes_is_one_warning(tmp_path):
    problems, _ = fsmeta.apply_xattrs(b"/proc/self/status", ((b"user.a", b"1"), (b"user.b", b"2")))
    assert len(problems) == 1 and "not restored" in problems[0], problems


def test_the_tree_format_round_trips_and_old_trees_have_none():
    n = Node(b"f", "file", 0o644, xattrs=((b"user.b", b"2"), (b"user.\xff", b"\0")))
    doc = json.loads(Tree([n]).encode())
    assert doc["nodes"][0]["xattrs"] == [{"name": "user.b", "value": "Mg=="}, {"name_b64": "dXNlci7/", "value": "AA=="}]
    assert Tree.decode(Tree([n]).encode()).nodes[0].xattrs == n.xattrs
    assert Tree.decode(Tree([Node(b"f", "file")]).encode()).nodes[0].xattrs is None
    assert "xattrs" not in Tree([Node(b"f", "file")]).encode().decode()  # (no field when there are none)


@pytest.mark.parametrize("bad", [
    {}, "user.a", [["user.a", "MQ=="]], [{"name": "", "value": ""}], [{"name": "user.\u0000", "value": ""}],
    [{"name": "u" * 256, "value": ""}], [{"name": "user.a"}], [{"name": "user.a", "value": 1}],
    [{"name": "user.a", "value": "!!"}], [{"name": "user.a", "value": "MQ=="}] * 2,
    [{"name": f"user.{i}", "value": "A" * 4096} for i in range(400)],
    [{"name": "user.a", "value": "A" * (XATTR_MAX_TOTAL * 2)}],
])
def test_malformed_attributes_in_a_tree_are_rejected(bad):
    doc = {"nodes": [{"name": "f", "type": "file", "mode": 420, "xattrs": bad}], "v": 1}
    with pytest.raises(IntegrityError):
        Tree.decode(json.dumps(doc).encode())


@pytest.mark.skipif(not IS_ROOT or not os.path.exists("/usr/sbin/getcap"), reason="needs root and getcap")
def test_a_capability_survives_the_owner_being_set(repo, tmp_path):
    """chown clears file capabilities: restore sets attributes after the owner."""
    src = make_tree(tmp_path / "src", {"ping": b"\x7fELF"})
    os.chown(src / "ping", 12345, 54321)
    _set(src / "ping", b"security.capability", CAP_NET_RAW)
    repo("backup", src)
    repo("restore", "latest", "--target", tmp_path / "out")
    out = tmp_path / "out" / src.relative_to("/") / "ping"
    assert os.stat(out).st_uid == 12345
    assert "cap_net_raw" in subprocess.run(["/usr/sbin/getcap", out], capture_output=True, text=True).stdout


def test_no_acl_is_inherited_and_stale_attributes_go(repo, tmp_path):
    """Restoring again into a target whose directory now has the snapshot's default ACL: each new file got an
    ACL from it (another user could read a 0640 file the snapshot has without one). A directory already in
    the target kept attributes the snapshot does not have."""
    src = make_tree(tmp_path / "src", {"share": {"plan.txt": b"secret"}})
    os.chmod(src / "share" / "plan.txt", 0o640)
    _set(src / "share", b"system.posix_acl_default", _acl((0x01, 7, 0xFFFFFFFF), (0x02, 7, 1000),
                                                          (0x04, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
                                                          (0x20, 0, 0xFFFFFFFF)))
    _set(src / "share", b"user.keep", b"1")
    repo("backup", src)
    out = tmp_path / "out"
    repo("restore", "latest", "--target", out)
    dst = out / src.relative_to("/") / "share"
    os.setxattr(dst, b"user.stale", b"x")
    res = repo("restore", "latest", "--target", out)  # (the directory has its default ACL now)
    assert xattrs(dst / "plan.txt") == {}, res.err
    assert os.stat(dst / "plan.txt").st_mode & 0o7777 == 0o640
    assert set(xattrs(dst)) == {b"user.keep", b"system.posix_acl_default"}


def test_attributes_are_set_before_a_read_only_mode(tmp_path):
    """Without the power to override permissions, the owner may not set user.* attributes on a read-only
    file: they are set before the mode."""
    from conftest import run_unprivileged

    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o600)
    code = ("import os, sys\n"
            "from vault import fsmeta\n"
            "from vault.model import Node\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "n = Node(b'f', 'file', 0o444, os.getuid(), os.getgid(), xattrs=((b'user.a', b'1'),))\n"
            "print(fsmeta.apply_metadata(fd, n, owner_set=True))\n")
    p = run_unprivileged(["-c", code, str(f)], dict(os.environ))
    assert p.returncode == 0, p.stderr
    assert xattrs(f) == {b"user.a": b"1"} and os.stat(f).st_mode & 0o7777 == 0o444, p.stdout


def test_failures_of_one_entry_are_one_line(tmp_path):
    os.symlink("nowhere", tmp_path / "l")  # (user.* attributes are refused on a symlink, even to root)
    problems, _ = fsmeta.apply_xattrs(os.fsencode(tmp_path / "l"), tuple((b"user.%d" % i, b"v") for i in range(5)))
    assert len(problems) == 1 and "user.0, user.1, user.2 and 2 more not restored" in problems[0], problems


def test_attributes_that_could_not_be_stored_are_named_at_every_backup(repo, tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", {"f": b"data", "d": {}})
    _set(src / "f", b"user.a", b"x" * 200)
    _set(src / "d", b"user.a", b"x" * 200)
    monkeypatch.setattr(fsmeta, "XATTR_MAX_TOTAL", 100)
    for _ in range(2):  # (the second backup must not take them as unchanged and stored)
        res = with_jobs(repo, "1", "backup", src)
        assert res.code == 0
        assert f"{src / 'f'}: extended attributes not stored" in res.err, res.err
        assert f"{src / 'd'}: extended attributes not stored" in res.err, res.err
    repo("restore", "latest", "--target", tmp_path / "out")
    assert xattrs(tmp_path / "out" / src.relative_to("/") / "f") == {}


def test_one_name_the_target_cannot_take_does_not_drop_the_others(tmp_path):
    """btrfs lists btrfs.compression; ext4 answers EOPNOTSUPP for that name only: the ACLs, capabilities and
    user.* attributes sorted after it were all dropped, with "the file system does not support them"."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    problems, _ = fsmeta.apply_xattrs(os.fsencode(f), ((b"btrfs.compression", b"zstd"), (b"user.origin", b"1")))
    assert xattrs(f) == {b"user.origin": b"1"}
    assert problems == ["extended attribute btrfs.compression not restored: not supported by the target file system"]


@pytest.mark.skipif(not IS_ROOT, reason="needs a mount namespace")
def test_without_proc_the_attributes_of_directories_are_named_not_silently_none(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _set(d, b"user.d", b"1")
    code = ("import os, sys\n"
            "from vault import fsmeta\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "print(fsmeta.read_xattrs(fsmeta.entry_path(fd, b'd')))\n")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'umount -l /proc && exec "{sys.executable}" -c "$0" "$1"', code, str(tmp_path)],
                       capture_output=True, text=True)
    if p.returncode != 0 and "unshare" in p.stderr:
        pytest.skip(f"no mount namespace here: {p.stderr.strip()}")
    assert "(None, 'extended attributes not read: /proc is not mounted')" in p.stdout, (p.stdout, p.stderr)


def _rewrite_summary(repo_dir: Path, change) -> None:
    """Replace the repository's one snapshot with a copy whose summary ``change(summary)`` edited (what another
    vault's copy or repair writes)."""
    from conftest import PASSWORD

    from vault.backend.local import LocalBackend
    from vault.repository import Repository

    r = Repository.open(LocalBackend(repo_dir), PASSWORD.encode())
    [sid] = r.list_snapshots()
    snap = r.load_snapshot(sid)
    change(snap.summary)
    r.save_snapshot(snap)
    r.backend.delete(f"snapshots/{sid}")


def test_a_mark_copied_by_a_vault_that_dropped_the_attributes_is_not_trusted(repo, tmp_path, monkeypatch):
    """An older vault copying (or repairing) a snapshot rebuilt its trees without the attributes but kept the
    summary, and with it a bare "xattrs: true": the next backup took every unchanged file's "none" from it and
    the attributes were lost, verify clean. The mark now names the snapshot's own root tree."""
    src, want = _tree(tmp_path)
    with monkeypatch.context() as m:  # (the trees as that vault left them: no attributes)
        m.setattr(archiver, "read_xattrs", lambda target: (None, None))
        m.setattr("vault.filereader.read_xattrs", lambda target: (None, None))
        with_jobs(repo, "1", "backup", src)
    _rewrite_summary(repo.repo, lambda s: s.update(xattrs=True))
    res = repo("--json", "backup", src).json
    assert res["files_unmodified"] == 3
    repo("restore", "latest", "--target", tmp_path / "out")
    _check(tmp_path / "out", src, want)


def test_copy_and_repair_keep_the_mark_on_their_new_trees(repo, cli, tmp_path):
    """vault's own copy keeps every attribute: the mark moves to the copy's root, and a backup into the copy
    carries unchanged entries over without reading them (their attributes come from the copied trees)."""
    import json as json_mod

    from conftest import Cli, FAST_INIT

    src, want = _tree(tmp_path)
    repo("backup", src)
    dst = tmp_path / "copy"
    other = Cli(repo.capfd, dst, tmp_path / "cache2")
    other("init", *FAST_INIT)
    repo("copy", "latest", "--to", dst, "--to-password-file", _pwfile(tmp_path))
    snap = other("--json", "snapshots").json[0]
    summary = json_mod.loads(json_mod.dumps(snap["summary"]))
    assert summary["xattrs"] == snap["tree"], summary
    other("restore", "latest", "--target", tmp_path / "out")
    _check(tmp_path / "out", src, want)


def _pwfile(tmp_path: Path) -> Path:
    from conftest import PASSWORD

    p = tmp_path / "pw"
    p.write_text(PASSWORD)
    return p
