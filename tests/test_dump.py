"""vault dump: a file's bytes, or a tree as tar, to stdout; every block checked; damage -> exit 20, named."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import FAST_INIT, PASSWORD, make_tree
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


def test_dump_reads_only_a_few_blocks_ahead_of_a_slow_writer(cli, tmp_path, monkeypatch):
    """It submitted a whole batch of 256 block reads at once: a multi-GB file into a slow reader held up to 256
    blocks (of up to 8 MiB) in memory -- 744 MB RSS for a 1 GB file."""
    from vault import api
    from vault.catalog import Catalog
    from vault.config import Settings

    cli("init", *FAST_INIT, "--chunk-min", "4096", "--chunk-avg", "8192", "--chunk-max", "16384")
    src = make_tree(tmp_path / "src", {"f": random.Random(1).randbytes(3 * MiB)})
    cli("backup", src)
    real, loads = Catalog.load_block, [0]

    def counted(self, repo, loc):
        loads[0] += 1
        return real(self, repo, loc)

    monkeypatch.setattr(Catalog, "load_block", counted)

    class SlowOut:
        written = ahead = 0

        def write(self, data):
            self.written += 1
            SlowOut.ahead = max(SlowOut.ahead, loads[0] - self.written)

        def flush(self):
            pass

    out = SlowOut()
    settings = Settings(repo=str(cli.repo), cache_dir=str(cli.cache))
    api.dump(settings, lambda: PASSWORD.encode(), "latest", str(src / "f"), out)
    assert out.written > 200 and SlowOut.ahead <= 4 + 1, (out.written, SlowOut.ahead)


def test_dump_into_a_full_disk_or_a_closed_stdout_is_one_line_exit_1(cli, tmp_path, tree):
    cli("init", *FAST_INIT)
    cli("backup", tree)
    for path in (tree / "big.bin", tree / "etc"):
        with open("/dev/full", "wb") as full:
            p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(path)],
                               env={**os.environ, **cli.env()}, stdout=full, stderr=subprocess.PIPE)
        assert p.returncode == 1 and b"cannot write the output" in p.stderr and b"internal" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(tree / "big.bin")],
                       env={**os.environ, **cli.env()}, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert p.returncode == 1 and b"closed" in p.stderr, p.stderr
    # PYTHONUNBUFFERED (Docker, CI): stdout is a raw FileIO, whose write takes part of the bytes at a full disk
    # and says so only by its count -- the dump was cut short with exit 0
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(tree / "etc" / "hosts")],
                           env={**os.environ, **cli.env(), "PYTHONUNBUFFERED": "1"}, stdout=full, stderr=subprocess.PIPE)
    assert p.returncode == 1 and b"cannot write the output" in p.stderr, p.stderr
    limited = tmp_path / "limited"
    p = subprocess.run([sys.executable, "-c", "import resource, runpy, sys; "
                        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
                        "sys.argv = ['vault', 'dump', 'latest', sys.argv[1]]; runpy.run_module('vault.cli.main', "
                        "run_name='__main__')", str(tree / "big.bin")],
                       env={**os.environ, **cli.env(), "PYTHONUNBUFFERED": "1"}, stdout=open(limited, "wb"),
                       stderr=subprocess.PIPE)
    assert p.returncode == 1 and b"ulimit -f" in p.stderr, p.stderr
    assert cli.proc("dump", "latest", "").returncode == 2


@pytest.mark.skipif(not shutil.which("tar"), reason="no tar")
def test_gnu_tar_extracts_a_dumped_tree_with_its_directory_mtimes(cli, tmp_path):
    """The stream listed every entry of a directory before their contents: GNU tar set each directory's mtime
    when it met the first entry outside it, and the later entries inside then changed it to the time of the
    extraction."""
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"a": {"f": b"1", "deep": {"g": b"2"}}, "b": {"h": b"3"}, "z": b"4"},
                    mtime_ns=1_577_836_800_000_000_000)
    for d in ("a/deep", "a", "b", ""):  # (directories too: 2020-01-01, far from the time of the extraction)
        os.utime(src / d, ns=(1_577_836_800_000_000_000, 1_577_836_800_000_000_000))
    cli("backup", src)
    out = tmp_path / "x"
    out.mkdir()
    tar = subprocess.run(["tar", "-x", "-C", str(out)], input=_dump(cli, "latest", src), capture_output=True)
    assert tar.returncode == 0, tar.stderr
    got = out / str(src).lstrip("/")
    for d in ("", "a", "a/deep", "b"):
        assert (got / d).stat().st_mtime_ns == (src / d).stat().st_mtime_ns, d
    assert (got / "a/deep/g").read_bytes() == b"2"


def test_dump_keeps_each_mtime_exact_to_the_nanosecond(cli, tmp_path):
    """mtimes went into the tar through a float: 0.99999995 s past a second became the next second (`ls -l`
    and `tar -tv` showed another minute at :59), and above 2^33 s it was 1.9 us off."""
    cli("init", *FAST_INIT)
    times = {"a": 1_764_000_000_999_999_950, "b": 8_589_934_592_000_001_500, "c": -1_500_000_000, "d": 1_000}
    src = make_tree(tmp_path / "src", {n: n.encode() for n in times})
    for n, ns in times.items():
        os.utime(src / n, ns=(ns, ns))
    cli("backup", src)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", out], input=_dump(cli, "latest", src), check=True, capture_output=True)
    for n, ns in times.items():
        assert os.stat(out / str(src).lstrip("/") / n).st_mtime_ns == ns, n


def test_a_hardlinked_symlink_or_fifo_is_one_tar_link(cli, tmp_path):
    """Two names of one symlink inode (`ln -P`), or of one FIFO: restore keeps them linked, but dump wrote two
    separate entries, where GNU tar writes a hard link for a symlink (usage.md: "hard links within it as tar
    links")."""
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir()
    os.symlink("target-of-sl", src / "x" / "sl")
    os.link(src / "x" / "sl", src / "y" / "sl2", follow_symlinks=False)
    os.mkfifo(src / "x" / "ff")
    os.link(src / "x" / "ff", src / "y" / "ff2")
    cli("init", *FAST_INIT)
    cli("backup", src)
    with tarfile.open(fileobj=io.BytesIO(_dump(cli, "latest", src))) as tf:
        members = {m.name: m for m in tf.getmembers()}
    base = str(src).lstrip("/")
    kinds = sorted((members[f"{base}/x/sl"].type, members[f"{base}/y/sl2"].type))
    assert kinds == sorted((tarfile.SYMTYPE, tarfile.LNKTYPE)), kinds
    kinds = sorted((members[f"{base}/x/ff"].type, members[f"{base}/y/ff2"].type))
    assert kinds == sorted((tarfile.FIFOTYPE, tarfile.LNKTYPE)), kinds
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", out], input=_dump(cli, "latest", src), check=True)
    a, b = out / base / "x" / "sl", out / base / "y" / "sl2"
    assert os.readlink(a) == os.readlink(b) == "target-of-sl"
    assert os.lstat(a).st_ino == os.lstat(b).st_ino
    assert os.lstat(out / base / "x" / "ff").st_ino == os.lstat(out / base / "y" / "ff2").st_ino
