"""Once a file's block fails its check, restore writes none of that file's later blocks (restorer._write: the
write branch runs only while ``task.problem is None``). So a write that would fail afterwards (a disk that fills
up) cannot replace the damage by a local error: the file is reported DAMAGED and restore exits 20 (shared
contract: "damage -> the file is named ... exit 20"), not exit 1 ("cannot write it"), which would send the user
to free disk space and retry instead of running verify/repair."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import with_jobs
from test_damage import big_file_over_packs, flip_in_file

import vault.restorer as restorer_mod


@pytest.mark.parametrize("damaged_at", ["first", "last"])
def test_a_write_failing_after_damage_in_the_same_file_does_not_hide_the_damage(cli, tmp_path, monkeypatch,
                                                                                 damaged_at):
    src, lay, path, packs = big_file_over_packs(cli, tmp_path)
    flip_in_file(cli, lay, path, packs[0] if damaged_at == "first" else packs[-1])

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(restorer_mod, "_pwrite_all", full_disk)
    for jobs in ("1", "2"):
        res = with_jobs(cli, jobs, "restore", "latest", "--target", tmp_path / f"t{jobs}", ok=False)
        assert res.code == 20, (jobs, res.code, res.err)
        assert "damaged" in res.err and "big.bin" in res.err, res.err
        assert not (tmp_path / f"t{jobs}" / src.relative_to("/") / "big.bin").exists()
