"""backup --stdin / --stdin-from-command: a pipe (a database dump) stored as one file /NAME."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time

from conftest import FAST_INIT


def _run(cli, *args, input: bytes | None = None, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vault.cli.main", *map(str, args)], env={**os.environ, **cli.env()},
                          input=input, stdin=stdin, capture_output=True)


def test_stdin_is_stored_as_one_file_and_restores_and_dumps_exactly(cli, tmp_path):
    cli("init", *FAST_INIT)
    data = random.Random(3).randbytes(3_000_000)
    p = _run(cli, "--json", "backup", "--stdin", "--stdin-filename", "db.sql", "--tag", "db", input=data)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["files_new"] == 1 and res["bytes_processed"] == len(data)
    (snap,) = cli("--json", "snapshots").json
    assert snap["paths"] == ["/db.sql"] and snap["tags"] == ["db"] and snap["id"] == res["snapshot_id"]
    assert cli.proc("dump", "latest", "/db.sql").stdout == data
    cli("restore", "latest", "--target", tmp_path / "r")
    got = tmp_path / "r" / "db.sql"
    assert got.read_bytes() == data and stat.S_IMODE(got.stat().st_mode) == 0o600
    # the same stream again: unmodified, nothing but a tree added; a changed one: changed
    again = json.loads(_run(cli, "--json", "backup", "--stdin", "--stdin-filename", "db.sql", input=data).stdout)
    assert again["files_unmodified"] == 1 and again["bytes_added"] < 2000
    changed = json.loads(_run(cli, "--json", "backup", "--stdin", "--stdin-filename", "db.sql",
                              input=data + b"x").stdout)
    assert changed["files_changed"] == 1
    # "-" as the one PATH is standard input too; an empty stream is an empty file
    assert _run(cli, "backup", "--stdin", "-", input=b"").returncode == 0
    assert cli.proc("dump", "latest", "/stdin").stdout == b""


def test_a_command_that_fails_writes_no_snapshot(cli, tmp_path):
    cli("init", *FAST_INIT)
    ok = _run(cli, "backup", "--stdin-from-command", "--stdin-filename", "out", "--",
              sys.executable, "-c", "import sys; sys.stdout.write('x' * 100000)")
    assert ok.returncode == 0, ok.stderr
    assert cli.proc("dump", "latest", "/out").stdout == b"x" * 100000
    bad = _run(cli, "backup", "--stdin-from-command", "--stdin-filename", "out", "--",
               sys.executable, "-c", "import sys; sys.stdout.write('partial'); sys.exit(3)")
    assert bad.returncode == 1 and b"status 3" in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    missing = _run(cli, "backup", "--stdin-from-command", "--", str(tmp_path / "no-such-command"))
    assert missing.returncode == 1 and b"cannot run" in missing.stderr, missing.stderr
    assert len(cli("--json", "snapshots").json) == 1
    assert cli("--json", "verify").json["ok"] is True


def test_stdin_usage_errors(cli, tmp_path):
    cli("init", *FAST_INIT)
    for args in (["--stdin", "/etc"], ["--stdin", "--stdin-from-command", "--", "true"], ["--stdin-from-command"],
                 ["--stdin", "--exclude", "*.tmp"], ["--stdin", "--stdin-filename", "a//b"],
                 ["--stdin", "--stdin-filename", "a/../b"], ["--stdin", "--stdin-filename", "/"],
                 ["--stdin", "--stdin-filename", ".."], ["--stdin-filename", "x", str(tmp_path)], []):
        p = _run(cli, "backup", *args, input=b"data")
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and b"Traceback" not in p.stderr, (args, p.stderr)
    assert cli("--json", "snapshots").json == []
    p = _run(cli, "backup", "-", input=b"data")  # (borg's way: told of --stdin)
    assert p.returncode == 2 and b"--stdin" in p.stderr, p.stderr


def test_standard_input_closed_is_no_internal_error(cli, tmp_path):
    """Started with stdin closed (`<&-`), Python's sys.stdin is None: every command was an internal error (the
    password prompt looked at it); backup --stdin must not read whatever file vault opened as descriptor 0."""
    cli("init", *FAST_INIT)
    closed = dict(preexec_fn=lambda: os.close(0))
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", "snapshots"], env={**os.environ, **cli.env()},
                       capture_output=True, timeout=60, **closed)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", "backup", "--stdin"], env={**os.environ, **cli.env()},
                       capture_output=True, timeout=60, **closed)
    assert p.returncode == 2 and b"closed" in p.stderr, p.stderr


def test_a_non_blocking_pipe_and_a_slow_producer(cli, tmp_path):
    """A parent (node, libuv) may leave the pipe non-blocking: the read failed with EAGAIN whenever the producer
    was slow, and was reported as "the process limit is reached"."""
    cli("init", *FAST_INIT)
    r, w = os.pipe()
    os.set_blocking(r, False)
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "backup", "--stdin", "--stdin-filename", "slow"],
                         env={**os.environ, **cli.env()}, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(r)
    for i in range(5):
        time.sleep(0.2)
        os.write(w, b"piece %d\n" % i)
    os.close(w)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert cli.proc("dump", "latest", "/slow").stdout == b"".join(b"piece %d\n" % i for i in range(5))
    assert b"--exclude-caches" in _run(cli, "backup", "--stdin", "--exclude-caches", input=b"x").stderr


def test_a_stdin_filename_with_directories(cli, tmp_path):
    """restic stores `--stdin-filename dumps/db.sql` as /dumps/db.sql; vault refused any '/'."""
    cli("init", *FAST_INIT)
    for name in ("/var/dumps/db.sql", "var/dumps/db.sql"):
        p = _run(cli, "--json", "backup", "--stdin", "--stdin-filename", name, input=b"dump\n")
        assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files_unmodified"] == 1  # (the second: the same path, the first its parent)
    assert cli("--json", "snapshots").json[-1]["paths"] == ["/var/dumps/db.sql"]
    assert cli.proc("dump", "latest", "/var/dumps/db.sql").stdout == b"dump\n"
    cli("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / "var" / "dumps" / "db.sql").read_bytes() == b"dump\n"
    assert stat.S_IMODE((tmp_path / "r" / "var" / "dumps").stat().st_mode) == 0o700
