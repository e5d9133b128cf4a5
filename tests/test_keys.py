"""Key slots: add a password, list, remove another slot, refuse to remove the one in use, change a password."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import FAST_INIT, PASSWORD, make_tree, tree_listing

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


def test_key_passwd_stopped_says_what_it_did(repo, pwfiles, monkeypatch):
    """Ctrl-C while key passwd removed the old slot (or looked for the old password's other slots, after the
    removal) said "aborted", exit 130, of a password change that was made: the old password no longer opened
    the repository. Stopped before the point of no return it now changes nothing; after it, it finishes."""
    import signal

    from vault.backend.local import LocalBackend
    from vault.repository import Repository

    old, new = pwfiles

    def stopped(self, password):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Repository, "slots_opened_by", stopped)
        repo("key", "passwd", "--new-password-file", new, ok=130)
    assert len(keys(repo)) == 1  # (the new slot taken back)
    with_pw(repo, old, "snapshots")
    with_pw(repo, new, "snapshots", ok=12)

    put = LocalBackend.put

    def stored_then_stopped(self, name, *a, **kw):  # (the answer lost, the retry stopped: stored all the same)
        put(self, name, *a, **kw)
        if name.startswith("keys/"):
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(LocalBackend, "put", stored_then_stopped)
        repo("key", "passwd", "--new-password-file", new, ok=130)
    assert len(keys(repo)) == 1  # (taken back: both passwords opened the repository)
    with_pw(repo, new, "snapshots", ok=12)

    real = LocalBackend.delete

    def ctrl_c_at_the_removal(self, name, *a, **kw):
        if name.startswith("keys/"):
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, name, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(LocalBackend, "delete", ctrl_c_at_the_removal)
        assert repo("--json", "key", "passwd", "--new-password-file", new).json["id"]
    with_pw(repo, old, "snapshots", ok=12)
    assert len(keys(repo, new)) == 1


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


def _edit_config(repo, **changes):
    import json as json_mod

    path = repo.repo / "config"
    doc = json_mod.loads(path.read_text())
    for k, v in changes.items():
        if "." in k:
            outer, inner = k.split(".")
            doc[outer][inner] = v
        else:
            doc[k] = v
    path.write_text(json_mod.dumps(doc))
    return path


def test_a_changed_config_is_noticed_used_from_the_key_slot_and_repaired(repo, tmp_path):
    """``config`` is in clear and writable by anyone who can write to the store: changed chunker parameters or
    pack size used to be taken silently (the next backups deduplicated against nothing). The key slot seals a
    copy: every command warns and uses the sealed one, verify reports it (exit 20), repair writes it back."""
    src = make_tree(tmp_path / "src", {"big": os.urandom(3 << 20), "f": b"x"})
    repo("backup", src)
    original = (repo.repo / "config").read_bytes()
    path = _edit_config(repo, pack_size=2048, **{"chunker.max_size": 1 << 20})
    out = repo("--json", "backup", src)
    assert "pack_size 2048 (sealed: 16777216)" in out.err and "chunker.max_size" in out.err
    assert out.json["bytes_added"] < 10_000  # the sealed chunker: the big file's chunks are the same ones
    v = repo("verify", ok=20)
    assert "config" in v.err and "sealed" in v.err
    repo("repair", "--dry-run")
    assert path.read_bytes() != original
    r = repo("repair")
    assert "config" in r.err and "written back" in r.err
    assert path.read_bytes() == original
    clean = repo("verify", "--read-data")
    assert "warning" not in clean.err


def test_a_changed_repository_id_is_damage_not_a_wrong_password(repo):
    """The slot opens with the password but names another repository: the config's id changed (or the slot
    was copied in). That is damage, exit 20, not "wrong password" (exit 12), which sends the user hunting for
    another password."""
    _edit_config(repo, id="0" * 64)
    res = repo("snapshots", ok=20)
    assert "another repository" in res.err and "wrong password" not in res.err


def test_a_key_slot_without_a_sealed_config_still_opens(repo, tmp_path):
    """Slots written before the config was sealed in them hold no copy: they open as before, with no warning,
    and a slot added through them seals the config in use."""
    import base64
    import json as json_mod

    from vault import keys as keys_mod
    from vault.crypto import KdfParams, derive_key, wrap_key
    from vault.repository import Repository
    from vault.backend.local import LocalBackend

    r = Repository.open(LocalBackend(str(repo.repo)), PASSWORD.encode())
    salt = os.urandom(32)
    kdf = KdfParams.from_json(json_mod.loads(next((repo.repo / "keys").iterdir()).read_text())["kdf"])
    secret = json_mod.dumps({"repository": r.id, "enc_key": base64.b64encode(r.keys.enc_key).decode(),
                             "mac_key": base64.b64encode(r.keys.mac_key).decode(),
                             "chunker_seed": r.keys.chunker_seed}).encode()
    slot = json_mod.dumps({"v": 1, "kdf": kdf.to_json(), "salt": base64.b64encode(salt).decode(),
                           "wrapped": base64.b64encode(wrap_key(derive_key(b"old", salt, kdf), secret)).decode(),
                           "created": "2026-01-01T00:00:00Z", "host": "h", "username": "u"}, sort_keys=True)
    (repo.repo / "keys" / ("f" * 64)).write_text(slot)
    old_pw = tmp_path / "old"
    old_pw.write_text("old\n")
    _edit_config(repo, pack_size=4096)
    res = with_pw(repo, old_pw, "snapshots")
    assert "warning" not in res.err  # (nothing sealed in this slot to compare with)
    assert keys_mod.open_slot(slot.encode(), b"old", r.id)[1] is None
    new = tmp_path / "new"
    new.write_text(NEW + "\n")
    with_pw(repo, old_pw, "key", "add", "--new-password-file", new)
    _edit_config(repo, pack_size=8192)  # the new slot sealed the config in use when it was added
    assert "pack_size 8192 (sealed: 4096)" in with_pw(repo, new, "snapshots").err


def test_a_lost_config_is_taken_from_the_key_slot_and_written_back(repo, tmp_path):
    """A deleted ``config`` made a repository with all its keys, packs and snapshots "no repository (run 'vault
    init')", exit 10. The key slot's sealed copy now stands in: a warning, verify reports it (exit 20), repair
    writes it back. A wrong password still says so (exit 12), naming the loss too."""
    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    original = (repo.repo / "config").read_bytes()
    (repo.repo / "config").unlink()
    res = repo("--json", "snapshots")
    assert len(res.json) == 1 and "config object is missing" in res.err
    bad = tmp_path / "bad"
    bad.write_text("not it\n")
    assert "config object is missing" in with_pw(repo, bad, "snapshots", ok=12).err
    assert "config" in repo("verify", ok=20).err
    repo("repair")
    assert (repo.repo / "config").read_bytes() == original
    assert repo("verify").err == ""


def test_no_key_slots_is_not_a_wrong_password(repo):
    """An empty keys/ was "wrong password" (exit 12): the user checks the password file, not the store."""
    for k in (repo.repo / "keys").iterdir():
        k.unlink()
    res = repo("snapshots", ok=20)
    assert "no key slot" in res.err and "wrong password" not in res.err


def test_on_a_new_machine_costly_fake_slots_are_tried_last(repo, tmp_path, monkeypatch):
    """With no cache (a new machine: no remembered slot), slots were tried in name order: fake slots with
    costly KDF parameters named before the real one cost every command one derivation each. They are now
    tried cheapest first, so the real slot comes before any costlier fake."""
    import base64
    import json as json_mod

    from vault import repository as repository_mod

    for i in range(3):
        junk = {"v": 1, "kdf": {"name": "argon2id", "iterations": 3 + i, "memory_kib": 4096, "lanes": 1},
                "salt": base64.b64encode(b"s" * 32).decode(), "wrapped": base64.b64encode(b"w" * 80).decode()}
        (repo.repo / "keys" / (str(i) * 64)).write_text(json_mod.dumps(junk))
    tried = []
    real = repository_mod.open_slot
    monkeypatch.setattr(repository_mod, "open_slot", lambda data, *a: (tried.append(data), real(data, *a))[1])
    repo.cache = tmp_path / "new-machine-cache"
    repo("snapshots")
    assert len(tried) == 1


def test_a_lost_config_and_a_slot_copied_in_from_another_repository(repo, tmp_path):
    """With config lost, the first slot the password opened was used whatever repository it named: a slot
    copied in from another repository (same password) made every pack 'damaged' to repair, which then wrote
    the other repository's config back. Now the slot's keys must open what the store holds, and slots of two
    repositories are refused."""
    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    other = tmp_path / "other"
    repo("init", *FAST_INIT, "--repo", other)
    repo("--repo", other, "backup", src)
    (repo.repo / "config").unlink()
    (slot,) = (other / "keys").iterdir()
    mine = next((repo.repo / "keys").iterdir())
    (repo.repo / "keys" / ("0" * 64)).write_bytes(slot.read_bytes())
    res = repo("snapshots", ok=20)
    assert "2 different repositories" in res.err
    mine.unlink()
    res = repo("repair", ok=20)
    assert "copied in from another repository" in res.err
    assert not (repo.repo / "config").exists()


def test_a_damaged_config_is_taken_from_the_key_slot(repo, tmp_path):
    """Garbage in config (not only a changed value) is covered by the sealed copy too."""
    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    original = (repo.repo / "config").read_bytes()
    (repo.repo / "config").write_bytes(b"{garbage")
    res = repo("snapshots")
    assert "config object is damaged" in res.err and "1 snapshot(s)" in res.out
    repo("repair")
    assert (repo.repo / "config").read_bytes() == original


def test_kdf_parameters_of_infinity_are_a_damaged_slot(repo, tmp_path):
    """`"n": Infinity` in a slot (no password needed to write one) raised OverflowError: every command on a
    new machine, and `key list`, ended in "internal error"."""
    for i in range(2):
        (repo.repo / "keys" / (str(i) * 64)).write_text(
            '{"v": 1, "kdf": {"name": "scrypt", "n": Infinity, "r": 8, "p": 1}, "salt": "c2FsdHNhbHRzYWx0c2FsdA==",'
            ' "wrapped": "d3JhcHBlZA=="}')
    repo.cache = tmp_path / "new-machine"
    repo("snapshots")
    assert repo("--json", "key", "list").json


def test_a_slot_copied_in_with_config_id_changed_to_match_never_costs_data(repo, tmp_path):
    """Someone who can write to the store, without the password, copies in the key slot of another repository
    that has the same password and writes that repository's id into config: vault then opens this one with the
    other's keys. verify rightly finds nothing it can open (exit 20), but repair deleted every snapshot and
    index segment. Intact objects these keys do not open are not damage: repair refuses when nothing opens,
    leaves such objects alone otherwise, and once config's id is put back everything is there."""
    import json as json_mod

    src = make_tree(tmp_path / "src", {"f": os.urandom(1000)})
    repo("backup", src)
    other = tmp_path / "other"
    repo("init", *FAST_INIT, "--repo", other)
    (slot,) = (other / "keys").iterdir()
    (repo.repo / "keys" / slot.name).write_bytes(slot.read_bytes())
    path = repo.repo / "config"
    original = path.read_bytes()
    cfg = json_mod.loads(original)
    cfg["id"] = json_mod.loads((other / "config").read_text())["id"]
    path.write_text(json_mod.dumps(cfg))
    kept = {p.name for sub in ("snapshots", "index") for p in (repo.repo / sub).iterdir()}
    repo.cache = tmp_path / "cold"
    repo("verify", ok=20)
    before = {k: v for k, v in tree_listing(repo.repo).items() if k != "locks"}
    assert "another repository's" in repo("repair", ok=20).err
    assert {k: v for k, v in tree_listing(repo.repo).items() if k != "locks"} == before
    assert kept <= {p.name for sub in ("snapshots", "index") for p in (repo.repo / sub).iterdir()}
    path.write_bytes(original)  # (the owner puts config's id back)
    repo.cache = tmp_path / "cold2"
    assert len(repo("--json", "snapshots").json) == 1
    repo("verify", "--read-data")
    repo("restore", "latest", "--target", tmp_path / "r")


def test_infinity_in_config_is_damage_covered_by_the_sealed_copy(repo, tmp_path):
    """`"pack_size": Infinity` raised OverflowError in every command, repair included."""
    path = repo.repo / "config"
    original = path.read_bytes()
    path.write_text(original.decode().replace('"pack_size": 16777216', '"pack_size": Infinity'))
    assert "config object is damaged" in repo("snapshots").err
    repo("repair")
    assert path.read_bytes() == original


def test_many_lanes_do_not_make_a_costly_slot_look_cheap():
    """Cost was iterations x memory: t=100, 8 KiB, 64 lanes ranked far below the default slot but took 14x
    as long to derive; the lanes count now."""
    from vault.crypto import KdfParams
    from vault.repository import _kdf_cost

    assert _kdf_cost(KdfParams(iterations=100, memory_kib=8, lanes=64)) > _kdf_cost(KdfParams())
    assert _kdf_cost(KdfParams(name="scrypt", n=1 << 16, r=15, p=1)) > _kdf_cost(KdfParams(iterations=1,
                                                                                           memory_kib=1024, lanes=1))


def test_damaged_manifests_and_index_are_not_taken_for_a_foreign_key_slot(repo, tmp_path):
    """The proof that an unremembered slot's keys fit the store falls back to the pack headers: a new machine
    facing damaged manifests and index segments is told of damage, not of a key slot copied in."""
    src = make_tree(tmp_path / "src", {"f": os.urandom(5000)})
    repo("backup", src)
    for sub in ("snapshots", "index"):
        for f in (repo.repo / sub).iterdir():
            f.write_bytes(b"garbage" + f.read_bytes()[7:])
    repo.cache = tmp_path / "new-machine"
    res = repo("verify", ok=20)
    assert "copied in" not in res.err
    assert "copied in" not in repo("repair", ok=False).err


def test_repair_leaves_intact_objects_written_with_other_keys(repo, tmp_path):
    """A snapshot manifest whose bytes match its name but that the keys in use do not open is not bit rot:
    repair deleted it as an unreadable manifest; it now leaves it, and says so."""
    src = make_tree(tmp_path / "src", {"f": b"data"})
    repo("backup", src)
    other = tmp_path / "other"
    repo("init", *FAST_INIT, "--repo", other)
    repo("--repo", other, "backup", src)
    (planted,) = (other / "snapshots").iterdir()
    (repo.repo / "snapshots" / planted.name).write_bytes(planted.read_bytes())
    res = repo("repair", ok=False)
    assert "left alone" in res.err and planted.name in res.err
    assert (repo.repo / "snapshots" / planted.name).exists()
    repo("restore", "latest", "--target", tmp_path / "r", ok=20)  # (latest names the manifest it cannot read)
    assert (tmp_path / "r" / src.relative_to("/") / "f").read_bytes() == b"data"


def test_a_slot_of_a_newer_kdf_is_skipped_not_damage_and_never_removed(repo):
    """format.md §15: a new KDF name in new key slots needs no new format version, old readers skip those
    slots. verify called such a slot damage (exit 20, "opens the repository with no password") and repair
    deleted it: a newer vault's password lost its way in."""
    import hashlib
    import json as json_mod

    [slot] = list((repo.repo / "keys").iterdir())
    doc = json_mod.loads(slot.read_bytes())
    doc["kdf"] = {"name": "argon2id-v2", "iterations": 4, "lanes": 4, "memory_kib": 32768}
    data = json_mod.dumps(doc, sort_keys=True).encode()
    newer = repo.repo / "keys" / hashlib.sha256(data).hexdigest()
    newer.write_bytes(data)
    repo("snapshots")
    res = repo("--json", "verify")
    assert res.json["ok"] and any("unknown to this vault" in i for i in res.json["info"]), res.json
    listed = {k["id"]: k for k in repo("--json", "key", "list").json}
    assert not listed[newer.name]["damaged"] and "unknown" in listed[newer.name]["unsupported"]
    repo("repair")
    assert newer.exists()


@pytest.mark.parametrize("junk", ["junk name.txt", "SLOT.bak", "{slot}.bak", "{slot}.old"])
def test_files_in_keys_that_are_not_slot_names_are_ignored_never_removed(repo, junk):
    """format.md §1: names under a prefix whose last component is not 64 hex digits are ignored. A note or a
    '<slot>.bak' copy in keys/ made verify, repair and key list fail ("internal error") or called it damage
    and repair deleted it."""
    [slot] = list((repo.repo / "keys").iterdir())
    extra = repo.repo / "keys" / junk.format(slot=slot.name)
    extra.write_bytes(slot.read_bytes() if "{slot}" in junk else b"my note\n")
    res = repo("--json", "verify")
    assert res.code == 0 and res.json["ok"], res.out + res.err
    assert [k["id"] for k in repo("--json", "key", "list").json] == [slot.name]
    res = repo("repair")
    assert res.code == 0 and "internal error" not in res.err and extra.exists(), res.err


def _flip_in(path, field: bytes) -> None:
    """Flip one bit inside the value of JSON ``field`` of a key slot (it still parses)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"' + field + b'": "') + len(field) + 5  # (the value's first character)
    # (to another character of the base64 alphabet: '+' ^ 2 is ')', which no longer parses -- 1 run in 30)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data[at] ^= next(b for b in (1, 2, 4, 8, 16, 32) if data[at] ^ b in alphabet)
    path.write_bytes(bytes(data))


def test_a_bit_flipped_in_a_key_slot_is_named_not_taken_for_a_wrong_password(repo, pwfiles):
    """A slot is named by the SHA-256 of its bytes; one flipped bit in its wrapped key still parsed: `key list`
    showed it healthy, verify said "no errors found", and its own password got "wrong password" (exit 12)."""
    old, new = pwfiles
    added = repo("--json", "key", "add", "--new-password-file", new).json["id"]
    slot = next(p for p in (repo.repo / "keys").iterdir() if p.name.startswith(added[:8]))
    _flip_in(slot, b"wrapped")
    res = with_pw(repo, new, "snapshots", ok=12)
    assert "1 key slot(s) are damaged" in res.err
    listed = keys(repo)
    assert [k["damaged"] for k in listed if k["id"] == slot.name] == [True]
    res = repo("verify", ok=20)
    assert slot.name[:16] in res.out + res.err and "key slot damaged" in res.out + res.err
    repo("repair", "index", ok=20)  # (it parses: repair never removes it, see the test below; the user does)
    assert slot.exists()
    repo("key", "remove", slot.name[:12])
    repo("verify")


def test_repair_keeps_a_slot_that_still_opens_though_its_clear_fields_changed(repo, pwfiles):
    """An escrow slot whose host field changed (bit rot, an edit) still opens with the escrow password; this
    session's first version of the name check had repair delete it, and the escrow password opened nothing."""
    old, new = pwfiles
    added = repo("--json", "key", "add", "--new-password-file", new).json["id"]
    slot = next(p for p in (repo.repo / "keys").iterdir() if p.name.startswith(added[:8]))
    _flip_in(slot, b"host")
    repo("repair", "index", ok=20)
    assert slot.exists()
    with_pw(repo, new, "snapshots")


def test_a_bit_flipped_in_the_unsealed_part_of_the_slot_in_use_is_named(repo):
    """The slot's host field changed: it still opens (the key is intact), but its bytes are not what was
    written: verify names it with the way out (add a key, remove this one), and repair leaves it."""
    slot = next((repo.repo / "keys").iterdir())
    _flip_in(slot, b"host")
    repo("snapshots")
    res = repo("verify", ok=20)
    assert "though this password opens it" in res.out + res.err
    repo("repair", "index", ok=20)  # (it cannot write the slot again without the password: it says so)
    assert slot.exists()
    new = slot.parent.parent.parent / "pw2"
    new.write_text("another\n")
    repo("key", "add", "--new-password-file", new)
    repo("key", "remove", slot.name[:12], "--password-file", new)
    repo("verify", "--password-file", new)


def _slot_kdfs(cli) -> list[dict]:
    import json
    return sorted((json.loads(p.read_bytes())["kdf"] for p in (cli.repo / "keys").iterdir()),
                  key=lambda d: sorted(d.items()))


def test_a_new_slot_keeps_the_kdf_of_the_slot_in_use(cli, pwfiles, tmp_path):
    """`key passwd` and `key add` wrote every new slot with the default KDF (Argon2id t=4, 32 MiB): a repository
    made with `--kdf-memory 256 --kdf-iterations 10` (or scrypt) ended up behind a slot ~20x cheaper per guess.
    A new slot now takes the parameters of the slot in use, unless given."""
    old, new = pwfiles
    cli("init", "--kdf-memory", "2", "--kdf-iterations", "3")
    cli("key", "passwd", "--new-password-file", new)
    assert _slot_kdfs(cli) == [{"name": "argon2id", "iterations": 3, "memory_kib": 2048, "lanes": 4}]
    with_pw(cli, new, "key", "add", "--new-password-file", old, "--kdf-iterations", "2")
    assert _slot_kdfs(cli) == [{"name": "argon2id", "iterations": 2, "memory_kib": 2048, "lanes": 4},
                               {"name": "argon2id", "iterations": 3, "memory_kib": 2048, "lanes": 4}]
    res = with_pw(cli, new, "key", "add", "--new-password-file", old, "--kdf", "scrypt", "--kdf-memory", "4", ok=2)
    assert "argon2id only" in res.err and len(_slot_kdfs(cli)) == 2


def test_a_scrypt_repositorys_new_slot_is_scrypt(cli, pwfiles):
    old, new = pwfiles
    cli("init", "--kdf", "scrypt")
    cli("key", "passwd", "--new-password-file", new)
    assert [k["name"] for k in _slot_kdfs(cli)] == ["scrypt"]
    res = with_pw(cli, new, "key", "add", "--new-password-file", old, "--kdf-iterations", "2", ok=2)
    assert "argon2id only" in res.err
