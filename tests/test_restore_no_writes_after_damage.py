"""Once a file's block fails its check, restore writes none of that file's later blocks (restorer._write: the
write branch runs only while ``task.problem is None``). So a write that would fail afterwards (a disk that fills
up) cannot replace the damage by a local error: the file is reported DAMAGED and restore exits 20 (shared
contract: "damage -> the file is named ... exit 20"), not exit 1 ("cannot write it"), which would send the user
to free disk space and retry instead of running verify/repair."""

from __future__ import annotations

import errno
import os
import random

import pytest
from conftest import FAST_INIT, make_tree, with_jobs
from test_damage import layout, pack_path

import vault.restorer as restorer_mod

MiB = 1024 * 1024


@pytest.mark.parametrize("damaged_at", ["first", "last"])
def test_a_write_failing_after_damage_in_the_same_file_does_not_hide_the_damage(cli, tmp_path, monkeypatch,
                                                                                 damaged_at):
    cli("init", *FAST_INIT, "--pack-size", "1")
    src = make_tree(tmp_path / "src", {"big.bin": random.Random(9).randbytes(3 * MiB)})
    cli("backup", src, "--jobs", "1")
    lay = layout(cli.repo)
    (path,) = [f for f in lay.files if f.endswith("big.bin")]
    packs = []
    for bid in lay.files[path]:
        if lay.blocks[bid][0] not in packs:
            packs.append(lay.blocks[bid][0])
    assert len(packs) >= 2, "the file must span two packs"
    damaged = packs[0] if damaged_at == "first" else packs[-1]
    entry = next(lay.blocks[b][1] for b in lay.files[path] if lay.blocks[b][0] == damaged)
    p = pack_path(cli.repo, damaged)
    data = bytearray(p.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x10
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(restorer_mod, "_pwrite_all", full_disk)
    for jobs in ("1", "2"):
        res = with_jobs(cli, jobs, "restore", "latest", "--target", tmp_path / f"t{jobs}", ok=False)
        assert res.code == 20, (jobs, res.code, res.err)
        assert "damaged" in res.err and "big.bin" in res.err, res.err
        assert not (tmp_path / f"t{jobs}" / src.relative_to("/") / "big.bin").exists()
