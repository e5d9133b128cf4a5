"""A manifest whose "parent" is not a snapshot id (a list, an object, a number, a short string -- written with the
repository key by a hostile or buggy host sharing the repository) is a malformed manifest: named, skipped, never a
traceback, and the other snapshots still list and restore (model.Snapshot.decode's parent check)."""

from __future__ import annotations

import json

import pytest
from conftest import make_tree
from test_hostile import Crafter, write_named


@pytest.mark.parametrize("parent", [{"a": 1}, [1, 2], "abc"])
def test_a_manifest_with_a_malformed_parent_is_named_and_skipped(repo, tmp_path, parent):
    from vault.repository import SNAPSHOT_AAD

    src = make_tree(tmp_path / "src", {"a": b"hello"})
    good = repo("--json", "backup", src).json["snapshot_id"]
    c = Crafter(repo.repo)
    doc = {"v": 1, "time": "2024-01-01T00:00:00.000000Z", "host": "h", "paths": ["/p"], "tags": [],
           "tree": "00" * 32, "parent": parent}
    bad = write_named(repo.repo, "snapshots", c.r.cipher.seal(json.dumps(doc).encode(), SNAPSHOT_AAD))
    fresh = ["--cache-dir", tmp_path / "fresh"]
    res = repo(*fresh, "--json", "snapshots")
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert [s["id"] for s in res.json] == [good]
    assert bad[:8] in res.err
    v = repo(*fresh, "--json", "verify", ok=20)
    assert any(bad[:8] in d["object"] for d in v.json["damage"]), v.json["damage"]
