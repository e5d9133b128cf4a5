"""Every block read is checked against its id (HMAC of its plaintext), not only authenticated: AES-GCM with the
id as associated data proves that *a holder of the key* sealed these bytes for this id, not that they are
the bytes the id names. A host sharing the repository (test_hostile's threat model) can seal junk under the id
of data another host will back up later (dedup poisoning: that host then stores nothing and its restores get
the junk). restore, verify --read-data and every tree read must refuse such a block as damage (exit 20)."""

from __future__ import annotations


from test_hostile import Crafter, dnode, fnode

from vault.pack import DATA, TREE


def _impostor(c: Crafter, kind: str, claimed: bytes, actual: bytes) -> str:
    """Seal ``actual`` under the id of ``claimed`` (only a key holder can)."""
    bid = c.r.block_id(claimed)
    c.pending[kind].append((bid, c.r.seal_block(bid, actual), len(actual)))
    return bid.hex()


def test_a_data_block_whose_content_is_not_its_id_is_damage_for_restore_and_verify(repo, tmp_path):
    c = Crafter(repo.repo)
    good = c.data(b"fine\n")
    bad = _impostor(c, DATA, b"the real data\n", b"junk!junk!jun\n")  # (same length: no size mismatch)
    sid = c.snapshot(c.tree([fnode("ok", good, 5), fnode("poisoned", bad, 14)]))
    target = tmp_path / "restored"
    res = repo("restore", sid, "--target", target, ok=20)
    assert "poisoned" in res.err, res.err
    assert (target / "ok").read_bytes() == b"fine\n"
    assert not (target / "poisoned").exists(), "a block not matching its id was restored"
    res = repo("--json", "verify", "--read-data", ok=20)
    assert any("poisoned" in str(d) or bad[:16] in str(d) for d in res.json["damage"]), res.json["damage"]


def test_a_tree_whose_content_is_not_its_id_is_not_listed(repo, tmp_path):
    c = Crafter(repo.repo)
    blk = c.data(b"x")
    real = b'{"nodes":[],"v":1}'
    fake = ('{"v":1,"nodes":[' + f'{{"name":"impostor","type":"file","mode":420,"size":1,"blocks":["{blk}"]}}' + "]}").encode()
    sub = _impostor(c, TREE, real, fake)
    sid = c.snapshot(c.tree([dnode("d", sub)]))
    res = repo("ls", sid, "/d", ok=False)
    assert res.code != 0 and "impostor" not in res.out, (res.code, res.out, res.err)
