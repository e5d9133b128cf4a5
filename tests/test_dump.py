"""vault dump: a file's bytes, or a tree as tar, to stdout; every block checked; damage -> exit 20, named."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import FAST_INIT, make_tree
from test_damage import first_data_pack_of, layout, pack_path

MiB = 1 << 20


@pytest.fixture
def tree(tmp_path) -> Path:
    rnd = random.Random(11)
    src = make_tree(tmp_path / "src", {
        "big.bin": rnd.randbytes(3 * MiB + 12345),
        "empty": b"",
        "etc": {"hosts": b"127.0.0.1 localhost\n", "deep": {"x.conf": b"a = 1\n" * 1000}},
        os.fsdecode(b"odd-\xff-name"): b"not utf-8\n",
    })
    os.link(src / "etc" / "hosts", src / "etc" / "hosts.lnk")
    os.symlink("hosts", src / "etc" / "hosts.sym")
    return src


def _dump(cli, *args, ok: int = 0) -> bytes:
    p = cli.proc("dump", *args)
    assert p.returncode == ok, (p.returncode, p.stderr)
    assert b"Traceback" not in p.stderr
    return p.stdout


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_dump_a_file_and_a_directory_as_tar(request, tmp_path, tree, kind):
    cli = request.getfixturevalue("cli" if kind == "local" else "s3cli")
    cli("init", *FAST_INIT, "--pack-size", "1")
    cli("backup", tree)
    assert _dump(cli, "latest", tree / "big.bin") == (tree / "big.bin").read_bytes()  # (several blocks, packs)
    assert _dump(cli, "latest", tree / "empty") == b""
    assert _dump(cli, "latest", tree / os.fsdecode(b"odd-\xff-name")) == b"not utf-8\n"
    # a directory: a tar of it and everything below, paths as in the snapshot without the leading /
    with tarfile.open(fileobj=io.BytesIO(_dump(cli, "latest", tree / "etc")), errors="surrogateescape") as tf:
        members = {m.name: m for m in tf.getmembers()}
        base = str(tree / "etc").lstrip("/")
        assert set(members) == {base, f"{base}/hosts", f"{base}/hosts.lnk", f"{base}/hosts.sym", f"{base}/deep",
                                f"{base}/deep/x.conf"}
        assert tf.extractfile(members[f"{base}/deep/x.conf"]).read() == b"a = 1\n" * 1000
        assert members[f"{base}/hosts.sym"].issym() and members[f"{base}/hosts.sym"].linkname == "hosts"
        links = [m for m in (members[f"{base}/hosts"], members[f"{base}/hosts.lnk"]) if m.islnk()]
        assert len(links) == 1  # (one of the two names holds the data, the other links to it)
        assert members[f"{base}/deep/x.conf"].mode == (tree / "etc/deep/x.conf").stat().st_mode & 0o7777
        assert int(members[f"{base}/deep/x.conf"].mtime) == int((tree / "etc/deep/x.conf").stat().st_mtime)
    # / : the whole snapshot, the non-UTF-8 name exact
    with tarfile.open(fileobj=io.BytesIO(_dump(cli, "latest", "/")), errors="surrogateescape") as tf:
        names = {os.fsencode(m.name) for m in tf.getmembers()}
        assert os.fsencode(str(tree).lstrip("/")) + b"/odd-\xff-name" in names
        data = tf.extractfile(tf.getmember(str(tree / "big.bin").lstrip("/"))).read()
        assert data == (tree / "big.bin").read_bytes()


def test_dump_at_a_time_and_the_errors(cli, tmp_path, tree):
    cli("init", *FAST_INIT)
    cli("backup", tree, "--time", "2026-01-01T10:00:00Z")
    (tree / "etc" / "hosts").write_bytes(b"changed\n")
    cli("backup", tree, "--time", "2026-01-02T10:00:00Z")
    assert _dump(cli, "--at", "2026-01-01T12:00:00Z", tree / "etc" / "hosts") == b"127.0.0.1 localhost\n"
    assert _dump(cli, "latest", tree / "etc" / "hosts") == b"changed\n"
    for args in (["latest"], ["--at", "2026-01-01T12:00:00Z", "latest", tree / "empty"], ["a", "b", "c"]):
        p = cli.proc("dump", *args)
        assert p.returncode == 2 and p.stdout == b"" and len(p.stderr.splitlines()) == 1, (args, p.stderr)
    p = cli.proc("dump", "latest", tree / "nope")
    assert p.returncode == 1 and b"not in snapshot" in p.stderr and p.stdout == b""
    p = cli.proc("--json", "dump", "latest", tree / "empty")
    assert p.returncode == 2 and p.stdout == b""
    # a closed pipe: the Unix exit of a writer killed by SIGPIPE, no error message
    r, w = os.pipe()
    os.close(r)
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(tree / "big.bin")],
                       env={**os.environ, **cli.env()}, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    assert p.returncode == 141 and p.stderr == b"", p.stderr


def test_dump_of_damaged_data_stops_names_the_file_and_exits_20(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    rnd = random.Random(5)
    src = make_tree(tmp_path / "src", {f"f{i}.bin": rnd.randbytes(2 * MiB) for i in range(3)})
    cli("backup", src)
    lay = layout(cli.repo)
    pid = first_data_pack_of(lay, "/f1.bin")
    path = pack_path(cli.repo, pid)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    p = cli.proc("dump", "latest", src / "f1.bin")
    assert p.returncode == 20, p.stderr
    assert str(src / "f1.bin").encode() in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert len(p.stdout) < 2 * MiB  # (cut short at the damaged block, never passed off as whole)
    p = cli.proc("dump", "latest", src)
    assert p.returncode == 20 and b"f1.bin" in p.stderr
    # a missing pack is damage too
    path.unlink()
    p = cli.proc("dump", "latest", src / "f1.bin")
    assert p.returncode == 20 and str(src / "f1.bin").encode() in p.stderr, p.stderr
