"""verify-after-write: a pack the store kept shorter than what was sent (a store or mount that drops the tail of
an upload and still reports success) must fail the backup -- never be named by an index segment and a
snapshot, which would then restore as damage with no other copy of the data."""

from __future__ import annotations

import os
import random

from conftest import make_tree

from vault.backend import local as local_mod


def test_a_pack_stored_short_fails_the_backup_and_no_snapshot_names_it(repo, tmp_path, monkeypatch):
    real_publish = local_mod.Staged.publish

    def publish(self, name, *a, **kw):
        real_publish(self, name, *a, **kw)
        if name.startswith("data/"):
            path = self.backend._path(name)
            os.chmod(path, 0o644)
            os.truncate(path, os.path.getsize(path) - 7)  # the store kept less than was sent

    monkeypatch.setattr(local_mod.Staged, "publish", publish)
    src = make_tree(tmp_path / "src", {"a.bin": random.Random(1).randbytes(200_000)})
    res = repo("backup", src, ok=1)  # (an I/O failure, as any: 20 is damage found by verify or restore)
    assert "stored with the wrong size" in res.err and "run again" in res.err, res.err
    snaps = repo.repo / "snapshots"
    assert not snaps.exists() or not any(snaps.iterdir()), "a snapshot names a pack stored short"
