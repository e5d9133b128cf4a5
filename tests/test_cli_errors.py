"""Bad input: one line on stderr starting with "vault:" (click's usage text for its own exit 2), never a traceback,
and the documented exit code. Also the password sources, where global options may go, and --json / -q output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import FAST_INIT, PASSWORD, Cli, make_tree, tree_listing


def one_error_line(res, code: int) -> str:
    """Assert ``code`` and exactly one stderr line starting with 'vault:'; return that line."""
    err = res.err if hasattr(res, "err") else res.stderr.decode(errors="replace")
    rc = res.code if hasattr(res, "code") else res.returncode
    assert rc == code, f"exit {rc}, wanted {code}; stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"wanted exactly one stderr line, got {lines!r}"
    assert lines[0].startswith("vault:"), lines
    return lines[0]


def click_usage(res) -> None:
    assert res.code == 2, res
    assert "Traceback" not in res.err
    assert "Usage:" in res.err or res.err.startswith("vault:"), res.err


class EnvCli(Cli):
    """A Cli whose environment is exactly ``env`` (the autouse fixture already removed every VAULT_*)."""

    def __init__(self, capfd, repo, cache, env: dict):
        super().__init__(capfd, repo, cache)
        self._env = env

    def env(self) -> dict:
        return dict(self._env)


@pytest.fixture
def src(tmp_path):
    return make_tree(tmp_path / "src", {"a.txt": b"alpha\n", "d": {"b.bin": os.urandom(3000)}})


# --- repository not found ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [["snapshots"], ["backup", "SRC"], ["verify"], ["ls", "latest"], ["stats"],
                                 ["key", "list"], ["unlock"]])
def test_repository_not_found_nonexistent_dir(cli, tmp_path, src, cmd):
    cmd = [str(src) if c == "SRC" else c for c in cmd]
    res = cli(*cmd, ok=False)
    one_error_line(res, 10)
    assert not cli.repo.exists(), "a failed command must not create the repository directory"


@pytest.mark.parametrize("cmd", [["snapshots"], ["backup", "SRC"], ["restore", "latest", "--target", "T"]])
def test_repository_not_found_empty_dir(cli, tmp_path, src, cmd):
    cli.repo.mkdir()
    cmd = [str(src) if c == "SRC" else str(tmp_path / "t") if c == "T" else c for c in cmd]
    res = cli(*cmd, ok=False)
    line = one_error_line(res, 10)
    assert str(cli.repo) in line
    assert os.listdir(cli.repo) == [], "nothing may be written into a directory that is not a repository"


def test_a_keys_directory_with_no_key_slot_is_no_repository(cli, tmp_path, src):
    """A location holding only something under keys/ (an S3 console "folder" marker, a note) was taken for a
    repository that lost its key slots: exit 20, "put keys/ back from a copy". Only key slots count."""
    (cli.repo / "keys").mkdir(parents=True)
    (cli.repo / "keys" / "README").write_text("where the keys go\n")
    for cmd in (["snapshots"], ["backup", str(src)]):
        line = one_error_line(cli(*cmd, ok=False), 10)
        assert "no repository" in line


def test_repository_not_found_exit_code_end_to_end(cli, tmp_path):
    p = cli.proc("snapshots", stdin=subprocess.DEVNULL)
    one_error_line(p, 10)
    assert p.stdout == b""


# --- wrong password ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [["snapshots"], ["backup", "SRC"], ["verify", "--read-data"], ["unlock"],
                                 ["key", "add", "--new-password-file", "PW2"], ["key", "passwd",
                                 "--new-password-file", "PW2"], ["catalog", "rebuild"], ["init"]])
def test_wrong_password_changes_nothing(repo, tmp_path, src, cmd):
    repo("backup", src)
    pw2 = tmp_path / "pw2"
    pw2.write_text("another password\n")
    cmd = [str(src) if c == "SRC" else str(pw2) if c == "PW2" else c for c in cmd]
    before = tree_listing(repo.repo)
    wrong = EnvCli(repo.capfd, repo.repo, repo.cache, {**repo.env(), "VAULT_PASSWORD": "not the password"})
    res = wrong(*cmd, ok=False)
    one_error_line(res, 1 if cmd == ["init"] else 12)
    assert tree_listing(repo.repo) == before


def test_wrong_password_end_to_end(repo):
    p = repo.proc("snapshots", env={"VAULT_PASSWORD": "wrong"}, stdin=subprocess.DEVNULL)
    line = one_error_line(p, 12)
    assert "password" in line


# --- init on an existing repository -----------------------------------------------------------------------
def test_init_refuses_existing_repository(repo, src):
    repo("backup", src)
    before = tree_listing(repo.repo)
    res = repo("init", *FAST_INIT, ok=False)
    line = one_error_line(res, 1)
    assert "exist" in line
    assert tree_listing(repo.repo) == before
    # and the repository still opens with its password and holds its snapshot
    assert len(repo("--json", "snapshots").json) == 1


def test_init_refuses_with_other_password_too(repo):
    before = tree_listing(repo.repo)
    other = EnvCli(repo.capfd, repo.repo, repo.cache, {**repo.env(), "VAULT_PASSWORD": "other"})
    one_error_line(other("init", *FAST_INIT, ok=False), 1)
    assert tree_listing(repo.repo) == before


# --- no password, no TTY ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [["snapshots"], ["init", *FAST_INIT]])
def test_no_password_and_no_tty(repo, cmd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_REPOSITORY=str(repo.repo if cmd[0] != "init" else tmp_path / "newrepo"),
               VAULT_CACHE_DIR=str(repo.cache))
    p = subprocess.run([sys.executable, "-m", "vault.cli.main", *cmd], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    line = one_error_line(p, 1)
    assert "password" in line.lower()
    assert p.stdout == b"", "no prompt may go to stdout"
    assert not (tmp_path / "newrepo").exists()


# --- snapshots that do not exist --------------------------------------------------------------------------
def test_unknown_snapshot_id(repo, src, tmp_path):
    repo("backup", src)
    sid = repo("--json", "snapshots").json[0]["id"]
    unknown = ("0" if sid[0] != "0" else "1") * 8
    for cmd in (["ls", unknown], ["restore", unknown, "--target", tmp_path / "t"], ["diff", unknown, "latest"]):
        line = one_error_line(repo(*cmd, ok=False), 1)
        assert unknown in line
    assert not (tmp_path / "t").exists() or not os.listdir(tmp_path / "t")


def test_latest_in_empty_repository(repo, tmp_path):
    one_error_line(repo("ls", "latest", ok=False), 1)
    one_error_line(repo("restore", "latest", "--target", tmp_path / "t", ok=False), 1)


@pytest.mark.parametrize("bad", ["xyz!", "g123", "..", "-", " "])
def test_invalid_snapshot_prefix(repo, src, bad):
    repo("backup", src)
    res = repo("ls", bad, ok=False)
    assert res.code in (1, 2)
    if res.code == 1 or res.err.startswith("vault:"):
        one_error_line(res, res.code)
    else:
        click_usage(res)


def test_ambiguous_snapshot_prefix(repo, tmp_path):
    # 17 snapshots: two of them must share their first hex digit (pigeonhole)
    src = make_tree(tmp_path / "s", {"f": b"x"})
    for i in range(17):
        repo("backup", src, "--time", f"2024-01-01T00:00:{i:02d}Z")
    ids = [s["id"] for s in repo("--json", "snapshots").json]
    firsts = [i[0] for i in ids]
    digit = next(d for d in firsts if firsts.count(d) > 1)
    line = one_error_line(repo("ls", digit, ok=False), 1)
    assert "ambiguous" in line
    # a unique prefix of the same id works
    full = next(i for i in ids if i[0] == digit)
    assert repo("--json", "ls", full[:12]).json["snapshot_id"] == full


# --- bad source paths, URLs, times ------------------------------------------------------------------------
def test_nonexistent_source_path(repo, tmp_path):
    before = tree_listing(repo.repo)
    line = one_error_line(repo("backup", tmp_path / "nope", ok=False), 1)
    assert "nope" in line
    assert len(repo("--json", "snapshots").json) == 0
    # the repository gained no data, index or snapshot
    after = tree_listing(repo.repo)
    assert {k for k in after if k.startswith(("data", "index", "snapshots"))} == \
        {k for k in before if k.startswith(("data", "index", "snapshots"))}


def test_one_of_two_sources_missing(repo, src, tmp_path):
    res = repo("backup", src, tmp_path / "nope", ok=False)
    assert res.code in (1, 3), res
    assert "nope" in res.err and "Traceback" not in res.err


@pytest.mark.parametrize("url", ["ftp://x", "s3:/x", "s3://", "http://host/path", "file://"])
def test_malformed_repository_url(capfd, tmp_path, url):
    c = EnvCli(capfd, tmp_path / "r", tmp_path / "c", {"VAULT_PASSWORD": PASSWORD, "VAULT_CACHE_DIR":
                                                        str(tmp_path / "c")})
    for cmd in (["--repo", url, "snapshots"], ["--repo", url, "init", *FAST_INIT]):
        res = c(*cmd, ok=False)
        line = one_error_line(res, 2)
        assert url in line


@pytest.mark.parametrize("at", ["yesterday-ish", "2024-13-45", "5 fortnights ago", "", "25:00", "last 10:00"])
def test_bad_at_time(repo, src, tmp_path, at):
    repo("backup", src)
    res = repo("restore", "--at", at, "--target", tmp_path / "t", ok=False)
    assert res.code == 2, res
    assert "Traceback" not in res.err
    if res.err.startswith("vault:"):
        one_error_line(res, 2)


def test_bad_backup_time(repo, src):
    res = repo("backup", src, "--time", "not a time", ok=False)
    one_error_line(res, 2)
    assert repo("--json", "snapshots").json == []


def test_bad_lock_wait(repo):
    one_error_line(repo("--lock-wait", "soon", "snapshots", ok=False), 2)


def test_unknown_option_is_click_usage(repo):
    res = repo("snapshots", "--no-such-option", ok=False)
    click_usage(res)


def test_no_repository_given(capfd, tmp_path):
    c = EnvCli(capfd, tmp_path / "r", tmp_path / "c", {"VAULT_PASSWORD": PASSWORD})
    for cmd in (["snapshots"], ["init", *FAST_INIT], ["backup", str(tmp_path)]):
        res = c(*cmd, ok=False)
        assert res.code in (1, 2)
        line = one_error_line(res, res.code)
        assert "--repo" in line and "VAULT_REPOSITORY" in line


# --- password sources -------------------------------------------------------------------------------------
def _without_password(cli: Cli) -> EnvCli:
    return EnvCli(cli.capfd, cli.repo, cli.cache, {"VAULT_REPOSITORY": str(cli.repo),
                                                   "VAULT_CACHE_DIR": str(cli.cache)})


def test_password_file_option(repo, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    c = _without_password(repo)
    assert c("--json", "snapshots", "--password-file", pw).json == []
    assert c("--password-file", pw, "--json", "snapshots").json == []
    # it wins over a wrong VAULT_PASSWORD
    c2 = EnvCli(repo.capfd, repo.repo, repo.cache, {**c.env(), "VAULT_PASSWORD": "wrong"})
    c2("snapshots", "--password-file", pw)
    # a wrong file is a wrong password; a missing file a clear error
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    one_error_line(c("snapshots", "--password-file", bad, ok=False), 12)
    line = one_error_line(c("snapshots", "--password-file", tmp_path / "missing", ok=False), 1)
    assert "missing" in line


def test_password_file_env(repo, tmp_path):
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD.encode() + b"\r\n")
    c = EnvCli(repo.capfd, repo.repo, repo.cache, {**_without_password(repo).env(), "VAULT_PASSWORD_FILE": str(pw)})
    assert c("--json", "snapshots").json == []


def test_password_command(repo, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    c = _without_password(repo)
    assert c("--json", "snapshots", "--password-command", f"cat {pw}").json == []
    c_env = EnvCli(repo.capfd, repo.repo, repo.cache, {**c.env(), "VAULT_PASSWORD_COMMAND": f"cat {pw}"})
    assert c_env("--json", "snapshots").json == []
    line = one_error_line(c("snapshots", "--password-command", "false", ok=False), 1)
    assert "password command" in line
    line = one_error_line(c("snapshots", "--password-command", str(tmp_path / "no-such-program"), ok=False), 1)
    assert "'" + str(tmp_path / "no-such-program") + "' could not run: No such file or directory" in line


def test_a_password_command_not_in_path_is_named_with_the_path(repo, tmp_path):
    """The classic cron failure: a helper found in an interactive shell's PATH, not in cron's /usr/bin:/bin.
    The message named neither the program nor PATH (only the program is named: its arguments may be secret)."""
    c = _without_password(repo)
    p = c.proc("snapshots", env={"VAULT_PASSWORD": "", "VAULT_PASSWORD_COMMAND": "getpw-nowhere --secret s3cr3t",
                                 "PATH": "/usr/bin:/bin"},
               stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr == (b"vault: password command 'getpw-nowhere' could not run: No such file or "
                                              b"directory (not found in PATH=/usr/bin:/bin)\n"), p.stderr
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "getpw-noint").write_text("#!/nonexistent/sh\necho x\n")
    (bindir / "getpw-noint").chmod(0o755)
    p = c.proc("snapshots", env={"VAULT_PASSWORD": "", "VAULT_PASSWORD_COMMAND": "getpw-noint",
                                 "PATH": f"{bindir}:/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr == (b"vault: password command 'getpw-noint' could not run: No such file or "
                                              b"directory (is the interpreter on its '#!' line missing?)\n"), p.stderr
    script = tmp_path / "getpw"
    script.write_text("#!/bin/sh\necho x\n")
    script.chmod(0o644)
    p = c.proc("snapshots", env={"VAULT_PASSWORD": "", "VAULT_PASSWORD_COMMAND": str(script)}, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr.decode() == f"vault: password command '{script}' could not run: Permission denied\n"


def test_password_file_used_by_init(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("init via file\n")
    c = EnvCli(cli.capfd, cli.repo, cli.cache, {"VAULT_REPOSITORY": str(cli.repo), "VAULT_CACHE_DIR": str(cli.cache)})
    c("init", *FAST_INIT, "--password-file", pw)
    c("snapshots", "--password-file", pw)
    one_error_line(cli("snapshots", ok=False), 12)  # the fixture's password is not this one


# --- global options before and after the subcommand ---------------------------------------------------
def test_global_options_before_and_after(repo, src, tmp_path):
    repo("backup", src)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    c = EnvCli(repo.capfd, repo.repo, repo.cache, {})
    common = ["--repo", repo.repo, "--password-file", pw, "--cache-dir", repo.cache]
    a = c(*common, "--json", "snapshots").json
    b = c("snapshots", *common, "--json").json
    m = c("--repo", repo.repo, "snapshots", "--password-file", pw, "--cache-dir", repo.cache, "--json").json
    assert len(a) == 1 and a == b == m
    # key subgroup: options after the sub-subcommand too
    assert len(c("key", "list", *common, "--json").json) == 1
    assert len(c(*common, "--json", "key", "list").json) == 1


def test_global_options_end_to_end(repo, src, tmp_path):
    repo("backup", src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    for args in (["--repo", repo.repo, "--password-file", pw, "--cache-dir", repo.cache, "--json", "snapshots"],
                 ["snapshots", "--repo", repo.repo, "--password-file", pw, "--cache-dir", repo.cache, "--json"]):
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", *map(str, args)], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert len(json.loads(p.stdout)) == 1


# --- --json: exactly one JSON document on stdout ----------------------------------------------------------
def test_json_one_document_per_command(repo, src, tmp_path):
    def doc(*args):
        res = repo("--json", *args)
        return json.loads(res.out)  # json.loads rejects trailing text: exactly one document

    b1 = doc("backup", src)
    assert isinstance(b1["snapshot_id"], str)
    for k in ("files_new", "files_changed", "files_unmodified", "bytes_processed", "bytes_added"):
        assert isinstance(b1[k], int), k
    assert isinstance(b1["duration_s"], (int, float))
    (src / "a.txt").write_text("changed content\n")
    b2 = doc("backup", src)
    snaps = doc("snapshots")
    assert [s["id"] for s in snaps] == [b1["snapshot_id"], b2["snapshot_id"]]
    for s in snaps:
        assert s["id"].startswith(s["short_id"])
        assert set(s) >= {"id", "short_id", "time", "host", "paths", "tags"}
    r = doc("restore", "latest", "--target", tmp_path / "r")
    assert r["snapshot_id"] == b2["snapshot_id"]
    entries = doc("ls", "latest")["entries"]
    assert any(e["path"].endswith("/d/b.bin") for e in entries)
    hits = doc("find", "*.bin")
    assert len(hits) == 2 and all(h["path"].endswith("/d/b.bin") for h in hits)
    d = doc("diff", b1["snapshot_id"], b2["snapshot_id"])
    assert [p for p in d["modified"] if p.endswith("/a.txt")]
    st = doc("stats")
    assert st["snapshots"] == 2
    v = doc("verify", "--read-data")
    assert v["ok"] is True
    keys = doc("key", "list")
    assert len(keys) == 1 and keys[0]["current"] is True
    assert isinstance(doc("unlock")["removed"], list)
    dry = doc("backup", "--dry-run", src)
    assert dry["snapshot_id"] is None


def test_json_output_end_to_end_has_no_progress_on_stdout(repo, src):
    p = repo.proc("--json", "backup", src, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)
    p = repo.proc("--json", "-v", "verify", stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)


# --- -q: nothing on success -------------------------------------------------------------------------------
def test_quiet_backup_prints_nothing(repo, src):
    res = repo("-q", "backup", src)
    assert res.out == "" and res.err == ""
    res = repo("backup", src, "-q")
    assert res.out == "" and res.err == ""
    p = repo.proc("-q", "backup", src, stdin=subprocess.DEVNULL)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")


def test_quiet_still_reports_failure(repo, tmp_path):
    res = repo("-q", "backup", tmp_path / "nope", ok=False)
    one_error_line(res, 1)
    assert res.out == ""


# --- more bad input: each one line, a sensible code -------------------------------------------------------
def test_restore_target_is_a_file(repo, src, tmp_path):
    repo("backup", src)
    f = tmp_path / "afile"
    f.write_bytes(b"keep me")
    res = repo("restore", "latest", "--target", f, ok=False)
    assert res.code in (1, 2), res
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert f.read_bytes() == b"keep me"


def test_restore_target_is_a_dangling_symlink_or_empty(repo, src, tmp_path):
    repo("backup", src)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    res = repo("restore", "latest", "--target", link, ok=1)
    line = one_error_line(res, 1)
    assert "exists and is not a directory" in line and "internal error" not in line
    assert os.path.islink(link) and not (tmp_path / "nowhere").exists()
    res = repo("restore", "latest", "--target", "", ok=2)
    assert "--target" in res.err and "Traceback" not in res.err


def test_missing_exclude_file(repo, src, tmp_path):
    res = repo("backup", src, "--exclude-file", tmp_path / "missing", ok=False)
    assert res.code in (1, 2)
    line = one_error_line(res, res.code)
    assert "missing" in line
    assert repo("--json", "snapshots").json == []


@pytest.mark.parametrize("cmd", [["backup", "SRC", "--exclude", "[z-a]"], ["find", "[z-a]"],
                                 ["restore", "latest", "--target", "T", "--include", "[z-a]"],
                                 ["backup", "SRC", "--exclude", "trailing\\"]])
def test_malformed_glob(repo, src, tmp_path, cmd):
    repo("backup", src)
    cmd = [str(src) if c == "SRC" else str(tmp_path / "t") if c == "T" else c for c in cmd]
    res = repo(*cmd, ok=False)
    line = one_error_line(res, 2)
    assert "internal error" not in line
    assert len(repo("--json", "snapshots").json) == 1


@pytest.mark.parametrize("subset", ["200%", "abc", "0/3", "4/3", "-5%"])
def test_bad_read_data_subset(repo, src, subset):
    repo("backup", src)
    res = repo("verify", "--read-data-subset", subset, ok=False)
    assert res.code in (1, 2), res
    if res.err.startswith("vault:"):
        line = one_error_line(res, res.code)
        assert "internal error" not in line
    else:
        click_usage(res)


def test_init_bad_chunker_params(cli):
    res = cli("init", *FAST_INIT, "--chunk-min", "1048576", "--chunk-avg", "4096", ok=False)
    assert res.code == 2
    assert "Traceback" not in res.err
    assert not (cli.repo / "config").exists()


def test_restore_both_snapshot_and_at(repo, src, tmp_path):
    repo("backup", src)
    one_error_line(repo("restore", "latest", "--at", "now", "--target", tmp_path / "t", ok=False), 2)
    one_error_line(repo("restore", "--target", tmp_path / "t", ok=False), 2)


def test_at_before_first_snapshot(repo, src, tmp_path):
    repo("backup", src, "--time", "2024-06-01T00:00:00Z")
    line = one_error_line(repo("restore", "--at", "2024-05-01T00:00:00Z", "--target", tmp_path / "t", ok=False), 1)
    assert "2024-05-01" in line


def test_remove_unknown_key(repo):
    res = repo("key", "remove", "abcdef12", ok=False)
    line = one_error_line(res, 1)
    assert "abcdef12" in line


# --- more --json and -q -----------------------------------------------------------------------------------
def test_json_init_key_add_catalog_rebuild(cli, tmp_path):
    init = json.loads(cli("--json", "init", *FAST_INIT).out)
    assert len(init["repository_id"]) == 64
    pw = tmp_path / "pw2"
    pw.write_text("second")
    assert json.loads(cli("--json", "key", "add", "--new-password-file", pw).out)["id"]
    rb = json.loads(cli("--json", "catalog", "rebuild").out)
    assert rb["snapshots"] == 0


def test_quiet_other_commands_print_nothing(repo, src, tmp_path):
    repo("backup", src)
    for args in (["restore", "latest", "--target", tmp_path / "r"], ["verify", "--read-data"], ["unlock"],
                 ["catalog", "rebuild"]):
        res = repo("-q", *args)
        assert (res.out, res.err) == ("", ""), (args, res)
    res = EnvCli(repo.capfd, tmp_path / "r2", tmp_path / "c2", {**repo.env(), "VAULT_REPOSITORY": str(tmp_path / "r2")})(
        "-q", "init", *FAST_INIT)
    assert (res.out, res.err) == ("", "")


def test_empty_password_refused(cli, tmp_path):
    c = EnvCli(cli.capfd, cli.repo, cli.cache, {**cli.env(), "VAULT_PASSWORD": ""})
    line = one_error_line(c("init", *FAST_INIT, ok=False), 1)
    assert "empty" in line
    assert not (cli.repo / "config").exists()


def test_unknown_command_and_no_command(repo):
    click_usage(repo("no-such-command", ok=False))
    res = repo(ok=False)
    assert res.code in (0, 2) and "Usage" in (res.out + res.err) and "Traceback" not in res.err


# --- prompting on a terminal ------------------------------------------------------------------------------
def _run_on_tty(args: list[str], env: dict, answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run vault with a pseudo-terminal as its controlling terminal; answer each password prompt in turn."""
    import pty
    import select
    import time as _time

    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(sys.executable, [sys.executable, "-m", "vault.cli.main", *args], env)
        finally:
            os._exit(127)
    out = b""
    todo = list(answers)
    answered = 0
    deadline = _time.monotonic() + timeout
    try:
        while _time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if todo and out.lower().count(b"password: ") > answered:
                    os.write(fd, todo.pop(0).encode() + b"\n")
                    answered += 1
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                return os.waitstatus_to_exitcode(status), out.decode(errors="replace")
        else:
            os.kill(pid, 9)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_prompts_on_a_tty(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_REPOSITORY=str(tmp_path / "repo"), VAULT_CACHE_DIR=str(tmp_path / "cache"))
    # init asks twice; a mismatch is refused and creates nothing
    code, out = _run_on_tty(["init", *FAST_INIT], env, ["pw-one", "pw-two"])
    assert code == 1 and "match" in out, out
    assert not (tmp_path / "repo" / "config").exists()
    code, out = _run_on_tty(["init", *FAST_INIT], env, ["typed secret", "typed secret"])
    assert code == 0, out
    assert "typed secret" not in out, "the password must not be echoed"
    code, out = _run_on_tty(["snapshots"], env, ["typed secret"])
    assert code == 0, out
    code, out = _run_on_tty(["snapshots"], env, ["wrong"])
    assert code == 12, out


def test_repository_path_is_a_file(cli, tmp_path):
    f = tmp_path / "repo"
    f.write_bytes(b"not a directory")
    one_error_line(cli("snapshots", ok=False), 10)
    res = cli("init", *FAST_INIT, ok=False)
    assert res.code in (1, 2)
    one_error_line(res, res.code)
    assert f.read_bytes() == b"not a directory"


def test_init_refuses_a_non_empty_directory_that_is_not_a_repository(cli, tmp_path):
    cli.repo.mkdir()
    (cli.repo / "precious.txt").write_text("keep me")
    r = cli("init", "--kdf-memory", "1", ok=1)
    assert "not empty" in r.err and r.err.count("\n") == 1
    assert sorted(p.name for p in cli.repo.iterdir()) == ["precious.txt"]


def test_stats_of_an_empty_repository_reads_as_text(repo):
    out = repo("stats").out
    assert "None" not in out and "dedup+compression ratio: -" in out
    assert repo("--json", "stats").json["dedup_ratio"] is None


def test_verify_read_data_and_a_subset_together_is_a_usage_error(repo, src):
    repo("backup", src)
    line = one_error_line(repo("verify", "--read-data", "--read-data-subset", "1/3", ok=2), 2)
    assert "--read-data-subset" in line


def test_closed_or_full_stdout(repo, src):
    """Run from cron with stdout closed (`>&-`), a successful backup exits 0 without a traceback; an output
    that cannot take the text (/dev/full) is one line, exit 1."""
    env = {**os.environ, **repo.env()}
    cmd = [sys.executable, "-m", "vault.cli.main"]
    p = subprocess.run(cmd + ["-q", "backup", str(src)], env=env, capture_output=False, stderr=subprocess.PIPE,
                       preexec_fn=lambda: os.close(1))
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    p = subprocess.run(cmd + ["snapshots"], env=env, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    assert len(repo("--json", "snapshots").json) == 1
    with open("/dev/full", "wb") as full:
        p = subprocess.run(cmd + ["snapshots"], env=env, stdout=full, stderr=subprocess.PIPE)
    assert p.returncode == 1 and p.stderr.decode().strip() == "vault: cannot write the output: No space left on device"


def test_text_times_are_local_as_at_reads_them(repo, src, monkeypatch):
    """The time `snapshots` prints (local time, like --at without an offset) selects that snapshot when it
    is given to --at, under a time zone with a half-hour offset."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        repo("backup", src, "--time", "2025-06-01T04:30:00Z")
        line = repo("snapshots").out.splitlines()[0]
        assert "2025-06-01 10:00:00" in line, line
        out = repo("--json", "restore", "--at", "2025-06-01 10:00:00", "--target", src.parent / "r").json
        assert out["files"] > 0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    """The XDG spec: a relative XDG_CACHE_HOME is invalid; the cache goes to ~/.cache/vault, not to a
    directory below wherever the command happens to run."""
    from vault.config import default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "vault")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "vault")


@pytest.mark.parametrize("home", ["", "relhome"])
def test_an_empty_or_relative_home_takes_the_users_home_from_the_password_database(monkeypatch, home):
    """HOME= (or a relative HOME) with no XDG_CACHE_HOME put the cache in /.cache/vault, or below wherever the
    command ran."""
    import pwd

    from vault.config import default_cache_dir

    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".cache", "vault")


@pytest.mark.skipif(os.geteuid() != 0, reason="root only")
def test_root_never_takes_another_users_home_for_its_cache(monkeypatch, tmp_path):
    """`sudo` without -H keeps the user's HOME: a root vault made its cache (a root-owned ~/.cache) in a home the
    user can rename things in -- swapping directories there, the user read the catalog's file names (found by
    the cron helper round). Root's own home from the password database is taken instead; so for an
    XDG_CACHE_HOME in another user's directory. The user's own and root's own are kept."""
    import pwd

    from vault.config import default_cache_dir

    theirs, mine = tmp_path / "alice", tmp_path / "root"
    theirs.mkdir()
    mine.mkdir()
    os.chown(theirs, 12345, 12345)
    roots = os.path.join(pwd.getpwuid(0).pw_dir, ".cache", "vault")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(theirs))
    assert default_cache_dir() == roots
    monkeypatch.setenv("HOME", str(theirs / "not-made-yet"))  # (the nearest directory that exists counts)
    assert default_cache_dir() == roots
    monkeypatch.setenv("HOME", str(mine))
    assert default_cache_dir() == str(mine / ".cache" / "vault")
    monkeypatch.setenv("XDG_CACHE_HOME", str(theirs / "cache"))
    assert default_cache_dir() == str(mine / ".cache" / "vault")
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine / "xdg"))
    assert default_cache_dir() == str(mine / "xdg" / "vault")
    rootcache = theirs / "rootcache"  # (root's own, made by an earlier run -- but in alice's directory: she can
    rootcache.mkdir()                  # rename it and put hers in its place)
    monkeypatch.setenv("XDG_CACHE_HOME", str(rootcache / "sub"))
    assert default_cache_dir() == str(mine / ".cache" / "vault")
    monkeypatch.setenv("HOME", str(rootcache))
    assert default_cache_dir() == roots
    sticky = tmp_path / "sticky"  # (a symlink of alice's on the way -- in a sticky directory -- to a root-owned
    sticky.mkdir(mode=0o1777)      # directory: she can point it elsewhere)
    os.symlink(mine, sticky / "alicelink")
    os.chown(sticky / "alicelink", 12345, 12345, follow_symlinks=False)
    monkeypatch.setenv("HOME", str(sticky / "alicelink"))
    assert default_cache_dir() == roots
    os.symlink(rootcache, sticky / "rootlink")  # (root's symlink to a directory below alice's)
    monkeypatch.setenv("HOME", str(sticky / "rootlink"))
    assert default_cache_dir() == roots


def test_snapshots_text_output_shows_no_control_characters(repo, src):
    """A host or tag with a newline or a terminal escape sequence (OSC) is shown with '?' in the text
    listing (one line per snapshot, nothing sent to the terminal); JSON keeps it exactly."""
    host = "evil\n\x1b]0;owned\x07host"
    repo("backup", src, "--host", host, "--tag", "t\x1b[2J")
    lines = repo("snapshots").out.splitlines()
    assert len(lines) == 2 and "\x1b" not in lines[0] and "evil?" in lines[0]
    assert repo("--json", "snapshots").json[0]["host"] == host


def test_ls_of_a_path_not_in_the_snapshot_is_an_error_not_a_usage_error(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    r = repo("ls", "latest", "/nope", ok=1)
    assert r.err.strip().endswith("/nope is not in snapshot " + repo("--json", "snapshots").json[0]["short_id"])


@pytest.mark.parametrize("name,value", [("VAULT_JOBS", "abc"), ("VAULT_JOBS", "99999"), ("VAULT_CONNECTIONS", "0")])
def test_a_bad_number_in_the_environment_is_a_usage_error(repo, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    r = repo("snapshots", ok=2)
    assert name in r.err and "Traceback" not in r.err


def test_password_sources_that_never_end_fail_at_once(repo):
    import time as time_mod

    r = repo("--password-file", "/dev/zero", "snapshots", ok=1)
    assert "longer than" in r.err
    t0 = time_mod.monotonic()
    r = repo("--password-command", "cat /dev/zero", "snapshots", ok=1)
    assert "more than" in r.err and time_mod.monotonic() - t0 < 30


def test_a_password_command_leaving_a_background_process_is_not_waited_for(repo):
    import time as time_mod

    t0 = time_mod.monotonic()
    secret = "s3cr3t-in-the-command-line"
    repo("--password-command", f"sh -c 'echo {PASSWORD}; sleep 60 &'", "snapshots")
    assert time_mod.monotonic() - t0 < 30, "waited for the background process's end of output"
    r = repo("--password-command", f"sh -c 'exit 3; echo {secret}'", "snapshots", ok=1)
    assert secret not in r.err, "the command line (it may hold a secret) is not repeated"


def test_a_bad_s3_endpoint_is_a_usage_error(tmp_path, capfd):
    from conftest import Cli

    cli = Cli(capfd, "s3://bucket/prefix", tmp_path / "cache", {"VAULT_S3_ENDPOINT": "not-a-url",
                                                               "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
    r = cli("snapshots", ok=2)
    assert "endpoint" in r.err and "internal error" not in r.err


def test_catalog_rebuild_with_a_directory_in_the_catalogs_place_is_one_line(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    (db,) = list(repo.cache.glob("*/catalog.db"))
    db.unlink()
    db.mkdir()
    (db / "something").write_bytes(b"not vault's")
    for args in (["catalog", "rebuild"], ["snapshots"]):
        r = repo(*args, ok=1)
        assert "internal error" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert f"{db} is a directory" in r.err and "move it away" in r.err, r.err
    assert (db / "something").exists()
    (db / "something").unlink()  # an empty directory there is replaced by the catalog (a rebuild)
    assert len(repo("--json", "snapshots").json) == 1


def test_a_missing_repository_is_said_before_any_password_is_asked_for(tmp_path, capfd, monkeypatch):
    """No repository there: exit 10 at once, without running the password command (gpg, a vault client...)."""
    from conftest import Cli

    marker = tmp_path / "ran"
    cli = Cli(capfd, tmp_path / "nothing-here", tmp_path / "cache")
    monkeypatch.delenv("VAULT_PASSWORD", raising=False)
    r = cli("--password-command", f"sh -c 'touch {marker}; echo pw'", "snapshots", ok=10)
    assert not marker.exists() and "no repository" in r.err


def test_init_over_an_existing_repository_refuses_before_asking_for_a_password(repo, tmp_path):
    marker = tmp_path / "ran"
    r = repo("--password-command", f"sh -c 'touch {marker}; echo pw'", "init", ok=1)
    assert not marker.exists() and "already exists" in r.err


@pytest.mark.parametrize("buffered", [False, True])
def test_output_cut_short_by_head_is_silent_exit_141(repo, tmp_path, buffered):
    """`vault ls latest | head -1` (the disaster-recovery page's own example) ended with exit 1 and not a word
    on stderr: a failure with no message. A closed stdout is now exit 141, as for any Unix tool killed by
    SIGPIPE, and silent -- also with Python's usual buffered stdout (no PYTHONUNBUFFERED: a login shell, cron),
    where the interpreter's own flush at exit failed again ("Exception ignored ...", exit 120)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3000):
        (src / f"file-with-a-longish-name-{i:05d}").touch()
    repo("backup", src)
    env = {**os.environ, **repo.env()}
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    cmd = f"{sys.executable} -m vault.cli.main ls latest 2>{tmp_path / 'err'} | head -1; echo ${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True).stdout.splitlines()
    assert out[-1] == "141" and (tmp_path / "err").read_text() == ""


@pytest.mark.parametrize("args", [["--json", "snapshots"], ["--json", "diff", "FIRST", "latest"]])
def test_a_json_document_cut_short_by_its_reader_is_exit_141(repo, tmp_path, args):
    """`vault snapshots --json | head -c 10` exited 0: the document went out in one write, the kernel took what
    the pipe held when the reader went away, and Python's stdout dropped the rest without a word. 141, as for
    the listings."""
    src = tmp_path / "src"
    src.mkdir()
    first = repo("--json", "backup", src).json["snapshot_id"]
    for i in range(1500):
        (src / f"file-with-a-longish-name-{i:05d}").touch()
    for i in range(60):
        repo("backup", src, "--tag", "t" * 3000 + str(i))
    args = [first if a == "FIRST" else a for a in args]
    env = {**os.environ, **repo.env()}
    cmd = f"{sys.executable} -m vault.cli.main {' '.join(args)} 2>{tmp_path / 'err'} | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True).stdout.splitlines()
    assert out[-1] == "141" and (tmp_path / "err").read_text() == "", out


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_a_backup_with_stderr_closed_runs(repo, tmp_path, extra):
    """`vault backup SRC 2>&-` (a supervisor that closes fd 2) exited 1 with no word and wrote no snapshot: the
    progress display asked a closed stderr (None in Python) whether it is a terminal."""
    src = make_tree(tmp_path / "src", {"a": b"x"})
    p = repo.proc("backup", *extra, src, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    assert p.returncode == 0, p.stdout
    assert len(repo("--json", "snapshots").json) == (0 if extra else 1)


def test_names_that_are_not_utf8_are_listed_under_a_utf8_locale(repo, tmp_path):
    """Under a UTF-8 locale Python's stdout is strict: `ls` and `find` of a name that is not UTF-8 ended in
    'internal error: UnicodeEncodeError' (and a listing long enough stopped half way). A name is written as its
    own bytes, as under C.UTF-8; an output of 4,096 characters or more no longer takes another path (ASCII stdout:
    internal error). A tag that is not text is refused, as a host is."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-\u00fc.txt").touch()
    open(os.fsencode(src) + b"/bad\xff", "wb").close()
    for i in range(300):
        (src / f"file_{i}").touch()
    repo("backup", src)
    for env in ({"PYTHONIOENCODING": "utf-8:strict"}, {"PYTHONIOENCODING": "ascii"}):
        for args in (["ls", "latest"], ["find", "*bad*"], ["ls", "latest", str(src / "a-\u00fc.txt")]):
            p = repo.proc(*args, env=env, stdin=subprocess.DEVNULL)
            assert p.returncode == 0 and b"internal error" not in p.stderr, (env, args, p.stderr)
            assert b"bad\xff" in p.stdout or args[-1].endswith("txt"), (env, args)
    res = repo("backup", src, "--tag", "t\udcff", ok=2)
    assert "--tag must be text" in res.err


def test_output_to_odd_streams_is_whole_or_one_line(repo, tmp_path):
    """A UTF-16 stdout got a BOM per write (invalid JSON from `--json ls`); `--help` into /dev/full was an internal
    error; `-v` lines into a non-blocking `2>&1` were dropped without a word. (A closed stdout, `>&-`, stays
    no error: test_closed_or_full_stdout.)"""
    import fcntl
    import json as json_mod

    src = make_tree(tmp_path / "src", {f"f{i}": b"x" for i in range(50)})
    repo("backup", src)
    p = repo.proc("--json", "ls", "latest", env={"PYTHONIOENCODING": "utf-16"}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and len(json_mod.loads(p.stdout.decode("utf-16"))["entries"]) > 50
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "--help"], stdout=full, stderr=subprocess.PIPE)
    assert p.returncode == 1 and p.stderr.decode().strip() == "vault: cannot write the output: No space left on device"
    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):
        (many / f"f{i}").touch()
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    e = {**os.environ, **repo.env()}
    proc = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "-v", "backup", str(many)], stdout=w, stderr=w,
                            env=e, stdin=subprocess.DEVNULL)
    os.close(w)
    time.sleep(3)  # (the pipe fills while nobody reads)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    assert proc.wait() == 0
    assert out.count(b"new      ") == 3000 and b"snapshot " in out


def test_ls_of_a_file_with_a_trailing_slash_is_not_a_directory(repo, tmp_path):
    """`ls SNAP FILE/` listed the file (exit 0); a trailing slash means a directory, as in a shell and in
    vault's own GLOBs."""
    src = make_tree(tmp_path / "src", {"d": {"f": b"x"}})
    os.symlink("d", src / "link")
    repo("backup", src)
    for p in (src / "d" / "f", src / "link"):
        assert "not a directory" in repo("ls", "latest", f"{p}/", ok=1).err
    assert repo("ls", "latest", f"{src}/d/").out.count("\n") == 2


def test_init_kdf_options_out_of_the_format_are_usage_errors(cli):
    """--kdf-memory above the format's 1 GiB was exit 20 ("damage") with an empty directory left; the
    argon2id options given with --kdf scrypt were ignored silently."""
    r = cli("init", "--kdf-memory", "1025", ok=2)
    assert "--kdf-memory" in r.err and not cli.repo.exists()
    r = cli("init", "--kdf", "scrypt", "--kdf-iterations", "50", ok=2)
    assert "--kdf-iterations applies to --kdf argon2id only" in r.err and not cli.repo.exists()


def test_a_stopped_vault_does_not_leave_its_password_command_running(repo, tmp_path):
    """SIGTERM (or Ctrl-C) while vault waited for --password-command: vault exited 143 and the command ran on
    by itself."""
    import signal

    marker = tmp_path / "started"
    script = tmp_path / "slowpw.py"
    script.write_text(f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "snapshots", "--password-command",
                          f"{sys.executable} {script}"], env={**os.environ, **repo.env()},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(marker.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
        alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the password command was left running"


def test_final_error_line_survives_a_full_non_blocking_stderr(tmp_path):
    """The one-line error of a failed command went through Python's stderr, which drops (or fails on) a write
    to a non-blocking descriptor whose pipe is full: the reader of `2>&1` behind a busy logger got no reason."""
    import fcntl

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    filled = 0
    try:
        while True:
            filled += os.write(w, b"." * 4096)
    except BlockingIOError:
        pass
    e = {**os.environ, "VAULT_PASSWORD": "pw", "VAULT_CACHE_DIR": str(tmp_path / "cache")}
    e.pop("VAULT_REPOSITORY", None)
    proc = subprocess.Popen([sys.executable, "-m", "vault.cli.main", "--repo", str(tmp_path / "nothing"), "snapshots"],
                            stdout=subprocess.DEVNULL, stderr=w, env=e, stdin=subprocess.DEVNULL)
    os.close(w)
    time.sleep(3)  # (vault has failed by now, against the full pipe)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    assert proc.wait() == 10
    assert out[filled:].decode().startswith("vault: ") and out.endswith(b"\n") and out.count(b"\n") == 1


def test_a_utf16_output_with_names_that_are_not_utf8_and_utf8_tags_in_the_c_locale(repo, tmp_path):
    """Under PYTHONIOENCODING=utf-16 a name that is not UTF-8 made `ls` an internal error and a message naming
    one a bare traceback (a lone byte is no UTF-16 code unit); with Python's UTF-8 mode off in the C locale
    (argv read as ASCII), a UTF-8 tag or host was refused as "not UTF-8", and a filter on it matched nothing."""
    src = make_tree(tmp_path / "src", {"ok": b"1"})
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"2")
    repo("backup", src)
    utf16 = {"PYTHONIOENCODING": "utf-16"}
    p = repo.proc("ls", "latest", env=utf16, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "caf?" in p.stdout.decode("utf-16"), p.stderr
    p = repo.proc("dump", "latest", os.fsdecode(bytes(src) + b"/x\xff"), env=utf16, stdin=subprocess.DEVNULL)
    err = p.stderr.decode("utf-16")
    assert p.returncode == 1 and "is not in snapshot" in err and "Traceback" not in err, err
    c_locale = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    p = repo.proc("--json", "backup", src, "--tag", "ünï", "--host", "hôst", env=c_locale, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    snaps = json.loads(repo.proc("--json", "snapshots", "--tag", "ünï", env=c_locale).stdout)
    assert [(s["host"], s["tags"]) for s in snaps] == [("hôst", ["ünï"])]
    assert [s["host"] for s in repo("--json", "snapshots", "--host", "hôst").json] == ["hôst"]


def test_ctrl_c_while_the_cli_loads_its_first_modules_is_one_line(tmp_path):
    """The loading handler was installed after the config import: a Ctrl-C there (about 0.1 s in; a storm of
    concurrent hosts hit it 4 times) printed a traceback from the middle of an import."""
    code = ("import os, signal, sys\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'vault.config':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Hook())\n"
            "import vault.cli.main\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path)
    assert (p.returncode, p.stderr) == (130, b"vault: interrupted\n"), p.stderr[-600:]


def test_lists_without_end_and_blank_commands_and_odd_zones_are_one_line(repo, tmp_path):
    """Found by a fuzzer: `--exclude-file /dev/zero` (and the --files-from lists, and `yes | ... --files-from -`)
    read until the kernel killed vault; a blank --password-command was "internal error: IndexError"; TZ=UTC+24
    (glibc takes it, Python cannot) made `snapshots` an internal error; click's usage errors took four lines,
    echoing a value's escape sequences raw; into 2>/dev/full one exited 120."""
    src = make_tree(tmp_path / "src", {"f": b"x"})
    repo("backup", src)
    import resource

    def capped() -> None:  # (a vault that reads without end fails here, not the machine)
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    for opt in ("--exclude-file", "--files-from", "--files-from-verbatim", "--files-from-raw"):
        p = repo.proc("backup", "-n", *([src] if opt == "--exclude-file" else []), opt, "/dev/zero",
                      stdin=subprocess.DEVNULL, preexec_fn=capped)
        assert p.returncode == 2 and p.stderr.count(b"\n") == 1 and b"is longer than" in p.stderr, p.stderr
    p = repo.proc("snapshots", env={"VAULT_PASSWORD": "", "VAULT_PASSWORD_COMMAND": " "}, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr == b"vault: password command could not run: it is empty\n", p.stderr
    p = repo.proc("snapshots", env={"TZ": "UTC+24"}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and b"internal error" not in p.stderr and b"times are shown and read in UTC" in p.stderr
    # with -q, nothing on success (cron mailed the warning every night)
    p = repo.proc("-q", "snapshots", env={"TZ": "UTC+24"}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    p = repo.proc("-q", "ls", "no-such-snapshot", env={"TZ": "UTC+24"}, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and p.stderr.count(b"\n") == 2 and b"times are shown and read in UTC" in p.stderr, \
        p.stderr  # (a failure: the warning may explain it -- a local time read as UTC)
    p = repo.proc("ls", "latest", "\x1b]0;pwned\x07", "extra", stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and p.stderr.count(b"\n") == 1 and b"\x1b" not in p.stderr, p.stderr
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "bogus"], stderr=full, stdout=subprocess.PIPE)
        assert p.returncode == 2
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", "--help"], stdout=full, stderr=subprocess.PIPE)
        assert (p.returncode, p.stderr) == (1, b"vault: cannot write the output: No space left on device\n")


def test_a_group_alone_still_shows_its_help(tmp_path):
    """With usage errors made one line, `vault` and `vault key` alone (click raises the help as a usage error)
    printed the whole help flattened into one line of '?'."""
    for args in ([], ["key"], ["catalog"]):
        p = subprocess.run([sys.executable, "-m", "vault.cli.main", *args], capture_output=True, cwd=tmp_path)
        assert p.returncode == 2 and p.stderr.startswith(b"Usage: vault") and p.stderr.count(b"\n") > 5, p.stderr


def test_an_error_after_the_retries_ran_out_says_so(repo, monkeypatch):
    """The backends note 'gave up after 6 attempts on ...' on the error they give up with; the CLI printed only
    the last attempt's botocore text, which reads as one dropped connection."""
    from vault import api
    from vault.errors import VaultError

    def flaky(*a, **k):
        err = VaultError("S3 GET s3://b/p/config: Connection was closed before we received a valid response")
        err.add_note("gave up after 6 attempts on s3://b/p")
        raise err

    monkeypatch.setattr(api, "list_snapshots", flaky)
    r = repo("snapshots", ok=1)
    assert r.err.strip().endswith("(gave up after 6 attempts on s3://b/p)") and len(r.err.splitlines()) == 1, r.err


def test_an_s3_repository_without_boto3_is_one_line(tmp_path):
    """A missing boto3 escaped as ModuleNotFoundError: "internal error", where the code meant to say what is
    missing (and an unreachable branch said "S3 repositories are not supported yet")."""
    code = ("import sys; sys.modules['boto3'] = None\n"
            "from vault.cli.main import main\n"
            "sys.exit(main(['--repo', 's3://bucket/p', '--cache-dir', sys.argv[1], 'snapshots']))")
    env = {**os.environ, "VAULT_PASSWORD": "pw", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "boto3" in res.stderr and "internal error" not in res.stderr, res.stderr
