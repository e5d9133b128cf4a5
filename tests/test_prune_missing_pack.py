"""A pack the index names, that holds blocks a snapshot references, and that is gone from the store: prune
refuses and deletes nothing (pruner.Pruner._plan), so that the damage stays exactly as verify and repair expect to
find it. Carrying on would call the pack "indexed but missing (it holds nothing referenced)" -- false -- exit 0,
and go on deleting."""

from __future__ import annotations

import os
import random

from conftest import FAST_INIT, make_tree
from test_damage import layout, pack_path

MiB = 1 << 20


def stored_packs(repo_dir) -> set[str]:
    return {str(p.relative_to(repo_dir)) for p in (repo_dir / "data").rglob("*") if p.is_file()}


def test_prune_refuses_when_a_referenced_pack_is_gone_and_deletes_nothing(cli, tmp_path):
    cli("init", *FAST_INIT, "--pack-size", "1")
    rng = random.Random(3)
    old = cli("--json", "backup", make_tree(tmp_path / "s0", {"old.bin": rng.randbytes(2 * MiB)}), "--jobs", "1",
              "--time", "2026-01-01T10:00:00Z").json["snapshot_id"]
    cli("backup", make_tree(tmp_path / "s1", {"keep.bin": rng.randbytes(2 * MiB)}), "--jobs", "1",
        "--time", "2026-01-02T10:00:00Z")
    cli("forget", old)  # its packs are now unreferenced: prune has something to delete
    lay = layout(cli.repo)
    (path,) = [f for f in lay.files if f.endswith("keep.bin")]
    gone = pack_path(cli.repo, lay.blocks[lay.files[path][0]][0])
    os.unlink(gone)
    before = stored_packs(cli.repo)
    res = cli("prune", ok=False)
    assert res.code != 0, res.err
    assert "missing" in res.err and "Traceback" not in res.err, res.err
    assert stored_packs(cli.repo) == before, "prune deleted packs although it met a referenced pack that is gone"
