"""Path arguments in the forms a shell script produces: an empty one (a variable unset), '//x', './x'."""
from conftest import make_tree


def test_an_empty_backup_path_is_a_usage_error_not_the_working_directory(repo, tmp_path, monkeypatch):
    """`vault backup "$SRC"` with SRC unset backed up the working directory (from cron: $HOME), exit 0."""
    cwd = make_tree(tmp_path / "cwd", {"secret": b"not meant to be backed up"})
    monkeypatch.chdir(cwd)
    res = repo("backup", "", ok=2)
    assert "empty" in res.err and "Traceback" not in res.err
    res = repo("backup", make_tree(tmp_path / "src", {"a": b"1"}), "", ok=2)
    assert not (repo.repo / "snapshots").exists() or not any((repo.repo / "snapshots").iterdir())
    repo("backup", tmp_path / "src")
    res = repo("ls", "latest", "", ok=2)  # (the same for a PATH in a snapshot)
    assert "empty" in res.err


def test_path_filters_take_paths_as_backup_stored_them(repo, tmp_path):
    """`--path //x` (two leading slashes: POSIX keeps them in abspath) matched no snapshot, though backup
    stored '//x' as '/x'."""
    src = make_tree(tmp_path / "src", {"a": b"1"})
    repo("backup", "/" + str(src))
    (snap,) = repo("--json", "snapshots").json
    assert snap["paths"] == [str(src)]
    for form in ("/" + str(src), str(src) + "/", str(src) + "/.", str(tmp_path) + "//src"):
        assert len(repo("--json", "snapshots", "--path", form).json) == 1, form
        assert repo("find", "a", "--path", form).out.strip(), form


def test_quiet_and_verbose_together_are_a_usage_error(repo, tmp_path):
    """`backup -q -v` printed every file with exit 0 (cron mails on any output); restic refuses the pair."""
    src = make_tree(tmp_path / "src", {"a": b"1"})
    for args in (["-q", "-v", "backup", src], ["-qv", "snapshots"], ["backup", src, "-q", "--verbose"]):
        res = repo(*args, ok=2)
        assert "contradict" in res.err and not res.out, res
    assert not (repo.repo / "snapshots").exists() or not any((repo.repo / "snapshots").iterdir())


def test_verbose_in_a_cluster_is_seen_before_parsing():
    from vault.cli.main import _asks_verbose

    assert _asks_verbose(["-vv", "snapshots"]) and _asks_verbose(["snapshots", "--verbose"])
    assert _asks_verbose(["-qv"]) and not _asks_verbose(["--", "-v"]) and not _asks_verbose(["-j4"])
    assert _asks_verbose(["backup", "-xv", "/x"]) and _asks_verbose(["ls", "-lv", "latest"])
    assert not _asks_verbose(["restore", "-ev"])  # (-e takes a value: the GLOB "v")


def test_an_empty_second_repository_is_a_usage_error(repo, tmp_path):
    """`copy --to "$MIRROR"` with MIRROR unset said the source and destination were the same repository, and
    `repair --from-repo ""` ran a plain repair, healing nothing, exit 0."""
    for args in (["copy", "--to", ""], ["repair", "--from-repo", "", "--dry-run"]):
        res = repo(*args, ok=2)
        assert "is empty" in res.err, res.err
