"""The progress line: on stderr only when it is a terminal -- backup, restore and verify --read-data."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import FAST_INIT, make_tree


def _on_a_terminal(cli, *args) -> tuple[int, bytes, bytes]:
    master, slave = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", *map(str, args)], env={**os.environ, **cli.env()},
                           stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, timeout=120)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                piece = os.read(master, 65536)
            except OSError:  # (EIO: the other side is closed and drained)
                break
            if not piece:
                break
            seen += piece
        return p.returncode, p.stdout, seen
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_restore_and_verify_show_progress_on_a_terminal_only(cli, tmp_path):
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(20_000) for i in range(20)})
    cli("backup", src)
    code, out, tty = _on_a_terminal(cli, "restore", "latest", "--target", tmp_path / "r")
    assert code == 0 and b"files restored" in tty and b"\r" not in out and b"restored snapshot" in out, tty
    code, out, tty = _on_a_terminal(cli, "verify", "--read-data")
    assert code == 0 and b"packs read" in tty and b"no errors found" in out, tty
    p = cli.proc("restore", "latest", "--target", tmp_path / "r2")  # (stderr a pipe: nothing but the result)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    code, out, tty = _on_a_terminal(cli, "-q", "verify", "--read-data")
    assert code == 0 and b"packs read" not in tty


def test_a_tar_stream_is_not_written_to_a_terminal(cli, tmp_path):
    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"f": b"text\n"})
    cli("backup", src)
    master, slave = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(src)],
                           env={**os.environ, **cli.env()}, stdout=slave, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 1 and b"terminal" in p.stderr, p.stderr
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "dump", "latest", str(src / "f")],
                           env={**os.environ, **cli.env()}, stdout=slave, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 0 and os.read(master, 100).replace(b"\r", b"") == b"text\n"  # (one file: shown)
    finally:
        os.close(slave)
        os.close(master)


def test_backup_progress_moves_while_one_big_file_is_read(cli, tmp_path):
    """The backup's progress line was drawn only as directories were finished: a big file (or a directory of
    many files read by the workers) left the terminal blank until the end, then one line, cleared at once.
    Now it is drawn every quarter second while batches are waited for, and its 'added' counts the packs
    stored so far."""
    cli("init", *FAST_INIT)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for _ in range(25):
            f.write(os.urandom(8 << 20))
    code, out, tty = _on_a_terminal(cli, "backup", src)
    assert code == 0 and b"saved" in out, (out, tty)
    lines = [seg for seg in tty.split(b"\r\033[K") if b"added" in seg]
    assert len(lines) >= 2, tty
    assert len(set(lines)) >= 2, lines  # (it moved: more added, or the file done)


def test_restore_progress_shows_while_one_big_file_is_written(cli, tmp_path, capfd, monkeypatch):
    """Restore's line was drawn as files were done: one big file left the terminal blank until the end. The
    workers (forked from this process) are slowed down here, so the wait is long whatever the disk."""
    import time

    import vault.cli.progress as progress_mod
    import vault.restorer as restorer_mod

    cli("init", *FAST_INIT)
    src = make_tree(tmp_path / "src", {"big": os.urandom(24 << 20)})
    cli("backup", src)
    real = restorer_mod._pwrite_all

    def slow(fd, data, offset):
        time.sleep(0.04)
        real(fd, data, offset)

    monkeypatch.setattr(restorer_mod, "_pwrite_all", slow)
    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream: True)
    res = cli("--jobs", "2", "restore", "latest", "--target", tmp_path / "r")
    lines = [seg for seg in res.err.split("\r\033[K") if "files restored" in seg]
    assert len(lines) >= 2, res.err
    assert (tmp_path / "r" / src.relative_to("/") / "big").read_bytes() == (src / "big").read_bytes()
