"""Paths that are not UTF-8 in --json output: next to the \\udcXX escapes (Python's surrogateescape, which jq,
Go and JavaScript turn into U+FFFD), their exact bytes in base64, in every document that names files -- as
ls --json gives path_b64."""
import base64
import json
import os
import subprocess
import sys

import pytest

from conftest import make_tree

BAD = b"bad\xff\xfe"


def _b64(p: bytes) -> str:
    return base64.b64encode(p).decode()


def test_non_utf8_paths_come_with_their_bytes_in_every_json_document(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"ok.txt": b"fine"})
    with open(os.path.join(os.fsencode(src), BAD), "wb") as f:
        f.write(b"x" * 5000)
    bad = os.fsencode(src) + b"/" + BAD
    first = repo("--json", "backup", src, "--time", "2026-01-01T00:00:00Z").json
    odd = os.fsencode(tmp_path) + b"/odd\xff"  # (a backed-up path that is not UTF-8: snapshots' "paths")
    os.mkdir(odd)
    second = repo("--json", "backup", os.fsdecode(odd), "--time", "2026-01-02T00:00:00Z").json
    snaps = repo("--json", "snapshots").json
    assert snaps[1]["paths_b64"] == [_b64(odd)] and "paths_b64" not in snaps[0]
    diff = repo("--json", "diff", first["snapshot_id"], second["snapshot_id"]).json
    assert _b64(bad) in diff["removed_b64"] and len(diff["removed_b64"]) == len(diff["removed"])
    assert _b64(odd) in diff["added_b64"]
    for pack in (repo.repo / "data").rglob("*"):
        if pack.is_file():
            pack.unlink()
    damage = repo("--json", "verify", ok=20).json["damage"]
    assert any(_b64(bad) in d.get("files_b64", []) for d in damage), damage
    for d in damage:
        if "files_b64" in d:
            assert [base64.b64decode(b) for b in d["files_b64"]] == [os.fsencode(f) for f in d["files"]]
    res = repo("--json", "restore", first["snapshot_id"], "--target", tmp_path / "r", ok=20).json
    named = {base64.b64decode(d["path_b64"]) for d in res["damaged"] if "path_b64" in d}
    assert bad in named, res["damaged"]
    assert all("path_b64" not in d for d in res["damaged"] if d["path"].isascii())


def test_names_are_utf8_whatever_the_locale(repo, tmp_path):
    """Under a locale whose charset is not UTF-8 (here ASCII: LC_ALL=C with PYTHONUTF8=0; ISO-8859-1 alike),
    Python decoded names with that charset: `ls --json` gave a valid UTF-8 name as "caf\\udcc3\\udca9.txt" with
    no path_b64 (a name that does not exist), and the snapshot's paths were stored in the manifest so (found by
    the cron helper round). Names are UTF-8 in JSON and manifests, whatever the locale."""
    src = tmp_path / "dé"
    src.mkdir()
    (src / "café.txt").write_bytes(b"x")
    latin1 = os.fsencode(src) + b"/caf\xe9.txt"
    with open(latin1, "wb") as f:
        f.write(b"y")
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}

    def run(*args):
        p = repo.proc("--json", *args, env=env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    run("backup", src)  # (the arguments go out as UTF-8 bytes: this process's encoding)
    assert run("snapshots")[0]["paths"] == [str(src)]
    entries = {e["path"]: e for e in run("ls", "latest")["entries"]}
    assert "path_b64" not in entries[str(src / "café.txt")]
    assert base64.b64decode(entries[os.fsdecode(latin1)]["path_b64"]) == latin1
    assert [e["path"] for e in run("ls", "latest", src / "café.txt")["entries"]] == [str(src / "café.txt")]
    assert repo("--json", "snapshots").json[0]["paths"] == [str(src)]  # (and the same in a UTF-8 locale)


def test_the_utf8_restart_imports_nothing_from_the_working_directory(repo, tmp_path):
    """The restart under a non-UTF-8 locale ran `python -m vault`, which puts the working directory first on
    sys.path: a click.py there was imported (the review's finding) -- code run as whoever runs vault, root's cron
    in /tmp included. The console script's own way of starting is kept."""
    launcher = tmp_path / "bin" / "vault"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom vault.cli.main import entry\nsys.exit(entry())\n")  # (as pip writes it)
    evil = tmp_path / "cwd"
    evil.mkdir()
    (evil / "click.py").write_text("import sys\nsys.exit(99)\n")
    (evil / "vault").mkdir()
    (evil / "vault" / "__init__.py").write_text("import sys\nsys.exit(98)\n")
    env = {**os.environ, **repo.env(), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    p = subprocess.run([sys.executable, launcher, "--json", "snapshots"], cwd=evil, env=env, capture_output=True)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p


def test_the_utf8_restart_keeps_the_standard_library_first(repo, tmp_path):
    """The restart put the package's directory (site-packages, a checkout) first on sys.path: a module there
    named as one of the standard library's (shlex.py here) was imported in its place, under a non-UTF-8 locale
    only (the second review's finding)."""
    sp = tmp_path / "site"
    sp.mkdir()
    import vault

    os.symlink(os.path.dirname(vault.__file__), sp / "vault")
    (sp / "shlex.py").write_text("import sys\nsys.exit(98)\n")
    launcher = tmp_path / "launch.py"
    launcher.write_text(  # (SP where site-packages goes: after the standard library, vault imported from it)
        "import site, sys\nsite.main()\n"
        "i = next(i for i, p in enumerate(sys.path) if 'site-packages' in p)\n"
        f"sys.path.insert(i, {str(sp)!r})\nfrom vault.cli.main import entry\nentry()\n")
    env = {**os.environ, **repo.env(), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "-S", launcher, "--json", "snapshots"], cwd=tmp_path, env=env,
                       capture_output=True)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p


def test_the_utf8_restart_works_from_a_directory_named_in_latin1(repo, tmp_path):
    """Under an ISO-8859-1 locale, with vault installed below a directory whose name is Latin-1 (a user's
    home, `pip install --user`), the restart's program text held that name and the new interpreter refused it:
    every command failed (the second review's finding)."""
    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")],
                          capture_output=True)
    if made.returncode not in (0, 1) or not (locales / "en_US.ISO-8859-1").exists():
        pytest.skip("no localedef to build an ISO-8859-1 locale")
    import vault

    home = os.fsencode(tmp_path) + b"/jos\xe9"
    os.mkdir(home)
    os.symlink(os.path.dirname(vault.__file__), home + b"/vault")
    launcher = tmp_path / "launch.py"
    launcher.write_text("import os, sys\nsys.path.insert(0, os.fsdecode(%r))\nfrom vault.cli.main import entry\n"
                        "entry()\n" % home)
    env = {**os.environ, **repo.env(), "LC_ALL": "en_US.ISO-8859-1", "LOCPATH": str(locales)}
    p = subprocess.run([sys.executable, launcher, "--json", "snapshots"], cwd=tmp_path, env=env, capture_output=True)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p
