"""Snapshots and index segments are named by the SHA-256 of their stored bytes; every read checks the name
(repository._load_verified). AEAD alone does not: a manifest copied under another name still decrypts. Such an
object is damage, never a second snapshot (which 'forget' would count, 'copy' would copy, and which would shift
--keep-last)."""

from __future__ import annotations

import hashlib
import shutil

from conftest import make_tree


def test_a_manifest_stored_under_a_name_that_is_not_its_hash_is_damage_not_a_second_snapshot(repo, tmp_path):
    src = make_tree(tmp_path / "src", {"f": b"data"})
    sid = repo("--json", "backup", src).json["snapshot_id"]
    fake = hashlib.sha256(b"not these bytes").hexdigest()
    shutil.copy(repo.repo / "snapshots" / sid, repo.repo / "snapshots" / fake)
    res = repo("--json", "verify", ok=20)
    assert fake[:8] in res.out, res.out
    res = repo("--json", "snapshots", ok=False)
    ids = {s["id"] for s in res.json} if res.code == 0 else set()
    assert fake not in ids, "a manifest under a name that is not its hash was listed as a snapshot"
