"""An index segment lost (deleted by hand, damaged, a sync tool) while the packs it listed are still in the
store: the snapshots' trees are still indexed (a later segment), but some of their data blocks are not.
prune must refuse -- those packs are not leftovers of a killed backup but the only copy of referenced data,
which 'vault repair index' re-indexes from their headers. Deleting them loses every file they hold."""

from __future__ import annotations

import random

from conftest import assert_trees_equal, make_tree


def test_prune_refuses_when_referenced_data_blocks_lost_their_index_segment(repo, tmp_path):
    rnd = random.Random(3)
    src = make_tree(tmp_path / "src", {"a.bin": rnd.randbytes(400_000)})
    first = repo("--json", "backup", src).json["snapshot_id"]
    seg_first = {p.name for p in (repo.repo / "index").iterdir()}
    make_tree(src, {"b.txt": b"new file, new root tree\n"})
    repo("backup", src)
    repo("forget", first)
    for name in seg_first:  # the segment listing a.bin's pack, lost; the pack itself is intact
        (repo.repo / "index" / name).unlink()
    packs_before = {p.name for p in (repo.repo / "data").rglob("*") if p.is_file()}
    res = repo("prune", ok=False)
    packs_after = {p.name for p in (repo.repo / "data").rglob("*") if p.is_file()}
    assert packs_after == packs_before, f"prune deleted {sorted(packs_before - packs_after)}: {res.err}"
    assert res.code == 1 and "prune refused" in res.err and "not in the index" in res.err, (res.code, res.err)
    repo("repair", "index")
    repo("restore", "latest", "--target", tmp_path / "t")
    assert_trees_equal(src, tmp_path / "t" / src.relative_to("/"))
