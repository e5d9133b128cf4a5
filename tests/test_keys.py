"""Key slots: add a password, list, remove another slot, refuse to remove the one in use, change a password."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import PASSWORD, make_tree, tree_listing

NEW = "a second, different password"


@pytest.fixture
def pwfiles(tmp_path):
    new = tmp_path / "new-pw"
    new.write_text(NEW + "\n")
    old = tmp_path / "old-pw"
    old.write_text(PASSWORD + "\n")
    return old, new


def objects(repo) -> dict:
    """The repository's objects (regular files) with sizes and mtimes; an empty locks/ dir left by a
    released lock is not an object."""
    return {k: v for k, v in tree_listing(repo.repo).items() if v[0] == stat.S_IFREG}


def with_pw(repo, pwfile, *args, ok=True):
    """Run with --password-file (it takes precedence over the fixture's VAULT_PASSWORD)."""
    return repo(*args, "--password-file", pwfile, ok=ok)


def keys(repo, pwfile=None):
    return (with_pw(repo, pwfile, "--json", "key", "list") if pwfile else repo("--json", "key", "list")).json


def test_key_add_then_new_password_opens(repo, pwfiles, tmp_path):
    old, new = pwfiles
    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    one = keys(repo)
    assert len(one) == 1 and one[0]["current"] is True and one[0]["damaged"] is False
    out = repo("--json", "key", "add", "--new-password-file", new).json
    assert out["id"]
    # the new password opens the repository and sees the same snapshots
    snaps_new = with_pw(repo, new, "--json", "snapshots").json
    assert [s["id"] for s in snaps_new] == [s["id"] for s in repo("--json", "snapshots").json]
    with_pw(repo, new, "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "f").read_bytes() == b"data"
    with_pw(repo, new, "backup", src)
    # the old one still does too
    with_pw(repo, old, "snapshots")

    listed = keys(repo, new)
    assert len(listed) == 2
    assert sum(k["current"] for k in listed) == 1
    cur = next(k for k in listed if k["current"])
    assert cur["id"] == out["id"] or out["id"].startswith(cur["id"]) or cur["id"].startswith(out["id"])
    listed_old = keys(repo, old)
    assert {k["id"] for k in listed_old} == {k["id"] for k in listed}
    assert next(k for k in listed_old if k["current"])["id"] != cur["id"]


def test_key_add_from_env(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("VAULT_NEW_PASSWORD", NEW)
    repo("key", "add")
    pw = tmp_path / "p"
    pw.write_text(NEW)
    with_pw(repo, pw, "snapshots")


def test_key_remove_other_and_refuse_current(repo, pwfiles):
    old, new = pwfiles
    kid = repo("--json", "key", "add", "--new-password-file", new).json["id"]
    listed = keys(repo)
    current = next(k for k in listed if k["current"])
    other = next(k for k in listed if not k["current"])
    assert kid.startswith(other["id"]) or other["id"].startswith(kid)

    # refusing to remove the slot in use (full id, and a prefix) changes nothing
    before = objects(repo)
    for spec in (current["id"], current["id"][:8]):
        res = repo("key", "remove", spec, ok=1)
        lines = res.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vault:"), res.err
    assert objects(repo) == before

    # removing the other slot (by a prefix) works, and its password no longer opens the repository
    out = repo("--json", "key", "remove", other["id"][:8]).json
    assert out["removed"].startswith(other["id"]) or other["id"].startswith(out["removed"])
    assert len(keys(repo)) == 1
    with_pw(repo, new, "snapshots", ok=12)
    repo("snapshots")


def test_key_remove_from_the_other_side(repo, pwfiles):
    """Open with the new password and remove the original slot: then only the new password works."""
    old, new = pwfiles
    repo("key", "add", "--new-password-file", new)
    original = next(k for k in keys(repo) if k["current"])
    with_pw(repo, new, "key", "remove", original["id"])
    with_pw(repo, old, "snapshots", ok=12)
    repo("snapshots", ok=12)
    with_pw(repo, new, "snapshots")


def test_key_passwd(repo, pwfiles, tmp_path):
    old, new = pwfiles
    src = make_tree(tmp_path / "src", {"f": b"data", "g": os.urandom(9000)})
    repo("backup", src)
    out = repo("--json", "key", "passwd", "--new-password-file", new).json
    assert out["id"]
    res = repo("snapshots", ok=12)
    assert res.err.startswith("vault:") and "Traceback" not in res.err
    with_pw(repo, old, "snapshots", ok=12)
    assert len(with_pw(repo, new, "--json", "snapshots").json) == 1
    listed = keys(repo, new)
    assert len(listed) == 1 and listed[0]["current"]
    with_pw(repo, new, "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "g").read_bytes() == (src / "g").read_bytes()
    with_pw(repo, new, "verify", "--read-data")


def test_key_passwd_keeps_other_slots(repo, pwfiles, tmp_path):
    old, new = pwfiles
    third = tmp_path / "third"
    third.write_text("third password")
    repo("key", "add", "--new-password-file", third)
    repo("key", "passwd", "--new-password-file", new)
    assert len(keys(repo, new)) == 2
    with_pw(repo, third, "snapshots")
    with_pw(repo, new, "snapshots")
    repo("snapshots", ok=12)


def test_key_passwd_retires_every_slot_of_the_old_password(repo, pwfiles, tmp_path):
    """A second slot with the same password (a `key add` of it) would keep the old password working after a
    password change: key passwd removes every slot the old password opens, and only those."""
    old, new = pwfiles
    third = tmp_path / "third"
    third.write_text("third password")
    repo("key", "add", "--new-password-file", old)  # the same password again, in its own slot
    repo("key", "add", "--new-password-file", third)
    assert len(keys(repo)) == 3
    out = repo("key", "passwd", "--new-password-file", new)
    assert "password changed" in out.out
    with_pw(repo, old, "snapshots", ok=12)
    with_pw(repo, new, "snapshots")
    with_pw(repo, third, "snapshots")
    assert len(keys(repo, new)) == 2


def test_key_commands_wrong_password_change_nothing(repo, pwfiles, tmp_path):
    old, new = pwfiles
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong")
    before = tree_listing(repo.repo)
    with_pw(repo, wrong, "key", "add", "--new-password-file", new, ok=12)
    with_pw(repo, wrong, "key", "passwd", "--new-password-file", new, ok=12)
    with_pw(repo, wrong, "key", "list", ok=12)
    with_pw(repo, wrong, "key", "remove", "00", ok=12)
    assert tree_listing(repo.repo) == before


def test_key_add_empty_or_missing_new_password(repo, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    before = tree_listing(repo.repo)
    for args in (["--new-password-file", empty], ["--new-password-file", tmp_path / "missing"], []):
        res = repo("key", "add", *args, ok=1)
        lines = res.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vault:"), res.err
    assert tree_listing(repo.repo) == before
    assert len(keys(repo)) == 1


def test_the_slot_that_opened_the_repository_is_tried_first_next_time(repo, tmp_path, monkeypatch):
    """Key slots are tried in name order, each costing a key derivation: slots with costly parameters named
    before the real one (anyone who can write to the repository can add them) delayed every command. The slot
    that opened it is remembered in the cache and tried first."""
    import base64
    import json as json_mod

    from vault import repository as repository_mod

    junk = {"v": 1, "kdf": {"name": "argon2id", "iterations": 1, "memory_kib": 1024, "lanes": 1},
            "salt": base64.b64encode(b"s" * 32).decode(), "wrapped": base64.b64encode(b"w" * 80).decode()}
    (repo.repo / "keys" / ("0" * 64)).write_text(json_mod.dumps(junk))
    tried = []
    real = repository_mod.open_slot
    monkeypatch.setattr(repository_mod, "open_slot", lambda data, *a: (tried.append(data), real(data, *a))[1])
    repo("snapshots")
    first_run = len(tried)
    tried.clear()
    repo("snapshots")
    assert first_run == 2 and len(tried) == 1
