"""A pack that cannot be read *here and now* (permissions, too few file descriptors, a network that stayed
down) is an error, exit 1, never reported as damage (exit 20): the repository may be perfectly sound, and a
sysadmin told "damaged" at 3 a.m. would start repairing a healthy repository."""

from __future__ import annotations

import errno
import os

from conftest import make_tree, run_unprivileged, scan

from vault.backend.local import translate_os_error
from vault.errors import PermanentError, is_damage


def test_too_many_open_files_is_not_damage():
    err = translate_os_error(OSError(errno.EMFILE, "Too many open files"), "reading", "data/ab/x", "/r",
                             missing=True)
    assert isinstance(err, PermanentError) and not is_damage(err)
    assert "too many open files" in str(err) and "ulimit -n" in str(err)
    eio = translate_os_error(OSError(errno.EIO, "Input/output error"), "reading", "data/ab/x", "/r", missing=True)
    assert is_damage(eio)  # the store's disk failing under the pack: that is damage
    missing = translate_os_error(OSError(errno.ENOENT, "No such file"), "reading", "data/ab/x", "/r", missing=True)
    assert is_damage(missing)


def _packs(root):
    return [p for p in (root / "data").rglob("*") if p.is_file()]


def test_pack_without_read_permission_is_an_error(repo, tmp_path, restricted_ok):
    src = make_tree(tmp_path / "src", {"a.bin": os.urandom(300_000), "d": {"b.txt": b"hello\n" * 1000}})
    repo("backup", src)
    packs = _packs(repo.repo)
    assert packs
    for p in packs:
        p.chmod(0)
    try:
        env = {**os.environ, **repo.env()}
        for args in (["restore", "latest", "--target", str(tmp_path / "t")], ["verify", "--read-data"]):
            p = run_unprivileged(["-m", "vault.cli.main", *args], env)
            err = p.stderr.decode(errors="replace")
            assert p.returncode == 1, (args, p.returncode, err)
            assert "permission denied" in err, err
            assert "damaged" not in err and "Traceback" not in err, err
    finally:
        for p in packs:
            p.chmod(0o444)
    # nothing was recorded against the repository: readable again, it verifies clean and restores whole
    repo("verify", "--read-data")
    repo("restore", "latest", "--target", tmp_path / "t2")
    assert scan(tmp_path / "t2" / src.relative_to("/")) == scan(src)


def test_control_characters_in_names_never_split_a_stderr_line(repo, tmp_path):
    """A name holding a newline or a tab (legal on Linux, and what an attacker would plant) is one line in the
    text report, its control characters shown as '?'; --json keeps the name exactly."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil\nname\tx").write_bytes(os.urandom(200_000))
    repo("backup", src)
    for p in _packs(repo.repo):
        with open(p, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    res = repo("restore", "latest", "--target", tmp_path / "t", ok=20)
    lines = res.err.splitlines()
    assert lines and all(line.startswith(("damaged: ", "vault: ")) for line in lines), lines
    assert any("evil?name?x" in line for line in lines), lines
    res = repo("verify", "--read-data", ok=20)
    assert all(line.startswith(("damaged: ", "  ", "vault: ")) for line in res.err.splitlines()), res.err
    assert any("evil?name?x" in line for line in res.err.splitlines()), res.err
    res = repo("--json", "restore", "latest", "--target", tmp_path / "t2", ok=20)
    assert any(d["path"].endswith("evil\nname\tx") for d in res.json["damaged"]), res.out


def test_a_dropped_network_mount_is_not_damage_and_a_corrupt_s3_body_is():
    from botocore.exceptions import FlexibleChecksumError

    import pytest
    from types import SimpleNamespace

    from vault.backend.s3 import S3Backend
    from vault.errors import CorruptResponse, TransientError

    for code in (errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT):
        err = translate_os_error(OSError(code, os.strerror(code)), "reading", "data/ab/x", "/mnt/nfs", missing=True)
        assert isinstance(err, TransientError) and not is_damage(err), code
    with pytest.raises(CorruptResponse) as got:  # retried first (a TransientError), then damage
        with S3Backend._errors(SimpleNamespace(location="s3://b/p"), "get", "data/ab/x"):
            raise FlexibleChecksumError(error_msg="Expected checksum x did not match calculated checksum y")
    assert isinstance(got.value, TransientError) and is_damage(got.value)


def test_a_fifo_planted_as_a_pack_is_missing_not_a_hang(repo, tmp_path):
    """A hostile repository replaces a pack with a FIFO: opening it must not wait for a writer forever."""
    src = make_tree(tmp_path / "src", {"a.bin": os.urandom(50_000)})
    repo("backup", src)
    for pack in _packs(repo.repo):  # (a data pack and a tree pack)
        pack.unlink()
        os.mkfifo(pack)
    p = repo.proc("restore", "latest", "--target", tmp_path / "t", timeout=60)
    assert p.returncode == 20, p.stderr
    assert b"not a regular file" in p.stderr or b"missing" in p.stderr, p.stderr


def test_ls_find_diff_show_control_characters_as_question_marks(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"esc\x1b[31mred": b"x", "new\nline": b"y"})
    repo("backup", src)
    for args in (["ls", "latest"], ["find", "*red*"], ["find", "new*"]):
        out = repo(*args).out
        assert "\x1b" not in out and "new\nline" not in out, out
        assert any(line.endswith(("esc?[31mred", "new?line")) for line in out.splitlines()), out
    (src / "esc\x1b[31mred").unlink()
    repo("backup", src)
    snaps = [s["id"] for s in repo("--json", "snapshots").json]
    out = repo("diff", *snaps[:2]).out
    assert "\x1b" not in out and any(line.startswith("-") and "esc?[31mred" in line for line in out.splitlines())


def test_latest_with_its_only_manifest_damaged_says_so(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": b"a\n"})
    repo("backup", src)
    [man] = list((repo.repo / "snapshots").iterdir())
    data = bytearray(man.read_bytes())
    data[30] ^= 0xFF
    man.chmod(0o644)
    man.write_bytes(bytes(data))
    repo.cache = tmp_path / "fresh-cache"  # (a new machine: this one's catalog still has the snapshot)
    res = repo("restore", "latest", "--target", tmp_path / "t", ok=20)  # damage, not "no snapshots" (1)
    assert man.name[:8] in res.err and "cannot" in res.err and "matching the filters" not in res.err, res.err
